#!/usr/bin/env python3
"""Peers of `mome bench lookup`, measured on the same data as the engine.

    bench_peers.py --data DIR [--systems faiss,lancedb] [--threads 2] [--out FILE.json]

DIR is written by the Rust driver:
  meta.json    {"experts": N, "dim": D, "queries": Q, "candidates": K,
                "recall_sample": S, "batch": B, "payload_bytes": P,
                "connectivity": M, "expansion_add": EFC,
                "expansion_search": EF, "metric": "cos", "threads": T,
                "sweep_ef": [EF, ...] (optional)}
  keys.npy     float16 (N, D); row i is the key of expert id i+1
  queries.npy  float16 (Q, D)
  truth.npy    int64 (S, 10): exact cosine top-10 ids of the first S queries

Prints one JSON object, {"peers": [...]}, to stdout (and to --out); progress
goes to stderr. Each system runs in a child process of its own, so that its
resident memory and thread settings are its own.

Systems:
  faiss    faiss.IndexHNSWFlat(D, M, METRIC_INNER_PRODUCT) on L2-normalised
           float32 keys (= cosine), efConstruction=EFC, efSearch=EF; the index
           only (no payload).
  lancedb  one table (id int64, vector fixed_size_list<float32>[D], payload
           binary of P random bytes), an ANN index on `vector` with the cosine
           metric (IVF_HNSW_SQ by default), and each query a vector search
           that also fetches the K rows' payloads, every byte of which is read.

Latency: every query is timed alone (after a warm-up of min(200, Q) queries
run untimed), including the Python call; percentiles are nearest-rank.
Batch figures time one call over B queries and divide by B (per query);
batch_qps is the batched throughput on all T threads: queries answered over
the summed wall time of those calls. With sweep_ef, FAISS also reports
"sweep": one {ef, p50_us, p99_us, p999_us, recall_at_10, batch_qps} per ef.
recall@10 is |top10 & truth10| / 10 averaged over the first S queries, from
the single-query results.

Exit status: 0 when every system ran, 1 when one failed (its entry then has
an "error" field and the JSON is still printed), 2 on bad arguments.
"""

import argparse
import gc
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

SYSTEMS = ("faiss", "lancedb")
SYSTEM_NAMES = {"faiss": "faiss-hnsw", "lancedb": "lancedb"}
CHUNK_ROWS = 50_000
WARMUP_MAX = 200


