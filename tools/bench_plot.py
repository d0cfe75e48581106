#!/usr/bin/env python3
"""Table and plot of `mome bench lookup` results.

    bench_plot.py --in FILE.json [--in FILE2.json ...] --png docs/bench-lookup.png --md docs/bench-lookup.md

Each input is one JSON object from the Rust driver: the engine's own figures
at top level (experts, insert_per_s, ingest_s, index_build_s, p50_us, p99_us,
p999_us, batch_p50_us, batch_p99_us, touch_p50_us, touch_p99_us,
recall_at_10, usearch_version, usearch_build_s, usearch_p50_us,
usearch_p99_us, usearch_p999_us, usearch_recall_at_10, bytes_per_expert,
rss_mib, machine, ...) and the peers of tools/bench_peers.py under "peers".
Several inputs are usually runs at several numbers of experts (N).

Systems: "mome" (the engine's full lookup path), "usearch (raw)" (the
usearch_* fields: the bare index on the same keys) and each peer.

Writes a Markdown table (one row per system per N) and a PNG with two
panels: latency percentiles of every system at the largest N (log scale,
recall@10 over each group) and p99 latency against N (log-log). Missing or
null fields show as "–" in the table and are left out of the plot.
"""

import argparse
import json
import math
import os
import sys

DASH = "–"


def machine_text(m):
    """The driver's machine object as one line: "AMD EPYC, 2 cores, 23.5 GiB"."""
    if not isinstance(m, dict):
        return str(m)
    parts = [str(m.get("cpu") or "?")]
    if m.get("cores"):
        parts.append(f"{m['cores']} cores")
    if isinstance(m.get("mem_gib"), (int, float)):
        parts.append(f"{m['mem_gib']:.1f} GiB")
    return ", ".join(parts)


