//! The benchmark's phases: setup, exact answers, raw usearch, ingest, index build and
//! the engine's timed paths.

use std::collections::HashSet;
use std::path::PathBuf;
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

use super::peers::{export, peer_row, run_peers, PeerExport};
use super::report::{machine, print_sweep, print_table, report, sweep_builds_json, sweep_json};
use super::{say, Lat, LookupArgs, Quant, Row, Traversal};

/// The benchmark's fixed inputs, derived from the arguments.
pub(super) struct Setup {
    pub(super) dim: usize,
    pub(super) d_model: u32,
    pub(super) layer_ids: Vec<u32>,
    pub(super) cfg: StoreConfig,
    pub(super) params: IndexParams,
    pub(super) db: PathBuf,
    pub(super) temp_db: bool,
    pub(super) threads: usize,
    pub(super) machine: Value,
}

impl Setup {
    /// Elements of one adapter matrix (rank × d_model).
    fn per_matrix(&self) -> usize {
        (self.cfg.rank * self.d_model) as usize
    }

    /// The fp16 pool every expert's matrices are sliced from (`new_experts`).
    fn weight_pool(&self) -> Vec<f16> {
        weight_pool(self.per_matrix() * 2 * self.layer_ids.len() + (1 << 22))
    }
}

/// Whether `dir` exists and holds anything (a store the benchmark would overwrite).
fn holds_files(dir: &std::path::Path) -> Result<bool> {
    Ok(dir.exists() && std::fs::read_dir(dir)?.next().is_some())
}

/// The sample of queries with their exact answers, and how to time a path over them.
pub(super) struct Timer<'a> {
    pub(super) queries: &'a [f32],
    pub(super) qs: Vec<&'a [f32]>,
    pub(super) truth: &'a [Vec<u64>],
    pub(super) sample: usize,
    pub(super) dim: usize,
    pub(super) batch: usize,
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

    /// Per-query latency of batches of queries through `f` (which returns the batch
    /// size, and spreads a batch over the rayon pool), and the throughput on all
    /// threads: queries answered over the summed wall time of the batches.
    fn batched(&self, f: &dyn Fn(&[f32]) -> Result<usize>) -> Result<(Lat, f64)> {
        let chunks: Vec<&[f32]> = self.queries.chunks(self.dim * self.batch).collect();
        for c in chunks.iter().take(4) {
            std::hint::black_box(f(c)?);
        }
        let mut lat = Vec::with_capacity(chunks.len());
        let (mut answered, mut wall) = (0usize, Duration::ZERO);
        for c in &chunks {
            let t = Instant::now();
            let n = f(c)?;
            let el = t.elapsed();
            lat.push(el / n.max(1) as u32);
            answered += n;
            wall += el;
        }
        Ok((Lat::of(lat), answered as f64 / wall.as_secs_f64().max(1e-9)))
    }
}

/// Raw usearch's figures: the in-process peer.
pub(super) struct RawFigures {
    pub(super) build_s: f64,
    pub(super) single: Lat,
    pub(super) recall: f64,
    pub(super) batch: Lat,
    pub(super) batch_qps: f64,
}

/// Durable ingest and index build.
pub(super) struct BuildFigures {
    pub(super) ingest_s: f64,
    pub(super) insert_per_s: f64,
    pub(super) index_build_s: f64,
    /// With --resume: the experts the store already held when this run started (its
    /// figures then cover only the rest, ingest and index together).
    pub(super) resumed_from: Option<u64>,
}

/// The engine's figures on every timed path.
pub(super) struct EngineFigures {
    pub(super) ids: Lat,
    pub(super) first_touch: Lat,
    pub(super) recall: f64,
    pub(super) verified: Lat,
    pub(super) touch: Lat,
    pub(super) batch: Lat,
    pub(super) batch_qps: f64,
    pub(super) background: BackgroundFigures,
}

/// First touch with background verification (`Store::verify_in_background`), each on a
/// fresh read-only mapping of the same shards (no record verified in it yet).
pub(super) struct BackgroundFigures {
    /// Queries timed while the pass runs, started at the same moment.
    pub(super) during: Lat,
    /// Records the pass had checked when those queries ended.
    pub(super) checked_during: u64,
    /// Queries timed on a second fresh mapping after its pass finished.
    pub(super) after: Lat,
    /// How long that pass took over every live record, and how many bytes it read.
    pub(super) pass_s: f64,
    pub(super) pass_bytes: u64,
}

