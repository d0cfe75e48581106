#!/usr/bin/env bash
# Runs kernels/fused_apply.cu on the CPU (tools/kernel-emu: CUDA features emulated with
# threads and barriers) against a double-precision reference of the operator. Checks the
# kernel's logic — layout, indexing, barriers, warp reductions, selection, atomics path —
# without a GPU; says nothing about speed. Needs g++ with C++20 and _Float16 (GCC ≥ 12).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
OUTDIR=${CARGO_TARGET_DIR:-target}/kernel-emu
mkdir -p "$OUTDIR"
g++ -std=c++20 -O2 -pthread -Wall -Wno-unused-function -Wno-unknown-pragmas -o "$OUTDIR/kernel-emu" tools/kernel-emu/main.cpp
"$OUTDIR/kernel-emu"
echo "emulate-kernel: passed in $(( $(date +%s) - start ))s"