def num(x):
    """float(x), or None for missing / null / non-numeric / non-finite."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def add(*xs):
    vals = [num(x) for x in xs]
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


def engine_rows(doc):
    """The rows of one driver JSON: mome, usearch (raw), then the peers."""
    n = doc.get("experts")
    rows = []
    engine_keys = ("p50_us", "p99_us", "p999_us", "recall_at_10", "ingest_s", "index_build_s", "insert_per_s")
    has_engine = any(doc.get(k) is not None for k in engine_keys)
    ingest, index_build = num(doc.get("ingest_s")), num(doc.get("index_build_s"))
    mome = (
        {
            "system": "mome",
            "version": doc.get("version") or doc.get("mome_version"),
            "experts": n,
            "ingest_s": ingest,
            "index_build_s": index_build,
            "build_s": num(doc.get("build_s")) if num(doc.get("build_s")) is not None else add(ingest, index_build),
            "insert_per_s": num(doc.get("insert_per_s")),
            "p50_us": num(doc.get("p50_us")),
            "p99_us": num(doc.get("p99_us")),
            "p999_us": num(doc.get("p999_us")),
            "batch_p50_us": num(doc.get("batch_p50_us")),
            "batch_p99_us": num(doc.get("batch_p99_us")),
            "recall_at_10": num(doc.get("recall_at_10")),
            "bytes_per_expert": num(doc.get("bytes_per_expert")),
            "rss_mib": num(doc.get("rss_mib")),
            "touch_p50_us": num(doc.get("touch_p50_us")),
            "touch_p99_us": num(doc.get("touch_p99_us")),
        }
    )
    if has_engine:
        rows.append(mome)
    if any(k.startswith("usearch_") and doc.get(k) is not None for k in doc):
        rows.append(
            {
                "system": "usearch (raw)",
                "version": doc.get("usearch_version"),
                "experts": n,
                "ingest_s": None,
                "index_build_s": num(doc.get("usearch_build_s")),
                "build_s": num(doc.get("usearch_build_s")),
                "insert_per_s": None,
                "p50_us": num(doc.get("usearch_p50_us")),
                "p99_us": num(doc.get("usearch_p99_us")),
                "p999_us": num(doc.get("usearch_p999_us")),
                "batch_p50_us": num(doc.get("usearch_batch_p50_us")),
                "batch_p99_us": num(doc.get("usearch_batch_p99_us")),
                "recall_at_10": num(doc.get("usearch_recall_at_10")),
                "bytes_per_expert": num(doc.get("usearch_bytes_per_expert")),
                "rss_mib": None,
            }
        )
    for p in doc.get("peers") or []:
        if not isinstance(p, dict):
            continue
        rows.append(
            {
                "system": p.get("system") or "?",
                "version": p.get("version"),
                "experts": p.get("experts", n),
                "ingest_s": num(p.get("ingest_s")),
                "index_build_s": num(p.get("index_build_s")),
                "build_s": num(p.get("build_s")),
                "insert_per_s": num(p.get("insert_per_s")),
                "p50_us": num(p.get("p50_us")),
                "p99_us": num(p.get("p99_us")),
                "p999_us": num(p.get("p999_us")),
                "batch_p50_us": num(p.get("batch_p50_us")),
                "batch_p99_us": num(p.get("batch_p99_us")),
                "recall_at_10": num(p.get("recall_at_10")),
                "bytes_per_expert": num(p.get("bytes_per_expert")),
                "rss_mib": num(p.get("rss_mib")),
                "ids_only_p50_us": num(p.get("ids_only_p50_us")),
                "ids_only_p99_us": num(p.get("ids_only_p99_us")),
                "notes": p.get("notes"),
                "params": p.get("params"),
                "error": p.get("error"),
            }
        )
    return rows


def fmt(v, kind):
    v = num(v)
    if v is None:
        return DASH
    if kind == "s":
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    if kind == "us":
        return f"{v:.1f}" if v < 100 else f"{v:,.0f}"
    if kind == "recall":
        return f"{v:.3f}"
    if kind == "int":
        return f"{v:,.0f}"
    return str(v)


def n_label(n):
    n = num(n)
    if n is None:
        return "?"
    for div, suf in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % (div // 10 or 1) == 0:
            v = n / div
            return f"{v:g}{suf}"
    return f"{n:,.0f}"


def write_md(path, docs, rows):
    lines = ["# `mome bench lookup`", ""]
    machines = sorted({machine_text(d.get("machine")) for d in docs if d.get("machine")})
    if machines:
        lines += ["Machine: " + "; ".join(machines), ""]
    head = [
        "system",
        "version",
        "experts",
        "ingest s",
        "index build s",
        "build s (total)",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "batch p50 µs/q",
        "batch p99 µs/q",
        "recall@10",
        "bytes/expert",
        "RSS MiB",
    ]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for r in rows:
        cells = [
            r["system"] + (" (failed)" if r.get("error") else ""),
            str(r.get("version")) if r.get("version") else DASH,
            fmt(r.get("experts"), "int"),
            fmt(r.get("ingest_s"), "s"),
            fmt(r.get("index_build_s"), "s"),
            fmt(r.get("build_s"), "s"),
            fmt(r.get("p50_us"), "us"),
            fmt(r.get("p99_us"), "us"),
            fmt(r.get("p999_us"), "us"),
            fmt(r.get("batch_p50_us"), "us"),
            fmt(r.get("batch_p99_us"), "us"),
            fmt(r.get("recall_at_10"), "recall"),
            fmt(r.get("bytes_per_expert"), "int"),
            fmt(r.get("rss_mib"), "int"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "- **mome**: the engine's full lookup path; **usearch (raw)**: the bare usearch index on the same keys.",
        "- Latencies are per single query, nearest-rank percentiles after a warm-up. "
        "Batch columns are one batch call divided by the batch size (µs per query).",
        "- recall@10 is against exact cosine top-10 on a sample of the queries.",
    ]
    for r in rows:
        extra = []
        if r.get("touch_p50_us") is not None or r.get("touch_p99_us") is not None:
            extra.append(f"payload touch p50 {fmt(r.get('touch_p50_us'), 'us')} µs, p99 {fmt(r.get('touch_p99_us'), 'us')} µs")
        if r.get("ids_only_p50_us") is not None or r.get("ids_only_p99_us") is not None:
            extra.append(
                f"search without the payload p50 {fmt(r.get('ids_only_p50_us'), 'us')} µs, "
                f"p99 {fmt(r.get('ids_only_p99_us'), 'us')} µs"
            )
        if extra:
            lines.append(f"- {r['system']} at N = {fmt(r.get('experts'), 'int')}: " + "; ".join(extra) + ".")
    # Each peer's parameters and notes, from its row at the largest N.
    latest = {}
    for r in rows:
        if r["system"] not in ("mome", "usearch (raw)"):
            latest[r["system"]] = r
    for key, r in latest.items():
        if r.get("notes") or r.get("params") or r.get("error"):
            text = f"- **{key}**"
            if r.get("error"):
                text += f" failed: {r['error']}."
            if r.get("params"):
                p = {k: v for k, v in r["params"].items() if v is not None and not isinstance(v, dict)}
                text += " Parameters: " + ", ".join(f"{k}={v}" for k, v in p.items()) + "."
            if r.get("notes"):
                text += " " + r["notes"]
            lines.append(text)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_png(path, docs, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = []
    for r in rows:
        if r["system"] not in systems:
            systems.append(r["system"])
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(systems)}

    ns = sorted({num(r.get("experts")) for r in rows if num(r.get("experts")) is not None})
    n_max = ns[-1] if ns else None

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    machines = sorted({machine_text(d.get("machine")) for d in docs if d.get("machine")})
    fig.suptitle("mome bench lookup" + (f" — {'; '.join(machines)}" if machines else ""), fontsize=11)

    # Left: p50 / p99 / p99.9 per system at the largest N.
    at_max = [
        r
        for r in rows
        if num(r.get("experts")) == n_max and any(num(r.get(k)) for k in ("p50_us", "p99_us", "p999_us"))
    ]
    pcts = [("p50_us", "p50", 0.95), ("p99_us", "p99", 0.65), ("p999_us", "p99.9", 0.35)]
    width = 0.26
    plotted = False
    ymax = 0.0
    for gi, r in enumerate(at_max):
        tops = []
        for pi, (key, label, alpha) in enumerate(pcts):
            v = num(r.get(key))
            if v is None or v <= 0:
                continue
            x = gi + (pi - 1) * width
            ax1.bar(x, v, width, color=colours[r["system"]], alpha=alpha, edgecolor="black", linewidth=0.4)
            ax1.text(x, v, f"{v:,.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="bottom", fontsize=6.5)
            tops.append(v)
            plotted = True
        if tops:
            ymax = max(ymax, max(tops))
            rec = num(r.get("recall_at_10"))
            ax1.annotate(
                f"recall@10 {rec:.3f}" if rec is not None else "recall@10 –",
                (gi, max(tops)),
                xytext=(0, 13),
                textcoords="offset points",
                ha="center",
                fontsize=8,
                fontweight="bold",
            )
    ax1.set_xticks(range(len(at_max)))
    ax1.set_xticklabels([r["system"] for r in at_max], rotation=15 if len(at_max) > 3 else 0)
    if plotted:
        ax1.set_yscale("log")
        ax1.set_ylim(top=ymax * 6)
    ax1.set_ylabel("single-query latency (µs, log)")
    ax1.set_title(f"Latency at N = {n_label(n_max)} experts", fontsize=10)
    from matplotlib.patches import Patch

    ax1.legend(
        handles=[Patch(facecolor="grey", alpha=a, edgecolor="black", label=l) for _, l, a in pcts],
        loc="upper left",
        fontsize=8,
    )
    ax1.grid(axis="y", which="both", alpha=0.25)

    # Right: p99 vs N per system.
    any_line = False
    for s in systems:
        pts = sorted(
            (num(r.get("experts")), num(r.get("p99_us")))
            for r in rows
            if r["system"] == s and num(r.get("experts")) and num(r.get("p99_us")) and num(r.get("p99_us")) > 0
        )
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax2.plot(xs, ys, marker="o", color=colours[s], label=s)
        any_line = True
    if any_line:
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
    if len(ns) < 2:
        ax2.text(0.5, 0.04, "only one N measured", transform=ax2.transAxes, ha="center", fontsize=8, color="grey")
    ax2.set_xlabel("experts (N, log)")
    ax2.set_ylabel("p99 single-query latency (µs, log)")
    ax2.set_title("p99 latency vs number of experts", fontsize=10)
    ax2.grid(which="both", alpha=0.25)

    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in", dest="inputs", action="append", required=True, help="driver JSON (repeat for several N)")
    ap.add_argument("--png", help="write the plot here")
    ap.add_argument("--md", help="write the Markdown table here")
    args = ap.parse_args()
    if not args.png and not args.md:
        ap.error("give --png and/or --md")

    docs = []
    for p in args.inputs:
        with open(p) as f:
            doc = json.load(f)
        if not isinstance(doc, dict):
            raise SystemExit(f"{p}: not a JSON object")
        docs.append(doc)

    # One row per system per N; a later input replaces an earlier one at the same N.
    by_key = {}
    for doc in docs:
        for r in engine_rows(doc):
            by_key[(r["system"], num(r.get("experts")))] = r
    order = []
    for doc in docs:
        for r in engine_rows(doc):
            if r["system"] not in order:
                order.append(r["system"])
    rows = sorted(by_key.values(), key=lambda r: (num(r.get("experts")) or 0, order.index(r["system"])))

    if args.md:
        write_md(args.md, docs, rows)
        print(f"bench-plot: wrote {args.md}", file=sys.stderr)
    if args.png:
        write_png(args.png, docs, rows)
        print(f"bench-plot: wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