def log(msg):
    print(f"bench-peers: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- helpers


def load_data(data_dir):
    import numpy as np

    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    keys = np.load(os.path.join(data_dir, "keys.npy"), mmap_mode="r")
    queries = np.load(os.path.join(data_dir, "queries.npy"))
    truth = np.load(os.path.join(data_dir, "truth.npy"))
    n, dim = keys.shape
    if n != meta["experts"] or dim != meta["dim"]:
        raise SystemExit(f"keys.npy is {keys.shape}, meta.json says ({meta['experts']}, {meta['dim']})")
    if queries.shape[1] != dim:
        raise SystemExit(f"queries.npy is {queries.shape}, expected (*, {dim})")
    if meta.get("metric", "cos") != "cos":
        raise SystemExit(f"metric {meta.get('metric')!r}: only 'cos' is supported")
    return meta, keys, queries, truth


def normalised(x):
    """float32 copy of x with unit rows (zero rows stay zero)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    x /= norms
    return x


def percentile(sorted_vals, p):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_vals:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_vals)))
    return sorted_vals[min(rank, len(sorted_vals)) - 1]


def lat_stats(ns_list):
    us = sorted(v / 1000.0 for v in ns_list)
    return {
        "p50_us": round3(percentile(us, 50)),
        "p99_us": round3(percentile(us, 99)),
        "p999_us": round3(percentile(us, 99.9)),
    }


def round3(x):
    return None if x is None else round(float(x), 3)


def recall_at_10(found, truth):
    """found: list of id lists (first S queries), truth: (S, 10) ids."""
    s = min(len(found), len(truth))
    if s == 0:
        return None
    total = 0
    for i in range(s):
        total += len(set(int(v) for v in found[i][:10]) & set(int(v) for v in truth[i][:10]))
    return round(total / (10.0 * s), 5)


def rss_mib(field="VmRSS"):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def du_bytes(path):
    """Disk usage like `du -s --block-size=1` (allocated blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_blocks * 512
    return total


def batches_of(q_count, b):
    """Full batches of b queries over [0, q_count); one short batch if q_count < b."""
    b = max(1, int(b))
    if q_count < b:
        return [(0, q_count)] if q_count else []
    return [(s, s + b) for s in range(0, q_count - b + 1, b)]


def timed_batches(search, qn, bs):
    """Per-query latencies (ns) of one search call per batch, and the throughput."""
    perf = time.perf_counter_ns
    blat, total_ns, answered = [], 0, 0
    for s, e in bs:
        t = perf()
        search(qn[s:e])
        el = perf() - t
        blat.append(el / (e - s))
        total_ns += el
        answered += e - s
    qps = round(answered / (total_ns / 1e9), 1) if total_ns > 0 else None
    return blat, qps


def base_entry(system, version, meta):
    return {
        "system": system,
        "version": version,
        "experts": int(meta["experts"]),
        "dim": int(meta["dim"]),
        "queries": int(meta["queries"]),
        "candidates": int(meta["candidates"]),
        "batch": int(meta["batch"]),
        "recall_sample": int(meta["recall_sample"]),
    }


# ---------------------------------------------------------------- FAISS


def run_faiss(meta, keys, queries, truth, threads, data_dir):
    import faiss
    import numpy as np

    n, dim = keys.shape
    k = int(meta["candidates"])
    m = int(meta["connectivity"])
    efc = int(meta["expansion_add"])
    ef = int(meta["expansion_search"])
    out = base_entry("faiss-hnsw", faiss.__version__, meta)

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = efc
    index.hnsw.efSearch = ef

    log(f"faiss-hnsw: building over {n} keys (M={m}, efConstruction={efc}, {threads} threads)")
    convert_s = 0.0
    t0 = time.perf_counter()
    for s in range(0, n, CHUNK_ROWS):
        e = min(n, s + CHUNK_ROWS)
        c0 = time.perf_counter()
        chunk = normalised(keys[s:e])
        convert_s += time.perf_counter() - c0
        index.add(chunk)
        del chunk
        if e < n:
            el = time.perf_counter() - t0
            log(f"faiss-hnsw:   {e}/{n} added, {el:.1f} s")
    build_s = time.perf_counter() - t0 - convert_s
    out["build_s"] = round3(build_s)
    out["ingest_s"] = None
    out["index_build_s"] = round3(build_s)
    out["insert_per_s"] = round(n / build_s, 1) if build_s > 0 else None
    out["rss_mib"] = rss_mib()
    # The index's own arrays (vectors, neighbour lists, their offsets, levels), as the
    # engine reports its index memory: comparable per expert, unlike the process RSS.
    h = index.hnsw
    index_bytes = (index.ntotal * dim * 4 + h.neighbors.size() * 4
                   + h.offsets.size() * 8 + h.levels.size() * 4)
    out["index_bytes"] = int(index_bytes)
    out["index_bytes_per_expert"] = round(index_bytes / n, 1)
    log(f"faiss-hnsw: built in {build_s:.2f} s ({out['insert_per_s']} keys/s), RSS {out['rss_mib']} MiB, "
        f"index arrays {index_bytes / n:.0f} B/key")

    qn = normalised(queries)
    q_count = qn.shape[0]
    s_count = min(int(meta["recall_sample"]), q_count, len(truth))

    bs = batches_of(q_count, meta["batch"])

    def measure(ef_now):
        """Single queries on one thread, then batches on `threads` (faiss parallelises
        over the queries of a batch), at efSearch = ef_now."""
        index.hnsw.efSearch = ef_now
        faiss.omp_set_num_threads(1)
        warm = min(WARMUP_MAX, q_count)
        for i in range(warm):
            index.search(qn[i : i + 1], k)
        lat = []
        found = []
        perf = time.perf_counter_ns
        for i in range(q_count):
            q = qn[i : i + 1]
            t = perf()
            _d, labels = index.search(q, k)
            lat.append(perf() - t)
            if i < s_count:
                found.append([int(x) + 1 for x in labels[0] if x >= 0])
        res = lat_stats(lat)
        res["recall_at_10"] = recall_at_10(found, truth[:s_count])
        faiss.omp_set_num_threads(threads)
        for s, e in bs[: max(1, min(len(bs), 4))]:
            index.search(qn[s:e], k)
        blat, qps = timed_batches(lambda q: index.search(q, k), qn, bs)
        b = lat_stats(blat)
        res["batch_p50_us"] = b["p50_us"]
        res["batch_p99_us"] = b["p99_us"]
        res["batch_qps"] = qps
        return res

    for ef_now in meta.get("sweep_ef") or []:
        r = measure(int(ef_now))
        r["ef"] = int(ef_now)
        out.setdefault("sweep", []).append(r)
        log(f"faiss-hnsw: sweep ef {ef_now}: p50 {r['p50_us']} us, p99 {r['p99_us']} us, recall@10 {r['recall_at_10']}, {r['batch_qps']} q/s batched")
    out.update(measure(ef))
    log(f"faiss-hnsw: single query p50 {out['p50_us']} us, p99 {out['p99_us']} us, recall@10 {out['recall_at_10']}")
    log(f"faiss-hnsw: batch ({meta['batch']}) per-query p50 {out['batch_p50_us']} us, p99 {out['batch_p99_us']} us, {out['batch_qps']} q/s on {threads} threads")

    fd, path = tempfile.mkstemp(prefix="faiss-", suffix=".index", dir=data_dir)
    os.close(fd)
    try:
        faiss.write_index(index, path)
        size = os.path.getsize(path)
    except Exception as err:  # noqa: BLE001 - size is optional
        log(f"faiss-hnsw: write_index failed: {err}")
        size = None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    out["bytes_on_disk"] = size
    out["bytes_per_expert"] = round(size / n, 1) if size else None
    out["peak_rss_mib"] = rss_mib("VmHWM")
    out["params"] = {
        "index": "IndexHNSWFlat",
        "metric": "METRIC_INNER_PRODUCT on L2-normalised float32 (cosine)",
        "M": m,
        "efConstruction": efc,
        "efSearch": ef,
        "k": k,
        "build_threads": threads,
        "single_query_threads": 1,
        "batch_threads": threads,
        "add_chunk_rows": CHUNK_ROWS,
    }
    out["notes"] = (
        "Index only: no payload is stored or fetched. build_s is index.add over "
        f"{CHUNK_ROWS}-row chunks (float16->float32 normalisation excluded, "
        f"{convert_s:.2f} s). Single-query latency: one index.search call per query "
        "from Python with omp_set_num_threads(1). batch_p50_us/batch_p99_us: one "
        f"index.search over {meta['batch']} queries on {threads} OpenMP threads, "
        "divided by the batch size (per query, not per batch). bytes_on_disk: "
        "faiss.write_index file size (float32 vectors + graph). batch_qps: queries over the "
        "summed wall time of the batch calls. sweep: the same measurements at each efSearch "
        "of meta sweep_ef (the top-level figures are at efSearch EF, measured last)."
    )
    return out


# ---------------------------------------------------------------- LanceDB


def payload_array(pa, rng, rows, payload_bytes):
    import numpy as np

    if rows * payload_bytes >= 2**31:
        raise ValueError("one batch of payloads must stay under 2 GiB")
    data = rng.bytes(rows * payload_bytes)
    offsets = np.arange(0, (rows + 1) * payload_bytes, payload_bytes, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def touch_payload(tbl):
    """Reads every payload byte of an Arrow table; returns a checksum."""
    import numpy as np

    acc = 0
    for chunk in tbl.column("payload").chunks:
        if len(chunk) == 0:
            continue
        bufs = chunk.buffers()
        off_dtype = np.int64 if str(chunk.type) == "large_binary" else np.int32
        offs = np.frombuffer(bufs[1], dtype=off_dtype, count=len(chunk) + 1, offset=chunk.offset * np.dtype(off_dtype).itemsize)
        data = np.frombuffer(bufs[2], dtype=np.uint8)[offs[0] : offs[-1]]
        head = len(data) - len(data) % 8
        if head:
            acc += int(data[:head].view(np.uint64).sum(dtype=np.uint64))
        if head < len(data):
            acc += int(data[head:].sum())
    return acc


def run_lancedb(meta, keys, queries, truth, threads, data_dir, args):
    import lancedb
    import numpy as np
    import pyarrow as pa
    from lancedb import index as lix

    n, dim = keys.shape
    k = int(meta["candidates"])
    m = int(meta["connectivity"])
    efc = int(meta["expansion_add"])
    ef = int(args.lance_ef if args.lance_ef is not None else meta["expansion_search"])
    pbytes = int(meta["payload_bytes"])
    out = base_entry("lancedb", lancedb.__version__, meta)

    db_dir = os.path.join(data_dir, "lancedb")
    if os.path.exists(db_dir):
        shutil.rmtree(db_dir)
    db = lancedb.connect(db_dir)

    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("payload", pa.binary(), nullable=False),
        ]
    )
    rows_per_batch = max(1, min(CHUNK_ROWS, (256 << 20) // max(1, pbytes)))
    rng = np.random.default_rng(20240601)
    gen_s = [0.0]
    next_log = [200_000]
    t_start = [0.0]

    def gen():
        for s in range(0, n, rows_per_batch):
            e = min(n, s + rows_per_batch)
            g0 = time.perf_counter()
            vec = np.asarray(keys[s:e], dtype=np.float32)
            batch = pa.RecordBatch.from_arrays(
                [
                    pa.array(np.arange(s + 1, e + 1, dtype=np.int64)),
                    pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), dim),
                    payload_array(pa, rng, e - s, pbytes),
                ],
                schema=schema,
            )
            del vec
            gen_s[0] += time.perf_counter() - g0
            if e >= next_log[0] and e < n:
                next_log[0] += 200_000
                log(f"lancedb:   {e}/{n} rows handed to the writer, {time.perf_counter() - t_start[0]:.1f} s")
            yield batch

    log(f"lancedb: ingesting {n} rows ({dim}-d float32 vector + {pbytes}-byte payload, {rows_per_batch} rows a batch)")
    t_start[0] = time.perf_counter()
    table = db.create_table("experts", data=pa.RecordBatchReader.from_batches(schema, gen()), schema=schema)
    ingest_s = time.perf_counter() - t_start[0] - gen_s[0]
    rows = table.count_rows()
    if rows != n:
        raise RuntimeError(f"lancedb table has {rows} rows, expected {n}")
    log(f"lancedb: ingested in {ingest_s:.2f} s (payload/vector generation excluded, {gen_s[0]:.2f} s)")

    itype = args.lance_index.upper()
    parts = args.lance_partitions
    if parts is None:
        parts = 1 if "HNSW" in itype else max(1, int(round(math.sqrt(n))))
    sub_vectors = args.lance_sub_vectors
    if sub_vectors is None and "PQ" in itype:
        sub_vectors = next(d for d in (dim // 8, dim // 16, dim // 4, dim // 2, dim) if d and dim % d == 0 and (dim // d) % 8 == 0) if dim >= 8 else 1
    if itype == "IVF_HNSW_SQ":
        cfg = lix.HnswSq(distance_type="cosine", num_partitions=parts, m=m, ef_construction=efc)
        iparams = {"m": m, "ef_construction": efc, "num_partitions": parts, "sq_bits": 8}
    elif itype == "IVF_HNSW_PQ":
        cfg = lix.HnswPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=sub_vectors, m=m, ef_construction=efc)
        iparams = {"m": m, "ef_construction": efc, "num_partitions": parts, "num_sub_vectors": sub_vectors, "num_bits": 8}
    elif itype == "IVF_PQ":
        cfg = lix.IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=sub_vectors)
        iparams = {"num_partitions": parts, "num_sub_vectors": sub_vectors, "num_bits": 8}
    elif itype == "IVF_FLAT":
        cfg = lix.IvfFlat(distance_type="cosine", num_partitions=parts)
        iparams = {"num_partitions": parts}
    else:
        raise SystemExit(f"--lance-index {args.lance_index}: use ivf_hnsw_sq, ivf_hnsw_pq, ivf_pq or ivf_flat")
    nprobes = args.lance_nprobes if args.lance_nprobes is not None else (parts if "HNSW" in itype else min(parts, 20))
    refine = args.lance_refine

    log(f"lancedb: building {itype} index on vector (cosine, {iparams})")
    t0 = time.perf_counter()
    table.create_index("vector", config=cfg)
    index_build_s = time.perf_counter() - t0
    build_s = ingest_s + index_build_s
    out["ingest_s"] = round3(ingest_s)
    out["index_build_s"] = round3(index_build_s)
    out["build_s"] = round3(build_s)
    out["insert_per_s"] = round(n / build_s, 1) if build_s > 0 else None
    out["rss_mib"] = rss_mib()
    try:
        idx = table.list_indices()
        index_info = {"name": idx[0].name, "index_type": str(idx[0].index_type)} if idx else None
    except Exception:  # noqa: BLE001 - informational only
        index_info = None
    log(f"lancedb: index built in {index_build_s:.2f} s; total {build_s:.2f} s ({out['insert_per_s']} rows/s), RSS {out['rss_mib']} MiB")

    q32 = np.asarray(queries, dtype=np.float32)
    q_count = q32.shape[0]
    s_count = min(int(meta["recall_sample"]), q_count, len(truth))

    def query(qv, cols):
        b = table.search(qv, vector_column_name="vector").distance_type("cosine").limit(k).select(cols)
        if "HNSW" in itype or "IVF" in itype:
            b = b.nprobes(nprobes)
        if "HNSW" in itype:
            b = b.ef(ef)
        if refine:
            b = b.refine_factor(refine)
        return b.to_arrow()

    cols = ["id", "payload", "_distance"]
    warm = min(WARMUP_MAX, q_count)
    for i in range(warm):
        touch_payload(query(q32[i], cols))
    perf = time.perf_counter_ns
    lat, found = [], []
    sink = 0
    for i in range(q_count):
        t = perf()
        res = query(q32[i], cols)
        sink += touch_payload(res)
        lat.append(perf() - t)
        if i < s_count:
            found.append(res.column("id").to_pylist())
    out.update(lat_stats(lat))
    out["recall_at_10"] = recall_at_10(found, truth[:s_count])
    log(f"lancedb: single query + payload p50 {out['p50_us']} us, p99 {out['p99_us']} us, recall@10 {out['recall_at_10']}")

    # The same queries without the payload column: the search alone.
    lat_ids = []
    for i in range(q_count):
        t = perf()
        query(q32[i], ["id", "_distance"])
        lat_ids.append(perf() - t)
    ids_only = lat_stats(lat_ids)
    out["ids_only_p50_us"] = ids_only["p50_us"]
    out["ids_only_p99_us"] = ids_only["p99_us"]
    log(f"lancedb: single query, ids only, p50 {out['ids_only_p50_us']} us, p99 {out['ids_only_p99_us']} us")

    bs = batches_of(q_count, meta["batch"])
    for s, e in bs[: max(1, min(len(bs), 4))]:
        touch_payload(query(q32[s:e], cols))
    sink_box = [0]

    def batch_search(qv):
        sink_box[0] += touch_payload(query(qv, cols))

    blat, qps = timed_batches(batch_search, q32, bs)
    sink += sink_box[0]
    b = lat_stats(blat)
    out["batch_p50_us"] = b["p50_us"]
    out["batch_p99_us"] = b["p99_us"]
    out["batch_qps"] = qps
    log(f"lancedb: batch ({meta['batch']}) per-query p50 {out['batch_p50_us']} us, p99 {out['batch_p99_us']} us")

    size = du_bytes(db_dir)
    out["bytes_on_disk"] = size
    out["bytes_per_expert"] = round(size / n, 1) if n else None
    out["peak_rss_mib"] = rss_mib("VmHWM")
    out["rss_after_queries_mib"] = rss_mib()
    out["params"] = {
        "index_type": itype,
        **iparams,
        "distance_type": "cosine",
        "nprobes": nprobes,
        "ef": ef if "HNSW" in itype else None,
        "refine_factor": refine,
        "k": k,
        "payload_bytes": pbytes,
        "ingest_rows_per_batch": rows_per_batch,
        "LANCE_CPU_THREADS": os.environ.get("LANCE_CPU_THREADS"),
        "LANCE_IO_THREADS": os.environ.get("LANCE_IO_THREADS") or "lance default",
        "index": index_info,
    }
    out["notes"] = (
        "Table (id int64, vector fixed_size_list<float32>, payload binary) written by "
        f"create_table from {rows_per_batch}-row RecordBatches; ingest_s excludes generating "
        f"the random payloads and float16->float32 keys ({gen_s[0]:.2f} s). Vectors are stored "
        "unnormalised; the index and the search use distance_type cosine. Each timed query is "
        f"table.search(q).distance_type('cosine').limit({k}).select(['id','payload','_distance'])"
        f".nprobes({nprobes})" + (f".ef({ef})" if "HNSW" in itype else "") + (f".refine_factor({refine})" if refine else "")
        + ".to_arrow() plus reading every payload byte; ids_only_* is the same search selecting "
        "no payload. batch_p50_us/batch_p99_us: one search over a "
        f"({meta['batch']}, D) array of queries (lancedb's multi-vector search), payloads read, "
        "divided by the batch size (per query, not per batch). lance's CPU pool is capped at "
        f"{threads} threads (LANCE_CPU_THREADS) for everything; its I/O pool is left as set "
        "(LANCE_IO_THREADS). bytes_on_disk: du of the database "
        "directory (vectors, payloads, index)."
    )
    out["checksum"] = sink % (1 << 32)
    return out


# ---------------------------------------------------------------- driver


def child(args):
    meta, keys, queries, truth = load_data(args.data)
    threads = args.threads
    if args.child == "faiss":
        return run_faiss(meta, keys, queries, truth, threads, args.data)
    if args.child == "lancedb":
        return run_lancedb(meta, keys, queries, truth, threads, args.data, args)
    raise SystemExit(f"unknown system {args.child}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data directory written by the Rust driver")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: faiss,lancedb")
    ap.add_argument("--threads", type=int, default=None, help="threads for builds and batches (default: meta.json threads, else 2)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--lance-index", default="ivf_hnsw_sq", help="ivf_hnsw_sq (default), ivf_hnsw_pq, ivf_pq, ivf_flat")
    ap.add_argument("--lance-partitions", type=int, default=None, help="IVF partitions (default 1 for HNSW, sqrt(N) otherwise)")
    ap.add_argument("--lance-sub-vectors", type=int, default=None, help="PQ sub-vectors (default D/8)")
    ap.add_argument("--lance-nprobes", type=int, default=None, help="partitions probed (default all for HNSW, min(20, partitions) otherwise)")
    ap.add_argument("--lance-ef", type=int, default=None, help="HNSW ef at search (default meta expansion_search)")
    ap.add_argument("--lance-refine", type=int, default=None, help="refine_factor (default none)")
    ap.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.threads is None:
        with open(os.path.join(args.data, "meta.json")) as f:
            args.threads = int(json.load(f).get("threads") or 2)
    args.threads = max(1, args.threads)

    if args.child:
        res = child(args)
        json.dump(res, sys.stdout)
        sys.stdout.write("\n")
        return 0

    systems = [s.strip().lower() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            print(f"bench-peers: unknown system {s!r} (known: {', '.join(SYSTEMS)})", file=sys.stderr)
            return 2

    env = dict(os.environ)
    t = str(args.threads)
    env.update({"OMP_NUM_THREADS": t, "LANCE_CPU_THREADS": t, "RAYON_NUM_THREADS": t})
    env.setdefault("RUST_LOG", "error")
    passthrough = []
    for name in ("lance_index", "lance_partitions", "lance_sub_vectors", "lance_nprobes", "lance_ef", "lance_refine"):
        v = getattr(args, name)
        if v is not None:
            passthrough += ["--" + name.replace("_", "-"), str(v)]

    peers, failed = [], False
    for s in systems:
        cmd = [sys.executable, os.path.abspath(__file__), "--data", args.data, "--threads", t, "--child", s] + passthrough
        log(f"--- {s} ---")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        entry = None
        if proc.returncode == 0:
            try:
                entry = json.loads(proc.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError) as err:
                entry = {"system": SYSTEM_NAMES[s], "error": f"unreadable output: {err}"}
        else:
            entry = {"system": SYSTEM_NAMES[s], "error": f"exited with status {proc.returncode}"}
        if "error" in entry:
            failed = True
            log(f"{s}: FAILED: {entry['error']}")
        entry["wall_s"] = round(wall, 2)
        peers.append(entry)
        gc.collect()

    doc = {"peers": peers}
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
