#!/usr/bin/env bash
# The cluster soak: faults cycle under a continuous writer (tools/tests/cluster_soak.rs).
#   bash tools/cluster-soak.sh [ROUNDS] [MINUTES]      # defaults 12 and 15
# Prints one line "SOAK {json}" with the results (docs/BENCHMARKS.md §Cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/cluster-setup.sh >/dev/null
MOME_SOAK_ROUNDS="${1:-12}" MOME_SOAK_MINUTES="${2:-15}" \
  cargo test --release -p mome-cli --test cluster_soak -- --ignored --nocapture 2>&1 \
  | grep -E "^(SOAK|round|test result)|panicked"
