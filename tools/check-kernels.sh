#!/usr/bin/env bash
# Offline check of every CUDA kernel, no GPU and no nvcc needed:
#   1. installs NVRTC, ptxas and the CUDA headers' wheels from PyPI (pinned, cached under
#      $MOME_CUDA_CACHE, default ~/.cache/mome/cuda);
#   2. compiles each kernels/*.cu to PTX with NVRTC, with the options the run-time
#      compile uses, for compute_80 and compute_90;
#   3. assembles the PTX with `ptxas -v` for sm_80 and sm_90, prints registers, shared
#      memory and spills per kernel, and fails on any compile error or any spill.
# Output (PTX, ptxas logs) goes to target/cuda-check/.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
CACHE=${MOME_CUDA_CACHE:-$HOME/.cache/mome/cuda}
PKGS="$CACHE/pkgs-12.8"
# Keep in step with NVRTC_OPTIONS in src/kernels/cuda/runtime.rs (a unit test checks).
NVRTC_OPTIONS="--std=c++17"
ARCHS="80 90"

if [ ! -x "$PKGS/nvidia/cuda_nvcc/bin/ptxas" ] || [ ! -f "$PKGS/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
    echo "check-kernels: installing the CUDA 12.8 compiler wheels into $PKGS"
    mkdir -p "$CACHE"
    rm -rf "$PKGS.tmp"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$PKGS.tmp" \
        nvidia-cuda-nvcc-cu12==12.8.93 nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-nvrtc-cu12==12.8.93
    rm -rf "$PKGS"
    mv "$PKGS.tmp" "$PKGS"
fi
PTXAS="$PKGS/nvidia/cuda_nvcc/bin/ptxas"
NVRTC="$PKGS/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
# libnvrtc loads its builtins library from its own folder.
export LD_LIBRARY_PATH="$PKGS/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

OUTDIR=target/cuda-check
mkdir -p "$OUTDIR"
fail=0
shopt -s nullglob
kernels=(kernels/*.cu)
if [ ${#kernels[@]} -eq 0 ]; then
    echo "check-kernels: no kernels/*.cu found" >&2
    exit 1
fi
for cu in "${kernels[@]}"; do
    name=$(basename "$cu" .cu)
    for arch in $ARCHS; do
        ptx="$OUTDIR/$name.sm_$arch.ptx"
        log="$OUTDIR/$name.sm_$arch.ptxas.txt"
        if ! python3 tools/nvrtc_compile.py "$NVRTC" "$cu" "$ptx" "compute_$arch" $NVRTC_OPTIONS; then
            echo "check-kernels: FAIL: NVRTC could not compile $cu for compute_$arch" >&2
            fail=1
            continue
        fi
        if ! "$PTXAS" -arch="sm_$arch" -v -o "$OUTDIR/$name.sm_$arch.cubin" "$ptx" >"$log" 2>&1; then
            cat "$log" >&2
            echo "check-kernels: FAIL: ptxas could not assemble $cu for sm_$arch" >&2
            fail=1
            continue
        fi
        # One line per kernel: name, registers, stack, spills, shared memory.
        python3 - "$log" "$cu" "$arch" <<'EOF' || fail=1
import re, sys
log, cu, arch = sys.argv[1:4]
text = open(log).read()
bad = False
for block in re.split(r"ptxas info\s*: Compiling entry function ", text)[1:]:
    name = re.match(r"'([^']+)'", block).group(1)
    regs = re.search(r"Used (\d+) registers", block)
    stack = re.search(r"(\d+) bytes stack frame", block)
    st = re.search(r"(\d+) bytes spill stores", block)
    ld = re.search(r"(\d+) bytes spill loads", block)
    smem = re.search(r"(\d+) bytes smem", block)
    spills = int(st.group(1) if st else 0) + int(ld.group(1) if ld else 0)
    print(f"  sm_{arch} {name}: {regs.group(1) if regs else '?'} registers, "
          f"{stack.group(1) if stack else 0} B stack, "
          f"{st.group(1) if st else 0}/{ld.group(1) if ld else 0} B spill stores/loads, "
          f"{smem.group(1) if smem else 0} B static smem")
    if spills > 0:
        print(f"check-kernels: FAIL: {name} spills registers on sm_{arch} ({cu})", file=sys.stderr)
        bad = True
if "Compiling entry function" not in text:
    print(f"check-kernels: FAIL: no kernel found in ptxas output for {cu}", file=sys.stderr)
    bad = True
sys.exit(1 if bad else 0)
EOF
    done
done
if [ $fail -ne 0 ]; then
    echo "check-kernels: FAILED after $(( $(date +%s) - start ))s" >&2
    exit 1
fi
echo "check-kernels: ${#kernels[@]} kernel file(s) compiled for sm_80 and sm_90 without spills in $(( $(date +%s) - start ))s"
