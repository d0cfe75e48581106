#!/usr/bin/env bash
# Builds and installs the Python package (python/, PyO3 + maturin) into a virtual
# environment and runs its pytest suite on the real model. Part of tools/test.sh.
#
# The wheel is built with the workspace's target directory (CARGO_TARGET_DIR, default
# target/), so the Rust core and its dependencies built by `cargo test --release` are
# reused: only mome (without test-support) and the extension itself are compiled.
# Usage: python/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
VENV="${MOME_PYTHON_VENV:-$CARGO_TARGET_DIR/python-venv}"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import maturin, pytest, numpy' 2>/dev/null; then
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "maturin==1.16.0" "pytest==9.2.0" "numpy>=1.24"
fi

start=$(date +%s)
# The build backend runs the `maturin` executable by name: the venv's, on PATH.
export PATH="$VENV/bin:$PATH"
# No build isolation: the venv's pinned maturin builds it, without a download per run.
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation \
  --force-reinstall --no-deps ./python
echo "python: wheel built and installed in $(( $(date +%s) - start ))s"

# `mome inspect` is compared with the NumPy views; cargo test built it already.
export MOME_BIN="${MOME_BIN:-$CARGO_TARGET_DIR/release/mome}"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
