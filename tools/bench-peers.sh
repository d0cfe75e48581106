#!/usr/bin/env bash
# Runs the peers of `mome bench lookup` (FAISS HNSW, LanceDB) on a data
# directory written by the Rust driver; see tools/bench_peers.py for the
# arguments and the JSON it prints.
#
# The Python packages (tools/bench-requirements.txt, exact pins) live in a
# virtual environment at ${MOME_BENCH_VENV:-target/bench-venv}, made once and
# reinstalled only when the requirements file changes (a stamp file in the
# venv holds the sha256 of the requirements it was installed from).
#
#   bash tools/bench-peers.sh --data DIR [--systems faiss,lancedb] [--threads 2] [--out FILE.json]
#   bash tools/bench-peers.sh --setup-only      # prints the venv's python
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOME_BENCH_VENV:-$REPO/target/bench-venv}"
REQS="$REPO/tools/bench-requirements.txt"
STAMP="$VENV/.mome-bench-requirements.sha256"

log() { echo "bench-peers: $*" >&2; }

make_venv() {
  if python3 -m venv "$VENV" >/dev/null 2>&1; then
    return 0
  fi
  # Debian ships venv (and ensurepip) in a separate package.
  rm -rf "$VENV"
  log "python3 -m venv failed; installing python3-venv"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
  python3 -m venv "$VENV"
}

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
have=""
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ]; then
  have="$(cat "$STAMP")"
fi

if [ "$want" != "$have" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    mkdir -p "$(dirname "$VENV")"
    make_venv
  fi
  log "installing $(grep -cv '^\s*\(#\|$\)' "$REQS") pinned packages from tools/bench-requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" >&2
  echo "$want" >"$STAMP"
fi

# --setup-only: make the environment (tools/bench-lookup.sh plots with it) and stop.
if [ "${1:-}" = "--setup-only" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
exec "$VENV/bin/python" "$REPO/tools/bench_peers.py" "$@"
