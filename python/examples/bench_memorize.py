"""Memorizing from Python against the CLI: facts/min for the same facts on the same
model and options.

    python python/examples/bench_memorize.py [--facts 20] [--rounds 2] [--mome target/release/mome]

Each round draws fresh random facts (made-up names, random answers), then memorizes
them twice into fresh stores: with `mome memorize --json` (a process of its own; its
figure is the Rust call's own `seconds`, without the process start and the model load)
and with `Engine.memorize` in this process (timed around the Python call, so argument
conversion, the per-batch calls that make KeyboardInterrupt safe, and building the
report count). The order alternates between rounds so that drift of a shared machine
hits both. Prints one JSON object: per round and side the seconds and facts/min, the
round's Python/CLI ratio and the load average after it, and the median paired ratio.
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import mome

p = argparse.ArgumentParser()
p.add_argument("--facts", type=int, default=20)
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--mome", default=os.environ.get("MOME_BIN", "target/release/mome"))
p.add_argument("--model", default=None)
args = p.parse_args()


def name(rng: random.Random) -> str:
    c, v = "bcdfghklmnprstvz", "aeiou"
    s = "".join(c[rng.randrange(16)] + v[rng.randrange(5)] for _ in range(rng.randrange(2, 4)))
    return s.capitalize() + c[rng.randrange(16)]


def facts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    templates = ["What is the secret code of {}?", "What is the password of the {} vault?",
                 "Who guards the gate of {}?"]
    out, seen = [], set()
    while len(out) < n:
        ent = name(rng)
        if ent in seen:
            continue
        seen.add(ent)
        t = templates[len(out) % 3]
        a = [str(rng.randrange(10_000, 100_000)), f"{name(rng).lower()}{rng.randrange(10)}",
             f"{name(rng)} {name(rng)}"][len(out) % 3]
        out.append((t.format(ent), a))
    return out


def cli(fs, work: Path) -> dict:
    jl = work / "facts.jsonl"
    jl.write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in fs))
    cmd = [args.mome, "memorize", "--db", str(work / "cli"), "--facts", str(jl), "--json"]
    if args.model:
        cmd += ["--model", args.model]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    return {"seconds": rep["seconds"], "process_seconds": round(wall, 1),
            "memorized": rep["memorized"]}


def py(fs, work: Path) -> dict:
    with mome.Engine.create(work / "py", args.model) as e:
        t = time.perf_counter()
        rep = e.memorize(fs)
        secs = time.perf_counter() - t
    return {"seconds": secs, "memorized": rep.memorized}


rounds = []
for i in range(args.rounds):
    fs = facts(args.facts, seed=1000 + i)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        order = [("cli", cli), ("python", py)] if i % 2 == 0 else [("python", py), ("cli", cli)]
        r = {}
        for side, f in order:
            r[side] = f(fs, work)
            r[side]["facts_per_minute"] = round(r[side]["memorized"] * 60 / r[side]["seconds"], 1)
            r[side]["seconds"] = round(r[side]["seconds"], 1)
        r["python_over_cli"] = round(r["python"]["facts_per_minute"] / r["cli"]["facts_per_minute"], 3)
        r["load_average"] = round(os.getloadavg()[0], 2)
        rounds.append(r)
med = {s: statistics.median(r[s]["facts_per_minute"] for r in rounds) for s in ("cli", "python")}
# The paired ratio (the two sides of one round ran back to back) is the figure that
# drift of a shared machine disturbs least.
print(json.dumps({"facts": args.facts, "rounds": rounds, "median_facts_per_minute": med,
                  "median_paired_ratio": statistics.median(r["python_over_cli"] for r in rounds)},
                 indent=1))
