#!/usr/bin/env bash
# Sets up a fresh machine and runs the whole test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# Release only: the dev profile is no cheaper to build here and the crash/property
# tests run several times faster optimised (see NOTES in ARCHITECTURE.md).
cargo test --release --workspace
# The Python package (python/): wheel built on the same target directory, then pytest.
bash python/test.sh
