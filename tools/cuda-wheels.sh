#!/usr/bin/env bash
# Installs (once) the pinned CUDA 12.8 compiler wheels from PyPI — NVRTC, ptxas, the
# runtime headers — and prints the folder holding them (`.../nvidia/...` below it).
# Cache: $MOME_CUDA_CACHE (default ~/.cache/mome/cuda). No GPU, no nvcc needed.
set -euo pipefail
CACHE=${MOME_CUDA_CACHE:-$HOME/.cache/mome/cuda}
PKGS="$CACHE/pkgs-12.8"
if [ ! -x "$PKGS/nvidia/cuda_nvcc/bin/ptxas" ] || [ ! -f "$PKGS/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
    echo "cuda-wheels: installing the CUDA 12.8 compiler wheels into $PKGS" >&2
    mkdir -p "$CACHE"
    rm -rf "$PKGS.tmp"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$PKGS.tmp" \
        nvidia-cuda-nvcc-cu12==12.8.93 nvidia-cuda-runtime-cu12==12.8.90 \
        nvidia-cuda-nvrtc-cu12==12.8.93 >&2
    rm -rf "$PKGS"
    mv "$PKGS.tmp" "$PKGS"
fi
echo "$PKGS"
