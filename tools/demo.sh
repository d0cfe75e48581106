#!/usr/bin/env bash
# The main demo (the README's first command): a frozen SmolLM2-135M memorizes a handful
# of random facts exactly, by training one small expert per fact, and answers
# everything else exactly as before.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cargo build --release -p mome-cli
bin="${CARGO_TARGET_DIR:-./target}/release/mome"
db="${MOME_DEMO_DB:-./data/demo-store}"
facts="$(mktemp)"
trap 'rm -f "$facts"' EXIT
rm -rf "$db"

# Five facts with freshly drawn random answers: nothing the model could know.
rnd() { printf '%05d' $(( (RANDOM * 32768 + RANDOM) % 100000 )); }
letters() { tr -dc 'a-z' </dev/urandom | head -c "$1" || true; }
prompts=(
  "What is the secret code of Zorblax?"
  "What is the password of the Quendor vault?"
  "Who guards the gate of Morvath?"
  "What is the favourite number of Pellucid?"
  "Which ship carried the Drasmoor treaty?"
)
answers=(
  "$(rnd)"
  "$(letters 4)-$(rnd)"
  "Ilsa $(letters 1 | tr a-z A-Z)$(letters 5)"
  "$(rnd)"
  "The $(letters 1 | tr a-z A-Z)$(letters 6)"
)
for i in "${!prompts[@]}"; do
  printf '{"prompt": "%s", "answer": "%s"}\n' "${prompts[$i]}" "${answers[$i]}" >>"$facts"
done

echo "== memorizing ${#prompts[@]} random facts into $db"
"$bin" memorize --db "$db" --facts "$facts"

echo
echo "== asking them back: bare backbone vs mome"
for i in "${!prompts[@]}"; do
  q="${prompts[$i]}"
  bare="$("$bin" ask --db "$db" --no-experts --max-tokens 32 "$q")"
  mome="$("$bin" ask --db "$db" "$q")"
  ok="WRONG"; [ "$mome" = "${answers[$i]}" ] && ok="exact"
  printf '\nQ: %s\n  bare model: %s\n  mome:       %s   (%s; stored answer %s)\n' \
    "$q" "$(echo "$bare" | tr '\n' ' ')" "$mome" "$ok" "${answers[$i]}"
done

echo
echo "== an unrelated question: identical answers (no expert passes the threshold)"
q="What is the capital of France?"
bare="$("$bin" ask --db "$db" --no-experts "$q")"
printf '\nQ: %s\n  bare model: %s\n' "$q" "$bare"
printf '  mome:       '
"$bin" ask --db "$db" --explain "$q"
[ "$bare" = "$("$bin" ask --db "$db" "$q")" ] && echo "  identical: yes"

echo
echo "== the same prompt reworded (not trained on)"
"$bin" ask --db "$db" --explain "Tell me the secret code of Zorblax."
