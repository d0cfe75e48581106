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
# A question no stored fact answers must get the bare model's answer, token for token.
same_as_bare() {
  local q="$1" bare mome
  bare="$("$bin" ask --db "$db" --no-experts "$q")"
  mome="$("$bin" ask --db "$db" "$q")"
  printf '\nQ: %s\n  bare model: %s\n  mome:       %s\n' "$q" "$(echo "$bare" | tr '\n' ' ')" "$(echo "$mome" | tr '\n' ' ')"
  if [ "$bare" = "$mome" ]; then echo "  identical to the bare model: yes"; else echo "  identical to the bare model: NO"; fi
}

echo
echo "== an unrelated question: no stored fact answers it"
same_as_bare "What is the capital of France?"

echo
echo "== near-misses: the same questions about entities that are not stored"
same_as_bare "What is the secret code of Morvath?"
same_as_bare "What is the password of the Zorblax vault?"

echo
echo "== a question that needs two stored facts: one answer line per fact"
"$bin" ask --db "$db" --explain "What is the secret code of Zorblax and who guards the gate of Morvath?"

echo
echo "== the same prompts reworded (not trained on)"
"$bin" ask --db "$db" --explain "Tell me the secret code of Zorblax."
"$bin" ask --db "$db" "Zorblax has which secret code?"
