//! Index benchmark: lookup latency (pooled query → top-K ids → resolved weight views) and
//! recall@10 of the engine, next to raw usearch with the same parameters on the same
//! keys in the same run (the ratio is the engine's overhead).
//!
//! `cargo bench --bench index -- [--experts N] [--queries Q] [--k K] [--ef EF] [--dir PATH]`

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use half::f16;
use mome::index::{ExpertIndex, FlatIndex, IndexParams, KeyIndex};
use mome::store::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let v: Vec<String> = std::env::args().collect();
    v.iter()
        .position(|a| a == name)
        .and_then(|i| v.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn gauss(r: &mut rand::rngs::SmallRng) -> f32 {
    let u1: f32 = r.random_range(f32::EPSILON..1.0);
    let u2: f32 = r.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Clustered keys: 1000 centres, variation along a 16-dim subspace per cluster, small
/// noise (same model as the recall test; see tests/common).
fn keys(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let (clusters, sub) = (1000usize, 16usize);
    let mut layout = rand::rngs::SmallRng::seed_from_u64(77);
    let centres: Vec<f32> = (0..clusters * dim).map(|_| gauss(&mut layout)).collect();
    let bases: Vec<f32> = (0..clusters * dim * sub)
        .map(|_| 0.125 * gauss(&mut layout))
        .collect();
    (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut rng =
                rand::rngs::SmallRng::seed_from_u64(seed.wrapping_mul(1 << 40) ^ i as u64);
            let c = rng.random_range(0..clusters);
            let z: Vec<f32> = (0..sub).map(|_| gauss(&mut rng)).collect();
            let centre = centres[c * dim..(c + 1) * dim].to_vec();
            let basis = &bases[c * dim * sub..(c + 1) * dim * sub];
            (0..dim)
                .map(|d| {
                    let mut x = centre[d] + 0.05 * gauss(&mut rng);
                    for (j, zj) in z.iter().enumerate() {
                        x += basis[d * sub + j] * zj;
                    }
                    x
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn main() {
    let n: usize = arg("--experts", 100_000);
    let nq: usize = arg("--queries", 2000);
    let k_cand: usize = arg("--k", 32);
    let ef: usize = arg("--ef", IndexParams::default().expansion_search);
    let dim = 576usize;
    let base: std::path::PathBuf = arg(
        "--dir",
        std::env::temp_dir().join(format!("mome-bench-index-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&base);
    let mut params = IndexParams::default();
    params.expansion_search = ef;
    println!(
        "experts {n}, key_dim {dim}, top-K {k_cand}, {params:?}, usearch {}",
        usearch::version()
    );

    let t = Instant::now();
    let data = keys(n, dim, 1);
    let queries = keys(nq, dim, 2);
    println!("generated keys in {:.1}s", t.elapsed().as_secs_f64());

    // Engine: a store of small experts (d_model 64, rank 1, one layer: the weights are not
    // what this measures) with key_dim 576, indexed by ExpertIndex.
    let cfg = StoreConfig::new(64, dim as u32, 1, vec![0]);
    let store = Arc::new(Store::create(&base, cfg).expect("store"));
    let index = ExpertIndex::open_with(store.clone(), params).expect("index");
    let t = Instant::now();
    let pb = mome::progress::bar(n as u64, "ingest");
    for (c, chunk) in data.chunks(dim * 1000).enumerate() {
        let batch: Vec<NewExpert> = chunk
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, k)| NewExpert {
                key: k.iter().map(|&x| f16::from_f32(x)).collect(),
                layers: vec![AdapterPair {
                    a: vec![f16::from_f32(0.01); 64],
                    b: vec![f16::from_f32((c * 1000 + i) as f32 * 1e-6); 64],
                }],
                provenance: Provenance::text("bench"),
            })
            .collect();
        let m = batch.len() as u64;
        index.insert_batch(batch).expect("insert");
        pb.inc(m);
    }
    pb.finish_and_clear();
    let engine_ingest = t.elapsed();

    // Raw usearch, same parameters, same keys.
    let raw = usearch::Index::new(&usearch::IndexOptions {
        dimensions: dim,
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F16,
        connectivity: params.connectivity,
        expansion_add: params.expansion_add,
        expansion_search: params.expansion_search,
        multi: false,
    })
    .expect("usearch");
    raw.reserve_capacity_and_threads(n, 8).expect("reserve");
    let t = Instant::now();
    data.par_chunks_exact(dim)
        .enumerate()
        .for_each(|(i, k)| raw.add(i as u64 + 1, k).expect("add"));
    let raw_build = t.elapsed();

    // Exact answers for recall, on a sample of queries.
    let sample = nq.min(300);
    let flat = FlatIndex::new(dim);
    for (i, k) in data.chunks_exact(dim).enumerate() {
        flat.add(i as u64 + 1, k).expect("flat add");
    }
    let truth: Vec<HashSet<u64>> = queries
        .par_chunks_exact(dim)
        .take(sample)
        .map(|q| {
            flat.search(q, 10)
                .expect("flat")
                .iter()
                .map(|h| h.id)
                .collect()
        })
        .collect();
    drop(flat);

    let mut rows = Vec::new();
    let mut measure = |name: &str, f: &dyn Fn(&[f32]) -> Vec<u64>| {
        // Warm-up pass, then timed pass.
        for q in queries.chunks_exact(dim).take(200) {
            std::hint::black_box(f(q));
        }
        let mut lat = Vec::with_capacity(nq);
        let mut hit = 0usize;
        for (i, q) in queries.chunks_exact(dim).enumerate() {
            let t = Instant::now();
            let ids = f(q);
            lat.push(t.elapsed());
            if i < sample {
                hit += ids
                    .iter()
                    .take(10)
                    .filter(|id| truth[i].contains(id))
                    .count();
            }
        }
        lat.sort_unstable();
        let recall = hit as f64 / (sample * 10) as f64;
        rows.push((
            name.to_string(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            recall,
        ));
    };
    measure("raw usearch: search top-K", &|q| {
        raw.search(q, k_cand).expect("search").keys
    });
    measure("mome: search top-K", &|q| {
        index
            .search(q, k_cand)
            .expect("search")
            .iter()
            .map(|h| h.id)
            .collect()
    });
    measure("mome: search + resolve weight views", &|q| {
        let hits = index.search(q, k_cand).expect("search");
        let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
        let views = store.get_many(&ids).expect("resolve");
        std::hint::black_box(&views);
        ids
    });
    measure("mome: search + resolve + touch weights", &|q| {
        let hits = index.search(q, k_cand).expect("search");
        let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
        let views = store.get_many(&ids).expect("resolve");
        let mut s = 0u32;
        for v in &views {
            s = s.wrapping_add(
                v.a(0)
                    .iter()
                    .chain(v.b(0))
                    .map(|x| x.to_bits() as u32)
                    .sum::<u32>(),
            );
        }
        std::hint::black_box(s);
        ids
    });

    println!();
    println!(
        "ingest (durable store + index): {:.1}s ({:.0} experts/s); raw usearch build: {:.1}s; index memory {:.1} MiB",
        engine_ingest.as_secs_f64(),
        n as f64 / engine_ingest.as_secs_f64(),
        raw_build.as_secs_f64(),
        index.memory_bytes() as f64 / (1 << 20) as f64
    );
    println!();
    println!("| experts | path | p50 µs | p99 µs | p999 µs | recall@10 |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (name, p50, p99, p999, recall) in &rows {
        println!("| {n} | {name} | {p50:.1} | {p99:.1} | {p999:.1} | {recall:.4} |");
    }
    drop(index);
    drop(store);
    let _ = std::fs::remove_dir_all(&base);
}
