#!/usr/bin/env bash
# Offline check of every CUDA kernel, no GPU and no nvcc needed:
#   1. installs NVRTC, ptxas and the CUDA headers' wheels from PyPI (pinned, cached under
#      $MOME_CUDA_CACHE, default ~/.cache/mome/cuda; see tools/cuda-wheels.sh);
#   2. compiles each kernels/*.cu to PTX with NVRTC, with the options the run-time
#      compile uses, for compute_80 and compute_90;
#   3. assembles the PTX with `ptxas -v` for sm_80 and sm_90, prints registers, stack,
#      spills and static shared memory per kernel, and fails on any compile error or
#      any spill.
# Output (PTX, cubins, ptxas logs) goes to $CARGO_TARGET_DIR/cuda-check/ (default
# target/). The architectures are checked in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
PKGS=$(bash tools/cuda-wheels.sh)
# Keep in step with NVRTC_OPTIONS in src/kernels/cuda/runtime.rs (a unit test checks).
NVRTC_OPTIONS="--std=c++17"
ARCHS="80 90"

PTXAS="$PKGS/nvidia/cuda_nvcc/bin/ptxas"
NVRTC="$PKGS/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
# libnvrtc loads its builtins library from its own folder.
export LD_LIBRARY_PATH="$PKGS/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

OUTDIR=${CARGO_TARGET_DIR:-target}/cuda-check
mkdir -p "$OUTDIR"
shopt -s nullglob
kernels=(kernels/*.cu)
if [ ${#kernels[@]} -eq 0 ]; then
    echo "check-kernels: no kernels/*.cu found" >&2
    exit 1
fi

# check_one KERNEL.cu ARCH: compiles, assembles, reports; non-zero on any failure.
check_one() {
    local cu=$1 arch=$2 name ptx log
    name=$(basename "$cu" .cu)
    ptx="$OUTDIR/$name.sm_$arch.ptx"
    log="$OUTDIR/$name.sm_$arch.ptxas.txt"
    if ! python3 tools/nvrtc_compile.py "$NVRTC" "$cu" "$ptx" "compute_$arch" $NVRTC_OPTIONS; then
        echo "check-kernels: FAIL: NVRTC could not compile $cu for compute_$arch"
        return 1
    fi
    if ! "$PTXAS" -arch="sm_$arch" -v -o "$OUTDIR/$name.sm_$arch.cubin" "$ptx" >"$log" 2>&1; then
        cat "$log"
        echo "check-kernels: FAIL: ptxas could not assemble $cu for sm_$arch"
        return 1
    fi
    python3 tools/ptxas_report.py "$log" "$cu" "sm_$arch"
}

pids=()
reports=()
for cu in "${kernels[@]}"; do
    for arch in $ARCHS; do
        report="$OUTDIR/$(basename "$cu" .cu).sm_$arch.report.txt"
        check_one "$cu" "$arch" >"$report" 2>&1 &
        pids+=("$!")
        reports+=("$report")
    done
done
fail=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        fail=1
    fi
    cat "${reports[$i]}"
done
if [ $fail -ne 0 ]; then
    echo "check-kernels: FAILED after $(( $(date +%s) - start ))s" >&2
    exit 1
fi
echo "check-kernels: ${#kernels[@]} kernel file(s) compiled for sm_80 and sm_90 without spills in $(( $(date +%s) - start ))s"
