//! The run's JSON object, its table, and the figures of the machine and the process.

use std::path::Path;

use mome::{ExpertIndex, Store};
use serde_json::{json, Value};

use super::lookup::{BuildFigures, EngineFigures, RawFigures, Setup, SweepBuild, SweepPoint};
use super::{LookupArgs, Row};

/// The run's JSON object (footprint measured now).
pub(super) fn report(
    a: &LookupArgs,
    s: &Setup,
    (store, index): (&Store, &ExpertIndex),
    sample: usize,
    b: &BuildFigures,
    u: Option<&RawFigures>,
    m: &EngineFigures,
) -> Value {
    let raw = |f: &dyn Fn(&RawFigures) -> f64| u.map(f);
    let store_bytes = dir_bytes(&s.db);
    let index_bytes = dir_bytes(&store.store_dir().index());
    let bytes_per_expert = store_bytes as f64 / a.experts as f64;
    let rss_mib = proc_status_kib("VmRSS").map(|k| k as f64 / 1024.0);
    let hwm_mib = proc_status_kib("VmHWM").map(|k| k as f64 / 1024.0);
    let index_mib = index.memory_bytes() as f64 / (1 << 20) as f64;
    json!({
        "experts": a.experts,
        "key_dim": s.dim,
        "d_model": s.d_model,
        "rank": a.rank,
        "layers": s.layer_ids.len(),
        "candidates": a.candidates,
        "queries": a.queries,
        "batch": a.batch,
        "recall_sample": sample,
        "threads": s.threads,
        "params": {
            "connectivity": s.params.connectivity,
            "expansion_add": s.params.expansion_add,
            "expansion_search": s.params.expansion_search,
            "quantization": match s.params.quantization {
                mome::Quantization::I8 => "i8",
                _ => "f16",
            },
            "rerank": s.params.rerank,
            "metric": "cos",
        },
        "insert_per_s": b.insert_per_s,
        "ingest_s": b.ingest_s,
        "index_build_s": b.index_build_s,
        "p50_us": m.first_touch.p50,
        "p99_us": m.first_touch.p99,
        "p999_us": m.first_touch.p999,
        "search_p50_us": m.ids.p50,
        "search_p99_us": m.ids.p99,
        "warm_p50_us": m.verified.p50,
        "warm_p99_us": m.verified.p99,
        "warm_p999_us": m.verified.p999,
        "background_verify": {
            "during_p50_us": m.background.during.p50,
            "during_p99_us": m.background.during.p99,
            "during_p999_us": m.background.during.p999,
            "records_checked_during": m.background.checked_during,
            "after_p50_us": m.background.after.p50,
            "after_p99_us": m.background.after.p99,
            "after_p999_us": m.background.after.p999,
            "pass_s": m.background.pass_s,
            "pass_bytes": m.background.pass_bytes,
        },
        "batch_p50_us": m.batch.p50,
        "batch_p99_us": m.batch.p99,
        "batch_qps": m.batch_qps,
        "touch_p50_us": m.touch.p50,
        "touch_p99_us": m.touch.p99,
        "touch_p999_us": m.touch.p999,
        "recall_at_10": m.recall,
        "usearch_version": usearch::version(),
        "usearch_build_s": raw(&|u| u.build_s),
        "usearch_p50_us": raw(&|u| u.single.p50),
        "usearch_p99_us": raw(&|u| u.single.p99),
        "usearch_p999_us": raw(&|u| u.single.p999),
        "usearch_batch_p50_us": raw(&|u| u.batch.p50),
        "usearch_batch_p99_us": raw(&|u| u.batch.p99),
        "usearch_batch_qps": raw(&|u| u.batch_qps),
        "usearch_recall_at_10": raw(&|u| u.recall),
        "overhead_p50": raw(&|u| m.first_touch.p50 / u.single.p50),
        "overhead_p99": raw(&|u| m.first_touch.p99 / u.single.p99),
        "warm_overhead_p50": raw(&|u| m.verified.p50 / u.single.p50),
        "warm_overhead_p99": raw(&|u| m.verified.p99 / u.single.p99),
        "resumed_from": b.resumed_from,
        "build_mode": if b.resumed_from.is_some() {
            "resumable: store and index per batch (ingest_s = index_build_s = that one phase)"
        } else {
            "ingest, then index rebuilt from the store"
        },
        "bytes_per_expert": bytes_per_expert,
        "record_bytes": store.layout().record_size,
        "store_bytes": store_bytes,
        "index_bytes": index_bytes,
        "index_mib": index_mib,
        "index_memory_bytes_per_expert": index.memory_bytes() as f64 / a.experts as f64,
        "rss_mib": rss_mib,
        "peak_rss_mib": hwm_mib,
        "rss_note": "whole benchmark process: includes its own copy of the keys (experts × key_dim × 4 bytes, freed after ingest) and, unless --no-raw, the raw usearch index",
        "machine": s.machine.clone(),
        "db": if a.keep { Some(s.db.display().to_string()) } else { None },
    })
}

