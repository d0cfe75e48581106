//! `mome bench lookup`: lookup latency at millions of experts, next to raw usearch (in
//! this process) and the Python peers (FAISS HNSW, LanceDB; `tools/bench-peers.sh`) on
//! the same keys in the same run.
//!
//! Phases: generate clustered keys (rounded to f16 once, so that every system sees the
//! same vectors) and random fp16 weights; ingest them durably into a new store; build
//! the engine's index from the store; build raw usearch with the same parameters;
//! compute exact top-10 answers for a sample of queries; time every path; optionally
//! export the data and run the peers; print a table or one JSON object.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
use mome::{ExpertIndex, FlatIndex, IndexParams, KeyIndex};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Lookup latency, recall and ingest at N synthetic experts, with peers.
    #[command(long_about = LOOKUP_ABOUT)]
    Lookup(LookupArgs),
}

const LOOKUP_ABOUT: &str = "Lookup latency, recall and ingest at N synthetic experts.\n\n\
    Generates N experts (keys from a clustered distribution, random fp16 weights), ingests \
    them durably, builds the index and times the full lookup path: query → top-K ids \
    (--candidates) → resolved zero-copy weight views of those K experts (what the fused \
    operator receives), single queries and batches, and separately with every weight \
    byte read. Raw usearch with the same parameters runs on the same keys in the same \
    process; --peers also runs FAISS HNSW and LanceDB (tools/bench-peers.sh, a local \
    Python virtual environment) on an export of the same data.";

#[derive(clap::Args)]
struct LookupArgs {
    /// Number of experts.
    #[arg(long)]
    experts: usize,
    /// Key (and query) dimension.
    #[arg(long, default_value_t = 576)]
    key_dim: u32,
    /// Hidden size of the adapters (default: the key dimension).
    #[arg(long)]
    d_model: Option<u32>,
    /// Adapter rank.
    #[arg(long, default_value_t = 8)]
    rank: u32,
    /// Number of adapted layers (ids 0..L unless --layer-ids is given).
    #[arg(long, default_value_t = 1)]
    layers: u32,
    /// Adapted layer ids, comma-separated (e.g. 23,26,29 to build a store the engine can
    /// open with the SmolLM2 backbone); overrides --layers.
    #[arg(long, value_delimiter = ',')]
    layer_ids: Vec<u32>,
    /// Query layer recorded in the store (with --layer-ids).
    #[arg(long)]
    query_layer: Option<u32>,
    /// Clusters of the key distribution.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Timed queries per path.
    #[arg(long, default_value_t = 5000)]
    queries: usize,
    /// Candidates per lookup (top-K ids whose weights are resolved).
    #[arg(long, default_value_t = 32)]
    candidates: usize,
    /// Queries per batched call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Queries with exact answers for recall@10.
    #[arg(long, default_value_t = 300)]
    recall_sample: usize,
    /// HNSW connectivity (M).
    #[arg(long)]
    connectivity: Option<usize>,
    /// HNSW expansion while adding (ef_construction).
    #[arg(long)]
    expansion_add: Option<usize>,
    /// HNSW expansion while searching (ef).
    #[arg(long)]
    expansion_search: Option<usize>,
    /// Experts per durable insert batch (one group commit each).
    #[arg(long, default_value_t = 1000)]
    ingest_batch: usize,
    /// Store directory to create (must not exist or be empty); default: a temporary one.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Leave the store in place (for the admin tool) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Also run the Python peers (FAISS HNSW, LanceDB) on the same data.
    #[arg(long)]
    peers: bool,
    /// Peers to run (comma-separated, passed to the script).
    #[arg(long, default_value = "faiss,lancedb")]
    peer_systems: String,
    /// The peers' script.
    #[arg(long, default_value = "tools/bench-peers.sh")]
    peers_script: PathBuf,
    /// Where the data for the peers is exported (default: next to the store).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also write the JSON object to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Machine-readable output (one JSON object on stdout).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.cmd {
        Cmd::Lookup(a) => lookup(a),
    }
}

/// Latency percentiles of one path, in microseconds.
#[derive(Clone, Copy, Default)]
struct Lat {
    p50: f64,
    p99: f64,
    p999: f64,
}

