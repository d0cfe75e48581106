#!/usr/bin/env bash
# Soak of the decoder fuzzers (tests/fuzz_decoders.rs): every target for
# MOME_FUZZ_SECS (default 600 s, all targets at once), after replaying the kept
# regression inputs under tests/fixtures/fuzz/. CI runs the same test for 30 s a target.
#
#   tools/fuzz-soak.sh                     # 10 min, every target
#   MOME_FUZZ_SECS=3600 tools/fuzz-soak.sh # an hour
#   MOME_FUZZ_TARGETS=gguf,tokenizer tools/fuzz-soak.sh
#   MOME_FUZZ_SEED=1234 tools/fuzz-soak.sh # replay a printed seed
#
# A panic, hang or oversized allocation fails the test and keeps its input as a fixture.
# An input that kills the process (an abort: an allocation the system refuses) cannot be
# kept by the test itself: it is left as target/tmp/fuzz-<target>-*/inflight.bin, and
# this script copies it into tests/fixtures/fuzz/<target>/crash-<sha>.bin.
set -uo pipefail
cd "$(dirname "$0")/.."
export MOME_FUZZ_SECS="${MOME_FUZZ_SECS:-600}"
tmp=target/tmp
rm -rf "$tmp"/fuzz-*
cargo test --release --test fuzz_decoders -- --nocapture
status=$?
if [ "$status" -ne 0 ]; then
    for f in "$tmp"/fuzz-*/inflight.bin; do
        [ -e "$f" ] || continue
        dir=$(basename "$(dirname "$f")")
        target=${dir#fuzz-}
        target=${target%-*}
        mkdir -p "tests/fixtures/fuzz/$target"
        kept="tests/fixtures/fuzz/$target/crash-$(sha256sum "$f" | cut -c1-16).bin"
        cp "$f" "$kept"
        echo "fuzz-soak: the last input of $target kept at $kept (the process may have died on it)"
    done
fi
exit "$status"