pub(super) fn print_table(out: &Value, rows: &[Row]) {
    let f = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
    outln!();
    outln!(
        "experts {}: ingest {:.0} experts/s durable ({:.1}s), index build {:.1}s, {}; \
         {:.0} bytes/expert on disk (record {} B); index {:.0} MiB; process RSS {:.0} MiB",
        out["experts"],
        f("insert_per_s"),
        f("ingest_s"),
        f("index_build_s"),
        match out["usearch_build_s"].as_f64() {
            Some(b) => format!("raw usearch build {b:.1}s"),
            None => "raw usearch skipped".into(),
        },
        f("bytes_per_expert"),
        out["record_bytes"],
        f("index_mib"),
        f("rss_mib"),
    );
    outln!();
    outln!(
        "| experts | system | path | p50 µs | p99 µs | p999 µs | recall@10 | batched q/s ({} threads) |",
        out["threads"]
    );
    outln!("|---:|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        let recall = r.recall.map_or_else(|| "".into(), |x| format!("{x:.4}"));
        let qps = r.qps.map_or_else(|| "".into(), |x| format!("{x:.0}"));
        outln!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {recall} | {qps} |",
            out["experts"],
            r.system,
            r.path,
            r.lat.p50,
            r.lat.p99,
            r.lat.p999
        );
    }
    if out["overhead_p50"].is_null() {
        return;
    }
    outln!();
    outln!(
        "engine full path vs raw usearch search: p50 {:.2}×, p99 {:.2}× (first touch); \
         p50 {:.2}×, p99 {:.2}× (verified records)",
        f("overhead_p50"),
        f("overhead_p99"),
        f("warm_overhead_p50"),
        f("warm_overhead_p99")
    );
}

/// Bytes allocated on disk under `dir` (sparse and preallocated files counted as the
/// filesystem does).
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += dir_bytes(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

pub(super) fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(super) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib as f64 / (1u64 << 20) as f64);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "mem_gib": mem,
    })
}

pub(super) fn sweep_json(points: &[SweepPoint]) -> Value {
    Value::Array(
        points
            .iter()
            .map(|p| {
                json!({
                    "quantization": p.quantization,
                    "traversal": p.traversal,
                    "ef": p.ef,
                    "rerank": p.rerank,
                    "p50_us": p.lat.p50,
                    "p99_us": p.lat.p99,
                    "p999_us": p.lat.p999,
                    "recall_at_10": p.recall,
                    "batch_qps": p.batch_qps,
                })
            })
            .collect(),
    )
}

pub(super) fn sweep_builds_json(builds: &[SweepBuild]) -> Value {
    Value::Array(
        builds
            .iter()
            .map(|b| {
                json!({
                    "quantization": b.quantization,
                    "index_build_s": b.build_s,
                    "index_mib": b.index_mib,
                })
            })
            .collect(),
    )
}

/// The sweep's table (engine full path, records verified; FAISS's sweep from its JSON
/// when the peers ran with one), when there was a sweep.
pub(super) fn print_sweep(out: &Value) {
    let Some(points) = out["sweep"].as_array() else {
        return;
    };
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    outln!();
    outln!(
        "| experts | system | ef | re-rank | p50 µs | p99 µs | recall@10 | batched q/s ({} threads) |",
        out["threads"]
    );
    outln!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for p in points {
        outln!(
            "| {} | mome {} ({} search): search + resolve {} views (verified) | {} | {} | {:.1} | {:.1} | {:.4} | {:.0} |",
            out["experts"],
            p["quantization"].as_str().unwrap_or("?"),
            p["traversal"].as_str().unwrap_or("usearch"),
            out["candidates"],
            p["ef"],
            p["rerank"],
            f(p, "p50_us"),
            f(p, "p99_us"),
            f(p, "recall_at_10"),
            f(p, "batch_qps"),
        );
    }
    for peer in out["peers"].as_array().into_iter().flatten() {
        for p in peer["sweep"].as_array().into_iter().flatten() {
            outln!(
                "| {} | {} {}: search top-K | {} | – | {:.1} | {:.1} | {:.4} | {:.0} |",
                out["experts"],
                peer["system"].as_str().unwrap_or("?"),
                peer["version"].as_str().unwrap_or(""),
                p["ef"],
                f(p, "p50_us"),
                f(p, "p99_us"),
                f(p, "recall_at_10"),
                f(p, "batch_qps"),
            );
        }
    }
    if let Some(builds) = out["sweep_builds"].as_array() {
        for b in builds {
            outln!(
                "sweep: {} index built from the store in {:.1}s, {:.0} MiB",
                b["quantization"].as_str().unwrap_or("?"),
                f(b, "index_build_s"),
                f(b, "index_mib")
            );
        }
    }
}
