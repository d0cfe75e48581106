#!/usr/bin/env bash
# The GPU check: runs the binaries tools/gpu-prepare.sh built (carried in gpu-carry/)
# on a machine with an NVIDIA GPU and driver but no Rust toolchain. Writes logs to
# $OUT (default ./gpu-out):
#   summary.txt           one line per step, PASS/FAIL and seconds
#   nvidia-smi.txt        GPU, driver (if nvidia-smi exists)
#   probe.log             device found by the CUDA path (fails fast without a GPU)
#   cuda_parity.log       CUDA vs candle reference / CPU kernel, ties, NaN/+inf scores,
#                         expert cache, whole forward of a tiny model with experts (GPU
#                         operator vs CPU kernel: greedy tokens and logits)
#   fused_op_parity.log   the CPU parity suite, its default calls dispatched to the GPU
#   bench.md              benchmarks/cuda_fused table: GPU time vs the floor (empty launch +
#                         one read of the gathered bytes), % of peak and of D2D copy
# Exit status: 0 all passed; 3 no GPU/driver (nothing else run); 1 a step failed;
# 2 gpu-carry/ missing. Expected wall time on an H100/H200: 1–3 minutes; the step
# timeouts add up to 450 s, inside the 8 minutes the issue allows.
#
# Usage: bash tools/gpu-check.sh [CARRY_DIR]   (default gpu-carry)
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=${1:-gpu-carry}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
start=$(date +%s)
: >"$OUT/summary.txt"
say() { echo "gpu-check: $*" | tee -a "$OUT/summary.txt"; }

if [ ! -d "$CARRY/bin" ]; then
    say "FAIL: $CARRY/bin missing: run tools/gpu-prepare.sh here first and carry $CARRY"
    exit 2
fi
cat "$CARRY/MANIFEST.txt" >"$OUT/manifest.txt" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mome-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/bin" "$WORK/lib"
for f in "$CARRY"/bin/*.gz; do
    gzip -dc "$f" >"$WORK/bin/$(basename "$f" .gz)"
    chmod +x "$WORK/bin/$(basename "$f" .gz)"
done
for f in "$CARRY"/lib/*.gz; do
    [ -e "$f" ] && gzip -dc "$f" >"$WORK/lib/$(basename "$f" .gz)"
done
if [ -e "$WORK/lib/libnvrtc.so.12" ]; then
    # cudarc tries `libnvrtc.so` first: make that name ours too, so a CUDA image's own
    # (unversioned) libnvrtc.so cannot win the search.
    ln -sf libnvrtc.so.12 "$WORK/lib/libnvrtc.so"
else
    # No NVRTC carried: use the machine's (a CUDA 13 image has libnvrtc.so.13, which
    # cudarc's 12.x loader does not look for) under the name it does look for.
    sys_nvrtc=$( (ldconfig -p 2>/dev/null | grep -o '/[^ ]*libnvrtc\.so\.1[0-9]*$'; \
        ls /usr/local/cuda*/lib64/libnvrtc.so.1[0-9]* 2>/dev/null) | head -1)
    if [ -n "$sys_nvrtc" ]; then
        ln -s "$sys_nvrtc" "$WORK/lib/libnvrtc.so"
        say "using the machine's NVRTC: $sys_nvrtc"
    fi
fi
export LD_LIBRARY_PATH="$WORK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_CACHE_PATH="$WORK/jit-cache"   # one JIT cache shared by the three binaries
export RUST_BACKTRACE=1
export MOME_REQUIRE_GPU=1

if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv \
        >"$OUT/nvidia-smi.txt" 2>&1 || true
    say "nvidia-smi: $(tail -n +2 "$OUT/nvidia-smi.txt" | head -1)"
else
    say "nvidia-smi not found"
fi

fail=0
step() { # step NAME TIMEOUT_S LOG COMMAND…
    local name=$1 limit=$2 log=$3
    shift 3
    local t0 rc
    t0=$(date +%s)
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        say "PASS $name ($(( $(date +%s) - t0 ))s)"
    else
        [ $rc -eq 124 ] && echo "gpu-check: timed out after ${limit}s" >>"$log"
        say "FAIL $name (exit $rc after $(( $(date +%s) - t0 ))s): see $(basename "$log")"
        tail -n 25 "$log" | sed 's/^/    /'
    fi
    return $rc
}

# 1. Probe alone: without a GPU this fails in well under a second, and nothing else runs.
if ! step probe 60 "$OUT/probe.log" "$WORK/bin/cuda_parity" --exact probe_device --nocapture; then
    reason=$(grep -o 'the CUDA path is unavailable: .*' "$OUT/probe.log" | head -1)
    say "FAIL: no GPU — ${reason:-see probe.log}"
    exit 3
fi
grep -E '^(device|libraries|limits|peak)' "$OUT/probe.log" | tee -a "$OUT/summary.txt"

# 2. Parity of the CUDA path (one test at a time: they share one stream).
step cuda_parity 150 "$OUT/cuda_parity.log" "$WORK/bin/cuda_parity" --test-threads=1 --nocapture || fail=1
grep -E "^whole forward" "$OUT/cuda_parity.log" | tee -a "$OUT/summary.txt"
# 3. The CPU suite with its default-option calls dispatched to the GPU (proptest too).
step fused_op_parity 90 "$OUT/fused_op_parity.log" "$WORK/bin/fused_op_parity" || fail=1
# 4. Benchmark (not a test): the Markdown table for docs/BENCHMARKS.md.
step bench 150 "$OUT/bench.md" "$WORK/bin/cuda_fused" --bench || fail=1

say "done in $(( $(date +%s) - start ))s: $([ $fail -eq 0 ] && echo 'all passed' || echo 'FAILURES')"
exit $fail
