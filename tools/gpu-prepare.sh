#!/usr/bin/env bash
# Prepares gpu-carry/ for tools/gpu-check.sh, which runs on a GPU machine that has the
# NVIDIA driver (and a CUDA image) but no Rust toolchain:
#   bin/  the release binaries of tests/cuda_parity.rs, tests/fused_op_parity.rs and
#         benches/cuda_fused.rs, built with --features cuda, stripped, gzipped;
#   lib/  NVRTC 12.8 from PyPI (libnvrtc.so.12 + its builtins; cudarc's cuda-12080
#         loader looks for the .so.12 soname, a CUDA 13 image has .so.13), gzipped, and
#         any shared library the binaries need beyond glibc/libgcc/libstdc++ (ldd);
#   MANIFEST.txt  commit, build date, sizes, sha256.
# The folder must stay under 60 MiB (the device tool carries at most 64 MiB).
#
# Usage: tools/gpu-prepare.sh [OUT_DIR]   (default: gpu-carry in the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
OUT=${1:-gpu-carry}
LIMIT=$((60 * 1024 * 1024))

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib"

executables() { # cargo args… → paths of the built executables
    cargo "$@" --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])
'
}

echo "gpu-prepare: building (release, --features cuda)"
# Build with visible output first (errors show), then collect the paths.
cargo test --release --features cuda --test cuda_parity --test fused_op_parity --no-run
cargo bench --features cuda --bench cuda_fused --no-run
mapfile -t exes < <(
    executables test --release --features cuda --test cuda_parity --test fused_op_parity --no-run
    executables bench --features cuda --bench cuda_fused --no-run
)
if [ ${#exes[@]} -ne 3 ]; then
    echo "gpu-prepare: expected 3 executables, got ${#exes[@]}: ${exes[*]}" >&2
    exit 1
fi

system_lib() { # glibc, libgcc, libstdc++ and the loader: present on any CUDA image
    case "$(basename "$1")" in
        linux-vdso.so.*|ld-linux*|libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libgcc_s.so.*|libstdc++.so.*) return 0 ;;
        *) return 1 ;;
    esac
}

for exe in "${exes[@]}"; do
    name=$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')
    strip -o "$OUT/bin/$name" "$exe"
    # Shared libraries beyond the system ones (e.g. Debian's librocksdb, if linked).
    while read -r lib path _; do
        if [ "$path" = "not" ]; then
            echo "gpu-prepare: $name needs $lib, which is not found here" >&2
            exit 1
        fi
        [ -n "$path" ] && [ -e "$path" ] || continue
        system_lib "$lib" && continue
        if [ ! -e "$OUT/lib/$lib.gz" ]; then
            echo "gpu-prepare: carrying $lib ($path) for $name"
            gzip -9 -c "$(readlink -f "$path")" >"$OUT/lib/$lib.gz"
        fi
    done < <(ldd "$exe" | sed -n 's/^\s*\(\S\+\) => \(\S\+\).*/\1 \2/p; s/^\s*\(\S\+\) => not found.*/\1 not/p')
    gzip -9 "$OUT/bin/$name"
done

PKGS=$(bash tools/cuda-wheels.sh)
NVRTC_DIR="$PKGS/nvidia/cuda_nvrtc/lib"
CACHE=$(dirname "$PKGS")/gz
mkdir -p "$CACHE"
for lib in libnvrtc.so.12 libnvrtc-builtins.so.12.8; do
    if [ ! -s "$CACHE/$lib.gz" ]; then
        gzip -9 -c "$NVRTC_DIR/$lib" >"$CACHE/$lib.gz.tmp"
        mv "$CACHE/$lib.gz.tmp" "$CACHE/$lib.gz"
    fi
    cp "$CACHE/$lib.gz" "$OUT/lib/"
done

{
    echo "mome GPU check carry"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "glibc needed: $(for f in "$OUT"/bin/*.gz; do gzip -dc "$f" | strings | grep -o 'GLIBC_2\.[0-9]*' ; done | sort -uV | tail -1)"
    echo
    (cd "$OUT" && find bin lib -type f -printf '%s\t%p\n' | sort -k2)
    echo
    (cd "$OUT" && find bin lib -type f -print0 | sort -z | xargs -0 sha256sum)
} >"$OUT/MANIFEST.txt"

size=$(du -sb "$OUT" | cut -f1)
echo "gpu-prepare: $OUT is $((size / 1024 / 1024)) MiB ($size bytes) after $(( $(date +%s) - start ))s"
if [ "$size" -gt "$LIMIT" ]; then
    echo "gpu-prepare: FAIL: $OUT exceeds 60 MiB" >&2
    exit 1
fi
echo "gpu-prepare: ready; run on the GPU machine: bash tools/gpu-check.sh (carry: $OUT)"