impl Lat {
    fn of(mut v: Vec<Duration>) -> Lat {
        if v.is_empty() {
            return Lat::default();
        }
        v.sort_unstable();
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
        Lat {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

/// One path's measurements.
struct Row {
    system: String,
    path: &'static str,
    lat: Lat,
    recall: Option<f64>,
}

/// Phase lines go to stderr, so that --json output stays one object on stdout.
fn say(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}

/// The benchmark's fixed inputs, derived from the arguments.
struct Setup {
    dim: usize,
    d_model: u32,
    layer_ids: Vec<u32>,
    cfg: StoreConfig,
    params: IndexParams,
    db: PathBuf,
    temp_db: bool,
    threads: usize,
    machine: Value,
}

/// The sample of queries with their exact answers, and how to time a path over them.
struct Timer<'a> {
    queries: &'a [f32],
    qs: Vec<&'a [f32]>,
    truth: &'a [Vec<u64>],
    sample: usize,
    dim: usize,
    batch: usize,
}

impl Timer<'_> {
    /// Latency of single queries through `f` (which returns ids, best first), and its
    /// recall@10 over the sample with exact answers.
    fn single(&self, f: &dyn Fn(&[f32]) -> Result<Vec<u64>>) -> Result<(Lat, f64)> {
        for q in self.qs.iter().take(200) {
            std::hint::black_box(f(q)?);
        }
        let mut lat = Vec::with_capacity(self.qs.len());
        let mut hit = 0usize;
        for (i, q) in self.qs.iter().enumerate() {
            let t = Instant::now();
            let ids = f(q)?;
            lat.push(t.elapsed());
            if let Some(truth) = self.truth.get(i) {
                let truth: HashSet<u64> = truth.iter().copied().collect();
                hit += ids.iter().take(10).filter(|id| truth.contains(id)).count();
            }
        }
        Ok((Lat::of(lat), hit as f64 / (self.sample.max(1) * 10) as f64))
    }

    /// Per-query latency of batches of queries through `f` (which returns the batch size).
    fn batched(&self, f: &dyn Fn(&[f32]) -> Result<usize>) -> Result<Lat> {
        let chunks: Vec<&[f32]> = self.queries.chunks(self.dim * self.batch).collect();
        for c in chunks.iter().take(4) {
            std::hint::black_box(f(c)?);
        }
        let mut lat = Vec::with_capacity(chunks.len());
        for c in &chunks {
            let t = Instant::now();
            let n = f(c)?;
            lat.push(t.elapsed() / n.max(1) as u32);
        }
        Ok(Lat::of(lat))
    }
}

/// Raw usearch's figures: the in-process peer.
struct RawFigures {
    build_s: f64,
    single: Lat,
    recall: f64,
    batch: Lat,
}

/// Durable ingest and index build.
struct BuildFigures {
    ingest_s: f64,
    insert_per_s: f64,
    index_build_s: f64,
}

/// The engine's figures on every timed path.
struct EngineFigures {
    ids: Lat,
    first_touch: Lat,
    recall: f64,
    verified: Lat,
    touch: Lat,
    batch: Lat,
}

fn lookup(a: LookupArgs) -> Result<ExitCode> {
    let t_all = Instant::now();
    let s = setup(&a)?;
    let dim = s.dim;

    let t = Instant::now();
    let keys = round_f16(mome::synth::clustered_keys(a.experts, dim, a.clusters, 1));
    let queries = round_f16(mome::synth::clustered_keys(a.queries, dim, a.clusters, 2));
    say(format_args!(
        "generated keys in {:.1}s",
        t.elapsed().as_secs_f64()
    ));

    let t = Instant::now();
    let sample = a.recall_sample.min(a.queries);
    let truth = exact_top10(&keys, &queries, dim, sample)?;
    say(format_args!(
        "exact top-10 of {sample} queries in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    let timer = Timer {
        queries: &queries,
        qs: queries.chunks_exact(dim).collect(),
        truth: &truth,
        sample,
        dim,
        batch: a.batch,
    };

    let mut rows: Vec<Row> = Vec::new();
    let raw = time_raw_usearch(&a, &s, &keys, &timer, &mut rows)?;

    // The peers' data, written while the keys are still in memory.
    let peer_data = a
        .data_dir
        .clone()
        .unwrap_or_else(|| s.db.with_extension("peers-data"));
    if a.peers {
        let record_bytes = mome::RecordLayout::for_config(&s.cfg).record_size;
        let peer = PeerExport {
            params: &s.params,
            threads: s.threads,
            payload_bytes: record_bytes,
        };
        export(&peer_data, &a, &peer, &keys, &queries, &truth)?;
    }

    let (store, ingest_s, insert_per_s) = ingest(&a, &s, &keys)?;
    drop(keys);
    let (index, index_build_s) = build_index(&a, &s, &store)?;
    let build = BuildFigures {
        ingest_s,
        insert_per_s,
        index_build_s,
    };
    let engine = time_engine(&a, &store, &index, &timer, &mut rows)?;

    let mut out = report(&a, &s, (&store, &index), sample, &build, &raw, &engine);
    if a.peers {
        let peers = run_peers(&a, &peer_data, s.threads)?;
        for p in peers.as_array().into_iter().flatten() {
            rows.push(peer_row(p));
        }
        out["peers"] = peers;
        if a.data_dir.is_none() {
            let _ = std::fs::remove_dir_all(&peer_data);
        }
    }
    out["seconds"] = json!(t_all.elapsed().as_secs_f64());

    drop(index);
    drop(store);
    if !a.keep {
        std::fs::remove_dir_all(&s.db).with_context(|| format!("removing {}", s.db.display()))?;
    } else if s.temp_db {
        say(format_args!("store kept at {}", s.db.display()));
    }

    if let Some(path) = &a.out {
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{out}");
    } else {
        print_table(&out, &rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the arguments and derives the store config, index parameters and store path.
fn setup(a: &LookupArgs) -> Result<Setup> {
    ensure!(a.experts > 0, "--experts must be at least 1");
    ensure!(
        a.key_dim > 0 && a.rank > 0,
        "--key-dim and --rank must be positive"
    );
    ensure!(
        a.candidates >= 10,
        "--candidates must be at least 10 (recall@10)"
    );
    ensure!(
        a.queries > 0 && a.batch > 0,
        "--queries and --batch must be positive"
    );
    let dim = a.key_dim as usize;
    let d_model = a.d_model.unwrap_or(a.key_dim);
    let layer_ids: Vec<u32> = if a.layer_ids.is_empty() {
        (0..a.layers.max(1)).collect()
    } else {
        a.layer_ids.clone()
    };
    let mut cfg = StoreConfig::new(d_model, a.key_dim, a.rank, layer_ids.clone());
    if let Some(q) = a.query_layer {
        cfg = cfg.with_query_layer(q);
    }
    let mut params = IndexParams::default();
    if let Some(m) = a.connectivity {
        params.connectivity = m;
    }
    if let Some(e) = a.expansion_add {
        params.expansion_add = e;
    }
    if let Some(e) = a.expansion_search {
        params.expansion_search = e;
    }
    let (db, temp_db) = match &a.db {
        Some(p) => (p.clone(), false),
        None => (
            std::env::temp_dir().join(format!("mome-bench-lookup-{}", std::process::id())),
            true,
        ),
    };
    if db.exists() && std::fs::read_dir(&db)?.next().is_some() {
        bail!(
            "{} exists and is not empty; the benchmark creates a new store",
            db.display()
        );
    }
    let threads = rayon::current_num_threads();
    let machine = machine();
    say(format_args!(
            "mome bench lookup: {} experts, key_dim {dim}, d_model {d_model}, rank {}, layers {layer_ids:?}, \
             top-K {}, M {} efC {} ef {}, {threads} threads; usearch {}; {}",
            a.experts,
            a.rank,
            a.candidates,
            params.connectivity,
            params.expansion_add,
            params.expansion_search,
            usearch::version(),
            machine["cpu"].as_str().unwrap_or("?")
        ),
    );
    Ok(Setup {
        dim,
        d_model,
        layer_ids,
        cfg,
        params,
        db,
        temp_db,
        threads,
        machine,
    })
}

/// Exact top-10 ids of the first `sample` queries (ids are row numbers + 1).
fn exact_top10(keys: &[f32], queries: &[f32], dim: usize, sample: usize) -> Result<Vec<Vec<u64>>> {
    let flat = FlatIndex::new(dim);
    for (i, k) in keys.chunks_exact(dim).enumerate() {
        flat.add(i as u64 + 1, k)?;
    }
    Ok(queries
        .par_chunks_exact(dim)
        .take(sample)
        .map(|q| Ok(flat.search(q, 10)?.iter().map(|h| h.id).collect()))
        .collect::<mome::IndexResult<_>>()?)
}

/// Builds raw usearch with the engine's parameters on the same keys and times it.
///
/// It is built, timed and dropped before the engine's store and index exist, so the
/// engine's measurements run with one index in memory (as a deployment would) and the
/// page cache left to its shards.
fn time_raw_usearch(
    a: &LookupArgs,
    s: &Setup,
    keys: &[f32],
    timer: &Timer,
    rows: &mut Vec<Row>,
) -> Result<RawFigures> {
    let (dim, k) = (s.dim, a.candidates);
    let raw = usearch::Index::new(&usearch::IndexOptions {
        dimensions: dim,
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F16,
        connectivity: s.params.connectivity,
        expansion_add: s.params.expansion_add,
        expansion_search: s.params.expansion_search,
        multi: false,
    })
    .map_err(|e| anyhow::anyhow!("usearch: {e}"))?;
    raw.reserve_capacity_and_threads(a.experts, s.threads.max(1))
        .map_err(|e| anyhow::anyhow!("usearch reserve: {e}"))?;
    let t = Instant::now();
    let pb = crate::progress::bar(a.experts as u64, "usearch");
    keys.par_chunks_exact(dim)
        .enumerate()
        .try_for_each(|(i, k)| {
            pb.inc(1);
            raw.add(i as u64 + 1, k)
        })
        .map_err(|e| anyhow::anyhow!("usearch add: {e}"))?;
    pb.finish_and_clear();
    let build_s = t.elapsed().as_secs_f64();
    say(format_args!("raw usearch built in {build_s:.1}s"));

    let (single, recall) = timer.single(&|q| {
        Ok(raw
            .search(q, k)
            .map_err(|e| anyhow::anyhow!("usearch search: {e}"))?
            .keys)
    })?;
    rows.push(Row {
        system: format!("usearch {} (raw)", usearch::version()),
        path: "search top-K",
        lat: single,
        recall: Some(recall),
    });
    let batch = timer.batched(&|c| {
        let n = c
            .par_chunks_exact(dim)
            .map(|q| raw.search(q, k).map(|m| m.keys.len()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("usearch search: {e}"))?;
        Ok(n.len())
    })?;
    rows.push(Row {
        system: format!("usearch {} (raw)", usearch::version()),
        path: "batched search, per query",
        lat: batch,
        recall: None,
    });
    Ok(RawFigures {
        build_s,
        single,
        recall,
        batch,
    })
}

/// Ingests the experts durably into a new store (group commits of `--ingest-batch`).
/// Returns the store, the ingest's wall time and the insert rate.
fn ingest(a: &LookupArgs, s: &Setup, keys: &[f32]) -> Result<(Arc<Store>, f64, f64)> {
    let store = Arc::new(
        Store::create(&s.db, s.cfg.clone())
            .with_context(|| format!("creating {}", s.db.display()))?,
    );
    store.set_progress(crate::progress::terminal());
    let per_matrix = (a.rank * s.d_model) as usize;
    let pool = weight_pool(per_matrix * 2 * s.layer_ids.len() + (1 << 22));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let pb = crate::progress::bar(a.experts as u64, "ingest");
    let mut insert_time = Duration::ZERO;
    let t_ingest = Instant::now();
    for chunk in keys.chunks(s.dim * a.ingest_batch.max(1)) {
        let batch: Vec<NewExpert> = chunk
            .chunks_exact(s.dim)
            .map(|k| NewExpert {
                key: k.iter().map(|&x| f16::from_f32(x)).collect(),
                layers: s
                    .layer_ids
                    .iter()
                    .map(|_| AdapterPair {
                        a: slice_of(&pool, per_matrix, &mut rng),
                        b: slice_of(&pool, per_matrix, &mut rng),
                    })
                    .collect(),
                provenance: Provenance::text("bench lookup"),
            })
            .collect();
        let n = batch.len() as u64;
        let t = Instant::now();
        store.insert_batch(batch)?;
        insert_time += t.elapsed();
        pb.inc(n);
    }
    pb.finish_and_clear();
    let ingest_s = t_ingest.elapsed().as_secs_f64();
    let insert_per_s = a.experts as f64 / insert_time.as_secs_f64();
    say(format_args!(
            "ingested {} experts durably in {ingest_s:.1}s ({insert_per_s:.0} experts/s in insert_batch)",
            a.experts
        ),
    );
    Ok((store, ingest_s, insert_per_s))
}

/// Builds the index from the store (the rebuild path an operator gets) and saves it.
fn build_index(a: &LookupArgs, s: &Setup, store: &Arc<Store>) -> Result<(ExpertIndex, f64)> {
    let t = Instant::now();
    let index = ExpertIndex::open_with(store.clone(), s.params)?;
    let index_build_s = t.elapsed().as_secs_f64();
    ensure!(
        index.len() == a.experts,
        "index holds {} keys, store {}",
        index.len(),
        a.experts
    );
    say(format_args!(
        "index built from the store and saved in {index_build_s:.1}s"
    ));
    Ok((index, index_build_s))
}

/// Times the engine's lookup paths: ids only; ids + resolved zero-copy views (first
/// touch verifies each record's checksum, so once on mostly unverified records and once
/// on verified ones); the same reading every weight byte; batched search + resolve.
fn time_engine(
    a: &LookupArgs,
    store: &Store,
    index: &ExpertIndex,
    timer: &Timer,
    rows: &mut Vec<Row>,
) -> Result<EngineFigures> {
    let k = a.candidates;
    let resolve = |q: &[f32]| -> Result<(Vec<u64>, Vec<mome::ExpertRef>)> {
        let ids: Vec<u64> = index.search(q, k)?.iter().map(|h| h.id).collect();
        let views = store.get_many(&ids)?;
        Ok((ids, views))
    };
    let mut row = |path: &'static str, lat: Lat, recall: Option<f64>| {
        rows.push(Row {
            system: "mome".into(),
            path,
            lat,
            recall,
        })
    };
    let (ids, _) = timer.single(&|q| Ok(index.search(q, k)?.iter().map(|h| h.id).collect()))?;
    row("index search top-K (ids only)", ids, None);
    let views_only = |q: &[f32]| -> Result<Vec<u64>> {
        let (ids, views) = resolve(q)?;
        std::hint::black_box(&views);
        Ok(ids)
    };
    let (first_touch, recall) = timer.single(&views_only)?;
    row(
        "search top-K + resolve weight views (first touch: checksums verified)",
        first_touch,
        Some(recall),
    );
    let (verified, _) = timer.single(&views_only)?;
    row(
        "search top-K + resolve weight views (records already verified)",
        verified,
        None,
    );
    let (touch_lat, _) = timer.single(&|q| {
        let (ids, views) = resolve(q)?;
        std::hint::black_box(touch(&views));
        Ok(ids)
    })?;
    row("… + read every weight byte", touch_lat, None);
    let batch = timer.batched(&|c| {
        let hits = index.search_batch(c, k)?;
        for h in &hits {
            let ids: Vec<u64> = h.iter().map(|h| h.id).collect();
            std::hint::black_box(store.get_many(&ids)?);
        }
        Ok(hits.len())
    })?;
    row("batched search + resolve, per query", batch, None);
    Ok(EngineFigures {
        ids,
        first_touch,
        recall,
        verified,
        touch: touch_lat,
        batch,
    })
}

/// The run's JSON object (footprint measured now).
fn report(
    a: &LookupArgs,
    s: &Setup,
    (store, index): (&Store, &ExpertIndex),
    sample: usize,
    b: &BuildFigures,
    u: &RawFigures,
    m: &EngineFigures,
) -> Value {
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
            "quantization": "f16",
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
        "batch_p50_us": m.batch.p50,
        "batch_p99_us": m.batch.p99,
        "touch_p50_us": m.touch.p50,
        "touch_p99_us": m.touch.p99,
        "touch_p999_us": m.touch.p999,
        "recall_at_10": m.recall,
        "usearch_version": usearch::version(),
        "usearch_build_s": u.build_s,
        "usearch_p50_us": u.single.p50,
        "usearch_p99_us": u.single.p99,
        "usearch_p999_us": u.single.p999,
        "usearch_batch_p50_us": u.batch.p50,
        "usearch_batch_p99_us": u.batch.p99,
        "usearch_recall_at_10": u.recall,
        "overhead_p50": m.first_touch.p50 / u.single.p50,
        "overhead_p99": m.first_touch.p99 / u.single.p99,
        "warm_overhead_p50": m.verified.p50 / u.single.p50,
        "warm_overhead_p99": m.verified.p99 / u.single.p99,
        "bytes_per_expert": bytes_per_expert,
        "record_bytes": store.layout().record_size,
        "store_bytes": store_bytes,
        "index_bytes": index_bytes,
        "index_mib": index_mib,
        "rss_mib": rss_mib,
        "peak_rss_mib": hwm_mib,
        "rss_note": "whole benchmark process: includes its own copy of the keys (experts × key_dim × 4 bytes) and the raw usearch index",
        "machine": s.machine.clone(),
        "db": if a.keep { Some(s.db.display().to_string()) } else { None },
    })
}

/// One peer's row of the table, from its JSON.
fn peer_row(p: &Value) -> Row {
    Row {
        system: format!(
            "{} {}",
            p["system"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("")
        ),
        path: peer_path(p["system"].as_str().unwrap_or("")),
        lat: Lat {
            p50: p["p50_us"].as_f64().unwrap_or(f64::NAN),
            p99: p["p99_us"].as_f64().unwrap_or(f64::NAN),
            p999: p["p999_us"].as_f64().unwrap_or(f64::NAN),
        },
        recall: p["recall_at_10"].as_f64(),
    }
}

fn peer_path(system: &str) -> &'static str {
    match system {
        "lancedb" => "search top-K + fetch payload bytes",
        _ => "search top-K",
    }
}

fn print_table(out: &Value, rows: &[Row]) {
    let f = |k: &str| out[k].as_f64().unwrap_or(f64::NAN);
    println!();
    println!(
        "experts {}: ingest {:.0} experts/s durable ({:.1}s), index build {:.1}s, raw usearch build {:.1}s; \
         {:.0} bytes/expert on disk (record {} B); index {:.0} MiB; process RSS {:.0} MiB",
        out["experts"],
        f("insert_per_s"),
        f("ingest_s"),
        f("index_build_s"),
        f("usearch_build_s"),
        f("bytes_per_expert"),
        out["record_bytes"],
        f("index_mib"),
        f("rss_mib"),
    );
    println!();
    println!("| experts | system | path | p50 µs | p99 µs | p999 µs | recall@10 |");
    println!("|---:|---|---|---:|---:|---:|---:|");
    for r in rows {
        let recall = r.recall.map_or_else(|| "".into(), |x| format!("{x:.4}"));
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {recall} |",
            out["experts"], r.system, r.path, r.lat.p50, r.lat.p99, r.lat.p999
        );
    }
    println!();
    println!(
        "engine full path vs raw usearch search: p50 {:.2}×, p99 {:.2}× (first touch); \
         p50 {:.2}×, p99 {:.2}× (verified records)",
        f("overhead_p50"),
        f("overhead_p99"),
        f("warm_overhead_p50"),
        f("warm_overhead_p99")
    );
}

/// Every value rounded to f16 and back: the store keeps f16 keys, and the peers read the
/// f16 export, so all systems index exactly these vectors.
fn round_f16(mut v: Vec<f32>) -> Vec<f32> {
    v.par_iter_mut()
        .for_each(|x| *x = f16::from_f32(*x).to_f32());
    v
}

/// Random fp16 values (N(0, 0.02²)-like) that experts' matrices are sliced from: copying
/// from a pool keeps generation far below the cost of the durable writes.
fn weight_pool(len: usize) -> Vec<f16> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..len)
        .map(|_| f16::from_f32((rng.random::<f32>() - 0.5) * 0.07))
        .collect()
}

