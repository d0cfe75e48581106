#!/usr/bin/env bash
# Lookup benchmark at several sizes with peers (issue 9): for each N, `mome bench lookup`
# measures the engine and raw usearch and runs the Python peers (FAISS HNSW, LanceDB) on
# the same data; then one Markdown table, one PNG and the raw JSON go to docs/bench/.
#
#   bash tools/bench-lookup.sh 100000 1000000            # sizes; default shape
#   MOME_BENCH_ARGS="--rank 4" bash tools/bench-lookup.sh 1000000
#   MOME_BENCH_ARGS="--key-dim 64 --rank 1" MOME_BENCH_PEERS="" bash tools/bench-lookup.sh 10000000
#
# Environment: MOME_BENCH_ARGS (extra flags for every size), MOME_BENCH_PEERS (peers,
# default "faiss,lancedb"; empty: none), MOME_BENCH_DIR (scratch, default ./data/bench),
# MOME_BENCH_OUT (default docs/bench).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$#" -gt 0 ] || set -- 100000
cargo build --release -p mome-cli
bin="${CARGO_TARGET_DIR:-./target}/release/mome"
scratch="${MOME_BENCH_DIR:-./data/bench}"
out="${MOME_BENCH_OUT:-docs/bench}"
peers="${MOME_BENCH_PEERS-faiss,lancedb}"
mkdir -p "$scratch" "$out"
inputs=()
for n in "$@"; do
  db="$scratch/lookup-$n"
  rm -rf "$db" "$db.peers-data"
  peer_flags=()
  [ -n "$peers" ] && peer_flags=(--peers --peer-systems "$peers")
  # shellcheck disable=SC2086
  "$bin" bench lookup --experts "$n" --db "$db" ${MOME_BENCH_ARGS:-} "${peer_flags[@]}" \
    --out "$out/lookup-$n.json" | tee "$out/lookup-$n.txt"
  inputs+=(--in "$out/lookup-$n.json")
done
py="$(bash tools/bench-peers.sh --setup-only)"
"$py" tools/bench_plot.py "${inputs[@]}" --png "$out/lookup.png" --md "$out/lookup.md"
echo "wrote $out/lookup.md, $out/lookup.png and $out/lookup-*.json"