pub(super) fn lookup(a: LookupArgs) -> Result<ExitCode> {
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
    let raw = if a.no_raw {
        None
    } else {
        Some(time_raw_usearch(&a, &s, &keys, &timer, &mut rows)?)
    };

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

    let (store, index, build) = if a.resume {
        let built = resumable_build(&a, &s, &keys)?;
        drop(keys);
        built
    } else {
        let (store, ingest_s, insert_per_s) = ingest(&a, &s, &keys)?;
        drop(keys);
        let (index, index_build_s) = build_index(&a, &s, &store)?;
        let build = BuildFigures {
            ingest_s,
            insert_per_s,
            index_build_s,
            resumed_from: None,
        };
        (store, index, build)
    };
    let engine = time_engine(&a, &store, &index, &timer, &mut rows)?;

    let mut out = report(
        &a,
        &s,
        (&store, &index),
        sample,
        &build,
        raw.as_ref(),
        &engine,
    );
    let swept = !(a.sweep_quantization.is_empty()
        && a.sweep_ef.is_empty()
        && a.sweep_rerank.is_empty()
        && a.sweep_traversal.is_empty());
    let index = if swept {
        let (builds, points) = sweep(&a, &s, &store, index, &timer)?;
        out["sweep_builds"] = sweep_builds_json(&builds);
        out["sweep"] = sweep_json(&points);
        None
    } else {
        Some(index)
    };
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
    if !(a.keep || a.resume) {
        std::fs::remove_dir_all(&s.db).with_context(|| format!("removing {}", s.db.display()))?;
    } else if s.temp_db {
        say(format_args!("store kept at {}", s.db.display()));
    }

    if let Some(path) = &a.out {
        std::fs::write(path, serde_json::to_string_pretty(&out)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        outln!("{out}");
    } else {
        print_table(&out, &rows);
        print_sweep(&out);
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the arguments and derives the store config, index parameters and store path.
pub(super) fn setup(a: &LookupArgs) -> Result<Setup> {
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
    params.quantization = a.quantization.to_index();
    params.rerank = a.rerank;
    let (db, temp_db) = match &a.db {
        Some(p) => (p.clone(), false),
        None => (
            std::env::temp_dir().join(format!("mome-bench-lookup-{}", std::process::id())),
            true,
        ),
    };
    ensure!(
        !a.resume || !temp_db,
        "--resume needs --db (the store to create or to continue)"
    );
    if !a.resume && holds_files(&db)? {
        bail!(
            "{} exists and is not empty; the benchmark creates a new store (--resume continues one)",
            db.display()
        );
    }
    let threads = rayon::current_num_threads();
    let machine = machine();
    say(format_args!(
            "mome bench lookup: {} experts, key_dim {dim}, d_model {d_model}, rank {}, layers {layer_ids:?}, \
             top-K {}, M {} efC {} ef {} {} re-rank {}, {threads} threads; usearch {}; {}",
            a.experts,
            a.rank,
            a.candidates,
            params.connectivity,
            params.expansion_add,
            params.expansion_search,
            a.quantization.name(),
            params.rerank,
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
pub(super) fn exact_top10(
    keys: &[f32],
    queries: &[f32],
    dim: usize,
    sample: usize,
) -> Result<Vec<Vec<u64>>> {
    // The exact index holds a copy of its keys: at 10M experts one block at a time, the
    // per-block top-10s merged in the flat index's own order (score, then id).
    let mut best: Vec<Vec<mome::Hit>> = vec![Vec::new(); sample.min(queries.len() / dim.max(1))];
    for (b, block) in keys.chunks(dim * EXACT_BLOCK_ROWS).enumerate() {
        let flat = FlatIndex::new(dim);
        let first = (b * EXACT_BLOCK_ROWS) as u64 + 1;
        for (i, k) in block.chunks_exact(dim).enumerate() {
            flat.add(first + i as u64, k)?;
        }
        best.par_iter_mut()
            .zip(queries.par_chunks_exact(dim))
            .try_for_each(|(best, q)| -> mome::IndexResult<()> {
                best.extend(flat.search(q, 10)?);
                best.sort_by(|x, y| y.score.total_cmp(&x.score).then(x.id.cmp(&y.id)));
                best.truncate(10);
                Ok(())
            })?;
    }
    Ok(best
        .into_iter()
        .map(|hits| hits.iter().map(|h| h.id).collect())
        .collect())
}

/// Keys per exact-index block in [`exact_top10`].
const EXACT_BLOCK_ROWS: usize = 1 << 20;

/// Builds raw usearch with the engine's parameters on the same keys and times it.
///
/// It is built, timed and dropped before the engine's store and index exist, so the
/// engine's measurements run with one index in memory (as a deployment would) and the
/// page cache left to its shards.
pub(super) fn time_raw_usearch(
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
        qps: None,
    });
    let (batch, batch_qps) = timer.batched(&|c| {
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
        qps: Some(batch_qps),
    });
    Ok(RawFigures {
        build_s,
        single,
        recall,
        batch,
        batch_qps,
    })
}

/// Ingests the experts durably into a new store (group commits of `--ingest-batch`).
/// Returns the store, the ingest's wall time and the insert rate.
pub(super) fn ingest(a: &LookupArgs, s: &Setup, keys: &[f32]) -> Result<(Arc<Store>, f64, f64)> {
    let store = Arc::new(
        Store::create(&s.db, s.cfg.clone())
            .with_context(|| format!("creating {}", s.db.display()))?,
    );
    store.set_progress(crate::progress::terminal());
    let pool = s.weight_pool();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let pb = crate::progress::bar(a.experts as u64, "ingest");
    let mut insert_time = Duration::ZERO;
    let t_ingest = Instant::now();
    for chunk in keys.chunks(s.dim * a.ingest_batch.max(1)) {
        let batch = new_experts(s, chunk, &pool, &mut rng);
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

/// The experts of `keys` (rows of `s.dim`), with weights sliced from `pool`.
fn new_experts(s: &Setup, keys: &[f32], pool: &[f16], rng: &mut impl Rng) -> Vec<NewExpert> {
    let per_matrix = s.per_matrix();
    keys.chunks_exact(s.dim)
        .map(|k| NewExpert {
            key: k.iter().map(|&x| f16::from_f32(x)).collect(),
            layers: s
                .layer_ids
                .iter()
                .map(|_| AdapterPair {
                    a: slice_of(pool, per_matrix, rng),
                    b: slice_of(pool, per_matrix, rng),
                })
                .collect(),
            provenance: Provenance::text("bench lookup"),
        })
        .collect()
}

/// `--resume`: creates the store at `--db` or continues the one there, inserting the
/// experts it does not hold yet through the index (store and graph per batch, as a live
/// deployment grows) and saving the index every `--save-every` experts. A killed run
/// loses at most the experts since the last save from the index — the next run loads
/// the saved index and replays the store's later commits — and nothing from the store.
pub(super) fn resumable_build(
    a: &LookupArgs,
    s: &Setup,
    keys: &[f32],
) -> Result<(Arc<Store>, ExpertIndex, BuildFigures)> {
    let t_open = Instant::now();
    let fresh = !holds_files(&s.db)?;
    let store = if fresh {
        Store::create(&s.db, s.cfg.clone())
            .with_context(|| format!("creating {}", s.db.display()))?
    } else {
        Store::open_with(&s.db, &s.cfg).with_context(|| {
            format!(
                "opening {} to resume (it must have been made by --resume with the same shape)",
                s.db.display()
            )
        })?
    };
    let store = Arc::new(store);
    store.set_progress(crate::progress::terminal());
    let held = resume_point_matches(&store, keys, s.dim, a.experts)?;
    let index = ExpertIndex::open_with(store.clone(), s.params)?;
    ensure!(
        index.len() as u64 == held,
        "index holds {} keys, store {held}",
        index.len()
    );
    say(format_args!(
        "{} {}: {held} experts held, index {:?} in {:.1}s",
        if fresh { "created" } else { "resumed" },
        s.db.display(),
        index.opened_from(),
        t_open.elapsed().as_secs_f64()
    ));

    let pool = s.weight_pool();
    // Seeded by the resume point: a resumed run draws other weights than an unbroken
    // one would, which no figure depends on.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3 ^ held);
    let pb = crate::progress::bar(a.experts as u64, "ingest+index");
    pb.set_position(held);
    let rest = &keys[held as usize * s.dim..];
    let save_every = a.save_every.max(1) as u64;
    let (mut since_save, mut added) = (0u64, 0u64);
    let t = Instant::now();
    for chunk in rest.chunks(s.dim * a.ingest_batch.max(1)) {
        let batch = new_experts(s, chunk, &pool, &mut rng);
        let n = batch.len() as u64;
        index.insert_batch(batch)?;
        pb.inc(n);
        (since_save, added) = (since_save + n, added + n);
        if since_save >= save_every {
            index.save()?;
            since_save = 0;
            let rate = added as f64 / t.elapsed().as_secs_f64();
            say(format_args!(
                "checkpoint: {} of {} experts stored and indexed ({rate:.0} experts/s this run, eta {:.0}s)",
                held + added,
                a.experts,
                (a.experts as u64 - held - added) as f64 / rate.max(1e-9)
            ));
        }
    }
    index.save()?;
    pb.finish_and_clear();
    let build_s = t.elapsed().as_secs_f64();
    let per_s = if added > 0 {
        added as f64 / build_s
    } else {
        f64::NAN
    };
    say(format_args!(
        "stored and indexed {added} experts in {build_s:.1}s ({per_s:.0} experts/s, store + index)"
    ));
    Ok((
        store,
        index,
        BuildFigures {
            ingest_s: build_s,
            insert_per_s: per_s,
            index_build_s: build_s,
            resumed_from: Some(held),
        },
    ))
}

/// A store is continued only where this run would have left it: ids 1..=held with
/// nothing deleted, at most `experts` of them, and the last one's key the one this
/// run generates for that row (same --clusters, --key-dim, generator). Returns `held`.
fn resume_point_matches(store: &Store, keys: &[f32], dim: usize, experts: usize) -> Result<u64> {
    let held = store.len();
    ensure!(
        held <= experts as u64,
        "the store holds {held} experts, more than --experts {experts}"
    );
    ensure!(
        store.next_id() == held + 1,
        "the store's ids are not 1..={held} (next id {}): not a store this benchmark made",
        store.next_id()
    );
    if held == 0 {
        return Ok(0);
    }
    let row = &keys[(held as usize - 1) * dim..held as usize * dim];
    let stored = store.get(held)?;
    let same = stored
        .key()
        .iter()
        .zip(row)
        .all(|(k, &x)| k.to_bits() == f16::from_f32(x).to_bits());
    ensure!(
        same,
        "expert {held}'s key is not the one this run generates for it: \
         the store was made with other --clusters or --key-dim"
    );
    Ok(held)
}

/// Builds the index from the store (the rebuild path an operator gets) and saves it.
pub(super) fn build_index(
    a: &LookupArgs,
    s: &Setup,
    store: &Arc<Store>,
) -> Result<(ExpertIndex, f64)> {
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
pub(super) fn time_engine(
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
    let system = engine_system(&index.params());
    let mut row = |path: &'static str, lat: Lat, recall: Option<f64>, qps: Option<f64>| {
        rows.push(Row {
            system: system.clone(),
            path,
            lat,
            recall,
            qps,
        })
    };
    let (ids, _) = timer.single(&|q| Ok(index.search(q, k)?.iter().map(|h| h.id).collect()))?;
    row("index search top-K (ids only)", ids, None, None);
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
        None,
    );
    let (verified, _) = timer.single(&views_only)?;
    row(
        "search top-K + resolve weight views (records already verified)",
        verified,
        None,
        None,
    );
    let background = time_background_verify(store, index, timer, k)?;
    row(
        "search top-K + resolve, first touch while background verification runs",
        background.during,
        None,
        None,
    );
    row(
        "search top-K + resolve, first touch after background verification",
        background.after,
        None,
        None,
    );
    let (touch_lat, _) = timer.single(&|q| {
        let (ids, views) = resolve(q)?;
        std::hint::black_box(touch(&views));
        Ok(ids)
    })?;
    row("… + read every weight byte", touch_lat, None, None);
    let (batch, batch_qps) = timer.batched(&|c| batch_resolve(store, index, c, k))?;
    row(
        "batched search + resolve, per query",
        batch,
        None,
        Some(batch_qps),
    );
    Ok(EngineFigures {
        ids,
        first_touch,
        recall,
        verified,
        touch: touch_lat,
        batch,
        batch_qps,
        background,
    })
}

/// First touch with the verification moved off the lookup path: a fresh read-only
/// handle (its own mapping, nothing verified) resolves the index's answers while its
/// background pass runs; a second fresh handle is timed after its pass finished.
fn time_background_verify(
    store: &Store,
    index: &ExpertIndex,
    timer: &Timer,
    k: usize,
) -> Result<BackgroundFigures> {
    let resolve_in = |fresh: &Store, q: &[f32]| -> Result<Vec<u64>> {
        let ids: Vec<u64> = index.search(q, k)?.iter().map(|h| h.id).collect();
        std::hint::black_box(fresh.get_many(&ids)?);
        Ok(ids)
    };
    let policy = mome::BackgroundVerifyPolicy::unthrottled();
    let fresh = Arc::new(Store::open_read_only(store.dir())?);
    let pass = fresh.verify_in_background(policy);
    let (during, _) = timer.single(&|q| resolve_in(&fresh, q))?;
    let checked_during = pass.status().records_checked;
    let done = pass.wait();
    ensure!(
        done.problems.is_empty(),
        "background verification found corrupt records: {:?}",
        done.problems
    );
    drop(fresh);
    let fresh = Arc::new(Store::open_read_only(store.dir())?);
    let done = fresh.verify_in_background(policy).wait();
    let (after, _) = timer.single(&|q| resolve_in(&fresh, q))?;
    say(format_args!(
        "background verification: {} records ({:.2} GB) in {:.2}s; {checked_during} checked while the first queries ran",
        done.records_checked,
        done.bytes_checked as f64 / 1e9,
        done.elapsed.as_secs_f64()
    ));
    Ok(BackgroundFigures {
        during,
        checked_during,
        after,
        pass_s: done.elapsed.as_secs_f64(),
        pass_bytes: done.bytes_checked,
    })
}

/// The engine's batched full path: `search_batch` (queries in parallel on the rayon
/// pool), then the K views of each query resolved on the same pool. Returns the number
/// of queries.
fn batch_resolve(store: &Store, index: &ExpertIndex, c: &[f32], k: usize) -> Result<usize> {
    let hits = index.search_batch(c, k)?;
    hits.par_iter().try_for_each(|h| -> Result<()> {
        let ids: Vec<u64> = h.iter().map(|h| h.id).collect();
        std::hint::black_box(store.get_many(&ids)?);
        Ok(())
    })?;
    Ok(hits.len())
}

/// How the table names the engine with these parameters.
fn engine_system(p: &IndexParams) -> String {
    let q = match p.quantization {
        mome::Quantization::I8 => "i8",
        _ => "f16",
    };
    let own = if p.own_search && q == "i8" {
        ", own search"
    } else {
        ""
    };
    if p.rerank > 0 {
        format!("mome ({q}{own}, re-rank {})", p.rerank)
    } else {
        format!("mome ({q}{own})")
    }
}

/// One point of the sweep: the engine's full path (search + resolve K views, records
/// already verified: one untimed pass over the queries first) at one storage, ef and
/// re-rank width.
pub(super) struct SweepPoint {
    pub(super) quantization: &'static str,
    pub(super) traversal: &'static str,
    pub(super) ef: usize,
    pub(super) rerank: usize,
    pub(super) lat: Lat,
    pub(super) recall: f64,
    pub(super) batch_qps: f64,
}

/// Index build figures of one storage in the sweep.
pub(super) struct SweepBuild {
    pub(super) quantization: &'static str,
    pub(super) build_s: f64,
    pub(super) index_mib: f64,
}

/// The sweep (`--sweep-quantization`, `--sweep-ef`, `--sweep-rerank`): for each storage
/// an index rebuilt from the store (the main one when it has that storage), then every
/// ef × re-rank width on it. Consumes the main index (one index in memory at a time).
pub(super) fn sweep(
    a: &LookupArgs,
    s: &Setup,
    store: &Arc<Store>,
    main: ExpertIndex,
    timer: &Timer,
) -> Result<(Vec<SweepBuild>, Vec<SweepPoint>)> {
    let k = a.candidates;
    let quants = if a.sweep_quantization.is_empty() {
        vec![a.quantization]
    } else {
        a.sweep_quantization.clone()
    };
    let efs = if a.sweep_ef.is_empty() {
        vec![s.params.expansion_search]
    } else {
        a.sweep_ef.clone()
    };
    let reranks = if a.sweep_rerank.is_empty() {
        vec![s.params.rerank]
    } else {
        a.sweep_rerank.clone()
    };
    // Without --sweep-traversal each index searches as its parameters say.
    let traversals: Vec<Option<Traversal>> = if a.sweep_traversal.is_empty() {
        vec![None]
    } else {
        a.sweep_traversal.iter().copied().map(Some).collect()
    };
    let (mut builds, mut points) = (Vec::new(), Vec::new());
    let mut current = Some(main);
    for q in quants {
        let index = match current.take() {
            Some(i) if i.params().quantization == q.to_index() => i,
            other => {
                drop(other);
                let mut p = s.params;
                p.quantization = q.to_index();
                let t = Instant::now();
                let i = ExpertIndex::open_with(store.clone(), p)?;
                let build_s = t.elapsed().as_secs_f64();
                say(format_args!(
                    "sweep: {} index built in {build_s:.1}s",
                    q.name()
                ));
                builds.push(SweepBuild {
                    quantization: q.name(),
                    build_s,
                    index_mib: i.memory_bytes() as f64 / (1 << 20) as f64,
                });
                i
            }
        };
        let configured = index.params().own_search;
        for &asked in &traversals {
            if asked == Some(Traversal::Own) && q != Quant::I8 {
                say(format_args!(
                    "sweep: {} has no own traversal (i8 only); skipped",
                    q.name()
                ));
                continue;
            }
            let t = Instant::now();
            let own = match asked {
                Some(trav) => {
                    let own = index.set_own_traversal(trav == Traversal::Own)?;
                    ensure!(
                        own == (trav == Traversal::Own),
                        "the own traversal did not turn {}",
                        if own { "off" } else { "on" }
                    );
                    own
                }
                None => index.own_search_active(),
            };
            let trav = if own {
                Traversal::Own
            } else {
                Traversal::Usearch
            };
            if own && asked.is_some() {
                say(format_args!(
                    "sweep: {} graph copied for the own traversal in {:.1}s ({:.0} MiB with usearch's)",
                    q.name(),
                    t.elapsed().as_secs_f64(),
                    index.memory_bytes() as f64 / (1 << 20) as f64
                ));
            }
            for &ef in &efs {
                for &rerank in &reranks {
                    index.set_search(ef, rerank)?;
                    let full = |qv: &[f32]| -> Result<Vec<u64>> {
                        let ids: Vec<u64> = index.search(qv, k)?.iter().map(|h| h.id).collect();
                        std::hint::black_box(store.get_many(&ids)?);
                        Ok(ids)
                    };
                    for qv in &timer.qs {
                        full(qv)?;
                    }
                    let (lat, recall) = timer.single(&full)?;
                    let (_, batch_qps) = timer.batched(&|c| batch_resolve(store, &index, c, k))?;
                    say(format_args!(
                    "sweep: {} {} ef {ef} re-rank {rerank}: p50 {:.0} µs, p99 {:.0} µs, recall@10 {recall:.4}, {batch_qps:.0} q/s batched",
                    q.name(),
                    trav.name(),
                    lat.p50,
                    lat.p99
                ));
                    points.push(SweepPoint {
                        quantization: q.name(),
                        traversal: trav.name(),
                        ef,
                        rerank,
                        lat,
                        recall,
                        batch_qps,
                    });
                }
            }
        }
        index.set_own_traversal(configured)?;
        current = Some(index);
    }
    Ok((builds, points))
}

/// Every value rounded to f16 and back: the store keeps f16 keys, and the peers read the
/// f16 export, so all systems index exactly these vectors.
pub(super) fn round_f16(mut v: Vec<f32>) -> Vec<f32> {
    v.par_iter_mut()
        .for_each(|x| *x = f16::from_f32(*x).to_f32());
    v
}

/// Random fp16 values (N(0, 0.02²)-like) that experts' matrices are sliced from: copying
/// from a pool keeps generation far below the cost of the durable writes.
pub(super) fn weight_pool(len: usize) -> Vec<f16> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..len)
        .map(|_| f16::from_f32((rng.random::<f32>() - 0.5) * 0.07))
        .collect()
}

pub(super) fn slice_of(pool: &[f16], len: usize, rng: &mut impl Rng) -> Vec<f16> {
    let start = rng.random_range(0..=pool.len() - len);
    pool[start..start + len].to_vec()
}

/// Reads every key and weight byte of the views.
pub(super) fn touch(views: &[mome::ExpertRef]) -> u64 {
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
