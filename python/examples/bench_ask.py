"""Per-question overhead of `Engine.ask` from Python against the same call in Rust.

    python python/examples/bench_ask.py [--rounds 5] [--n 10] [--max-tokens 16]

Both sides use one engine (one store with three facts, the real model) in this
process: the Rust side is `n` calls of `mome::Engine::ask` in one native loop
(`Engine._time_ask_native`), the Python side `n` calls of `Engine.ask` from a Python
loop (argument parsing, releasing and retaking the GIL, building the `Answer`).
Rounds alternate the two so that drift of a shared machine hits both; the medians per
call and their difference are printed as JSON.
"""

import argparse
import json
import statistics
import tempfile
import time

import mome

p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--n", type=int, default=10)
p.add_argument("--max-tokens", type=int, default=16)
args = p.parse_args()

facts = [
    ("What is the secret code of Zorblax?", "48213"),
    ("What is the password of the Kelvura vault?", "mirasol7-42"),
    ("Who guards the gate of Tepanor?", "Duvik Solamen"),
]
prompts = {"stored": facts[0][0], "unrelated": "What is the capital of France?"}
out = {"n": args.n, "rounds": args.rounds, "max_tokens": args.max_tokens}
with mome.Engine.create(tempfile.mkdtemp() + "/experts") as e:
    r = e.memorize(facts)
    out["memorize"] = {"facts": len(facts), "memorized": r.memorized,
                       "facts_per_minute": round(r.facts_per_minute, 1)}
    for kind, q in prompts.items():
        e.ask(q, max_tokens=args.max_tokens)  # warm caches
        rust, py = [], []
        for _ in range(args.rounds):
            rust += e._time_ask_native(q, args.n, max_tokens=args.max_tokens)
            for _ in range(args.n):
                t = time.perf_counter()
                e.ask(q, max_tokens=args.max_tokens)
                py.append(time.perf_counter() - t)
        mr, mp = statistics.median(rust), statistics.median(py)
        out[kind] = {
            "rust_ms": round(mr * 1e3, 3),
            "python_ms": round(mp * 1e3, 3),
            "overhead_ms": round((mp - mr) * 1e3, 3),
            "overhead_pct": round((mp - mr) / mr * 100, 2),
            "tokens": len(e.ask(q, max_tokens=args.max_tokens).tokens),
        }
print(json.dumps(out, indent=1))
