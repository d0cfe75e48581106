#!/usr/bin/env bash
# Sets up a fresh machine and runs the main demo (the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo build --release -p mome-cli
db="${MOME_DEMO_DB:-./data/demo-store}"
rm -rf "$db"
./target/release/mome smoke --db "$db" --experts 2000
./target/release/mome stats --db "$db"
./target/release/mome verify --db "$db"
