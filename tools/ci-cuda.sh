#!/usr/bin/env bash
# CI's CUDA step, for machines without a GPU (add `bash tools/ci-cuda.sh` to .ci/run
# after the tests):
#   1. every kernels/*.cu compiles with NVRTC for sm_80 and sm_90 and assembles with
#      ptxas without register spills (tools/check-kernels.sh);
#   2. the library with `--features cuda` is clippy-clean (all its targets; tools/ and
#      cluster/ have no CUDA code of their own, and their clippy ran without the feature);
#   3. the kernel runs on the CPU under emulation (tools/emulate-kernel.sh) against a
#      double-precision reference: its logic, without a GPU;
#   4. the CUDA-only tests build and run: the run-time NVRTC compile of every dtype
#      variant (with PyPI's libnvrtc), the launcher's unit tests, and the GPU parity
#      tests, which report "SKIPPED: no CUDA driver/GPU" here.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash tools/check-kernels.sh
echo "ci-cuda: kernels checked after $(( $(date +%s) - start ))s"
bash tools/emulate-kernel.sh
echo "ci-cuda: kernel emulation passed after $(( $(date +%s) - start ))s"
cargo clippy --release -p mome --all-targets --features cuda -- -D warnings
echo "ci-cuda: clippy --features cuda clean after $(( $(date +%s) - start ))s"
PKGS=$(bash tools/cuda-wheels.sh)
# `--workspace --features mome/cuda`, not `-p mome --features cuda`: with `-p` cargo
# resolves features for mome alone, which differ from the workspace's (serde_core,
# typenum, smallvec, rand, syn), and 51 dependencies, candle and rocksdb among them,
# were built a second time: 240 s of a cold CI run; this way 66 s on a target where
# the workspace was already built. It also builds and runs mome-cluster's unit tests
# with the feature on.
LD_LIBRARY_PATH="$PKGS/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    cargo test --release --workspace --features mome/cuda --lib --test cuda_parity -- --nocapture
echo "ci-cuda: all green after $(( $(date +%s) - start ))s"
