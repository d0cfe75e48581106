#!/usr/bin/env bash
# Soak run of the SIGKILL crash tests: the same tests CI runs (50 cycles each by
# default, 30 for compaction), with CYCLES kill cycles each (default 200), i.e.
#   MOME_CRASH_CYCLES=${CYCLES:-200} cargo test --release \
#     --test store_crash --test compact_crash --test memorize_crash -- --nocapture
# Each test prints a one-line summary (cycles, acknowledged operations, kills).
# Usage: tools/crash-soak.sh            # 200 cycles per test
#        CYCLES=1000 tools/crash-soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MOME_CRASH_CYCLES="${CYCLES:-200}" cargo test --release \
    --test store_crash --test compact_crash --test memorize_crash -- --nocapture
