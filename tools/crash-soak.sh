#!/usr/bin/env bash
# Soak run of the SIGKILL crash tests and the reader test: the same tests CI runs (50
# kill cycles each by default, 30 for compaction; a 3 s writer for the readers), with
# CYCLES kill cycles each (default 200) and a READER_SECS-long writer (default 600):
#   MOME_CRASH_CYCLES=${CYCLES:-200} cargo test --release --test store_crash \
#     --test compact_crash --test memorize_crash --test import_crash -- --nocapture
#   MOME_READERS_SECS=${READER_SECS:-600} cargo test --release --test store_readers -- --nocapture
# Each test prints a one-line summary (cycles, acknowledged operations, kills, checks).
# Usage: tools/crash-soak.sh                          # 200 cycles per test, 10 min readers
#        CYCLES=1000 READER_SECS=60 tools/crash-soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MOME_CRASH_CYCLES="${CYCLES:-200}" cargo test --release \
    --test store_crash --test compact_crash --test memorize_crash --test import_crash \
    -- --nocapture
MOME_READERS_SECS="${READER_SECS:-600}" cargo test --release --test store_readers -- --nocapture