fn slice_of(pool: &[f16], len: usize, rng: &mut impl Rng) -> Vec<f16> {
    let start = rng.random_range(0..=pool.len() - len);
    pool[start..start + len].to_vec()
}

/// Reads every key and weight byte of the views.
fn touch(views: &[mome::ExpertRef]) -> u64 {
    let mut s = 0u64;
    for v in views {
        for &x in v.key() {
            s = s.wrapping_add(u64::from(x.to_bits()));
        }
        for l in 0..v.n_layers() {
            for &x in v.a(l).iter().chain(v.b(l)) {
                s = s.wrapping_add(u64::from(x.to_bits()));
            }
        }
    }
    s
}

/// Bytes allocated on disk under `dir` (sparse and preallocated files counted as the
/// filesystem does).
fn dir_bytes(dir: &Path) -> u64 {
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

fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn machine() -> Value {
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

/// Writes the data for the peers: meta.json, keys.npy (f16, N×D; row i is id i+1),
/// queries.npy (f16, Q×D), truth.npy (i64, S×10).
/// What the peers' metadata records besides the arguments.
struct PeerExport<'a> {
    params: &'a IndexParams,
    threads: usize,
    payload_bytes: usize,
}

fn export(
    dir: &Path,
    a: &LookupArgs,
    peer: &PeerExport,
    keys: &[f32],
    queries: &[f32],
    truth: &[Vec<u64>],
) -> Result<()> {
    let PeerExport {
        params,
        threads,
        payload_bytes,
    } = *peer;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dim = a.key_dim as usize;
    let to_f16 = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect()
    };
    write_npy(
        &dir.join("keys.npy"),
        "<f2",
        &[keys.len() / dim, dim],
        &to_f16(keys),
    )?;
    write_npy(
        &dir.join("queries.npy"),
        "<f2",
        &[queries.len() / dim, dim],
        &to_f16(queries),
    )?;
    let t: Vec<u8> = truth
        .iter()
        .flat_map(|row| {
            (0..10).flat_map(move |i| (row.get(i).map_or(-1, |&x| x as i64)).to_le_bytes())
        })
        .collect();
    write_npy(&dir.join("truth.npy"), "<i8", &[truth.len(), 10], &t)?;
    let meta = json!({
        "experts": a.experts,
        "dim": dim,
        "queries": queries.len() / dim,
        "candidates": a.candidates,
        "recall_sample": truth.len(),
        "batch": a.batch,
        "payload_bytes": payload_bytes,
        "connectivity": params.connectivity,
        "expansion_add": params.expansion_add,
        "expansion_search": params.expansion_search,
        "metric": "cos",
        "threads": threads,
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}

/// NumPy `.npy` version 1.0: magic, header dict padded to a 64-byte boundary, raw data.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    f.write_all(b"\x93NUMPY\x01\x00")?;
    f.write_all(&u16::try_from(header.len())?.to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(data)?;
    f.flush()?;
    Ok(())
}

fn run_peers(a: &LookupArgs, data: &Path, threads: usize) -> Result<Value> {
    let out = data.join("peers.json");
    say(format_args!(
        "running peers ({}) with {}",
        a.peer_systems,
        a.peers_script.display()
    ));
    let status = std::process::Command::new("bash")
        .arg(&a.peers_script)
        .arg("--data")
        .arg(data)
        .arg("--systems")
        .arg(&a.peer_systems)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", a.peers_script.display()))?;
    ensure!(status.success(), "the peers' script failed ({status})");
    let v: Value = serde_json::from_slice(
        &std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?,
    )?;
    Ok(v["peers"].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.npy");
        write_npy(&p, "<f2", &[3, 2], &[0u8; 12]).expect("write");
        let b = std::fs::read(&p).expect("read");
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + hlen]).expect("utf8");
        assert!(h.contains("'shape': (3, 2)"), "{h}");
        assert!(h.ends_with('\n'));
        assert_eq!(b.len(), 10 + hlen + 12);
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let l = Lat::of(v);
        // Nearest rank: index round((n - 1) · p) of the sorted values.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(l.p50, 501.0), "{}", l.p50);
        assert!(close(l.p99, 990.0), "{}", l.p99);
        assert!(close(l.p999, 999.0), "{}", l.p999);
        assert_eq!(Lat::of(Vec::new()).p50, 0.0);
    }
}
