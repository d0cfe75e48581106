//! `mome cluster bench`: lookup latency of the fan-out path (router → nodes → merge)
//! against one embedded store holding the same experts, with 1, 2 and 3 nodes, each
//! cluster started on 127.0.0.1 by the testbed (3 etcd members, SeaweedFS with two
//! volume servers, the nodes). Everything, the benchmark included, shares this
//! machine's cores.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
use mome::{ExpertIndex, FlatIndex, IndexKind, IndexParams, KeyIndex};
use mome_cluster::testbed::{Testbed, TestbedOptions};
use mome_cluster::{Client, ClusterConfig};
use serde_json::json;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Experts.
    #[arg(long, default_value_t = 100_000)]
    experts: usize,
    /// Node counts to run, comma-separated.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Shards.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Replicas (capped at the node count).
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// Key length (and d_model).
    #[arg(long, default_value_t = 576)]
    key_dim: u32,
    /// Adapter rank (one adapted layer): weights only travel on writes here.
    #[arg(long, default_value_t = 1)]
    rank: u32,
    /// Timed single queries per configuration.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// Results per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Key clusters of the synthetic data.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Experts per insert call.
    #[arg(long, default_value_t = 2000)]
    ingest_batch: usize,
    /// Queries whose recall@k is checked against the exact top-k.
    #[arg(long, default_value_t = 200)]
    recall_sample: usize,
    /// Concurrent searches of the throughput run.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Write the JSON report here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print only the JSON report.
    #[arg(long)]
    json: bool,
}

fn round_f16(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| f16::from_f32(x).to_f32()).collect()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn stats(mut lat: Vec<Duration>) -> serde_json::Value {
    lat.sort();
    json!({"p50_us": pct(&lat, 0.5), "p99_us": pct(&lat, 0.99), "p999_us": pct(&lat, 0.999)})
}

fn recall(truth: &[Vec<u64>], got: &[Vec<u64>]) -> f64 {
    let mut hit = 0usize;
    let mut all = 0usize;
    for (t, g) in truth.iter().zip(got) {
        all += t.len();
        hit += t.iter().filter(|id| g.contains(id)).count();
    }
    if all == 0 {
        1.0
    } else {
        hit as f64 / all as f64
    }
}

struct Data {
    config: StoreConfig,
    keys: Vec<f32>,
    queries: Vec<f32>,
    pool: Vec<f16>,
    dim: usize,
}

impl Data {
    fn expert(&self, i: usize) -> NewExpert {
        let d = self.dim;
        let mat = (self.config.rank * self.config.d_model) as usize;
        let off = (i * 7919) % (self.pool.len() - 2 * mat);
        NewExpert {
            key: self.keys[i * d..(i + 1) * d]
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect(),
            layers: vec![AdapterPair {
                a: self.pool[off..off + mat].to_vec(),
                b: self.pool[off + mat..off + 2 * mat].to_vec(),
            }],
            provenance: Provenance::text(format!("bench {i}")),
        }
    }

    fn query(&self, j: usize) -> &[f32] {
        &self.queries[j * self.dim..(j + 1) * self.dim]
    }
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let dim = a.key_dim as usize;
    let config = StoreConfig::new(a.key_dim, a.key_dim, a.rank, vec![0]);
    let t = Instant::now();
    let data = Data {
        keys: round_f16(mome::synth::clustered_keys(a.experts, dim, a.clusters, 1)),
        queries: round_f16(mome::synth::clustered_keys(a.queries, dim, a.clusters, 2)),
        pool: mome::synth::seeded_values(3, 1 << 20),
        config: config.clone(),
        dim,
    };
    let sample = a.recall_sample.min(a.queries);
    let exact = FlatIndex::new(dim);
    for i in 0..a.experts {
        exact.add(i as u64, &data.keys[i * dim..(i + 1) * dim])?;
    }
    let truth: Vec<Vec<u64>> = (0..sample)
        .map(|j| {
            exact
                .search(data.query(j), a.k)
                .map(|h| h.iter().map(|x| x.id).collect())
        })
        .collect::<mome::IndexResult<_>>()?;
    drop(exact);
    eprintln!(
        "data and exact top-{} in {:.1}s",
        a.k,
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    rows.push(embedded(&a, &data, &truth)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("runtime")?;
    for &n in &a.nodes {
        rows.push(rt.block_on(cluster(&a, &data, &truth, n))?);
    }
    let report = json!({
        "experts": a.experts,
        "key_dim": a.key_dim,
        "rank": a.rank,
        "shards": a.shards,
        "k": a.k,
        "queries": a.queries,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "note": "every node, etcd member, SeaweedFS server and the benchmark share these cores",
        "rows": rows,
    });
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if a.json {
        outln!("{report}");
    } else {
        outln!(
            "| system | nodes | ingest exp/s | p50 µs | p99 µs | p99.9 µs | qps ({} conc.) | recall@{} | hedged |",
            a.concurrency, a.k
        );
        outln!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            outln!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.3} | {} |",
                r["system"].as_str().unwrap_or(""),
                r["nodes"],
                r["ingest_per_s"].as_f64().unwrap_or(0.0),
                r["latency"]["p50_us"].as_f64().unwrap_or(0.0),
                r["latency"]["p99_us"].as_f64().unwrap_or(0.0),
                r["latency"]["p999_us"].as_f64().unwrap_or(0.0),
                r["qps"].as_f64().unwrap_or(0.0),
                r["recall"].as_f64().unwrap_or(0.0),
                r["hedged"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One embedded store + HNSW index holding every expert, searched in-process.
fn embedded(a: &BenchArgs, data: &Data, truth: &[Vec<u64>]) -> Result<serde_json::Value> {
    let dir = std::env::temp_dir().join(format!("mome-cluster-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Store::create(&dir, data.config.clone())?);
    let index = ExpertIndex::open_with(store, IndexParams::default())?;
    let t = Instant::now();
    for start in (0..a.experts).step_by(a.ingest_batch) {
        let end = (start + a.ingest_batch).min(a.experts);
        index.insert_batch((start..end).map(|i| data.expert(i)).collect())?;
    }
    let ingest = a.experts as f64 / t.elapsed().as_secs_f64();
    for j in 0..100.min(a.queries) {
        index.search(data.query(j), a.k)?;
    }
    let mut lat = Vec::with_capacity(a.queries);
    let mut got = Vec::new();
    for j in 0..a.queries {
        let t = Instant::now();
        let hits = index.search(data.query(j), a.k)?;
        lat.push(t.elapsed());
        if j < truth.len() {
            // Local ids are 1-based insertion order: id i + 1 is expert i.
            got.push(hits.iter().map(|h| h.id - 1).collect::<Vec<u64>>());
        }
    }
    let t = Instant::now();
    let per = a.queries.div_ceil(a.concurrency);
    std::thread::scope(|s| {
        for c in 0..a.concurrency {
            let index = &index;
            s.spawn(move || {
                for j in c * per..((c + 1) * per).min(a.queries) {
                    let _ = index.search(data.query(j), a.k);
                }
            });
        }
    });
    let qps = a.queries as f64 / t.elapsed().as_secs_f64();
    let row = json!({
        "system": "embedded store + HNSW (one process)",
        "nodes": 0,
        "ingest_per_s": ingest,
        "latency": stats(lat),
        "qps": qps,
        "recall": recall(truth, &got),
        "hedged": 0,
    });
    drop(index);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("embedded: {row}");
    Ok(row)
}

/// A testbed of `n` nodes, the experts inserted through the router, then searched.
async fn cluster(
    a: &BenchArgs,
    data: &Data,
    truth: &[Vec<u64>],
    n: usize,
) -> Result<serde_json::Value> {
    let mut cc = ClusterConfig::new(data.config.clone(), a.shards);
    cc.replicas = a.replicas.min(n as u32).max(1);
    cc.index = IndexKind::Hnsw;
    cc.lease_ttl_s = 5;
    cc.gc_grace_s = 60;
    // Bench batches are large: compaction of full shards is not what is measured here.
    cc.max_deltas = 1000;
    let ws = std::env::current_dir()?;
    let mut opts = TestbedOptions::new(std::env::current_exe()?, &ws, cc)?;
    opts.nodes = n;
    let t = Instant::now();
    let tb = tokio::task::spawn_blocking(move || Testbed::start(opts)).await??;
    eprintln!(
        "{n} node(s): testbed up in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let client = Client::connect(&tb.etcd_endpoints(), &tb.cluster).await?;
    let shards = a.shards;
    client
        .view()
        .wait_for(Duration::from_secs(120), "every shard owned", |s| {
            (0..shards).all(|sh| s.owners.contains_key(&sh))
        })
        .await?;
    let t = Instant::now();
    let mut ids = vec![0u64; a.experts];
    for start in (0..a.experts).step_by(a.ingest_batch) {
        let end = (start + a.ingest_batch).min(a.experts);
        let got = client
            .insert((start..end).map(|i| data.expert(i)).collect())
            .await?;
        ids[start..end].copy_from_slice(&got);
    }
    let ingest = a.experts as f64 / t.elapsed().as_secs_f64();
    // Every replica caught up with the last commit before timing reads.
    let replicas = client.config().replicas;
    let want: Vec<(u32, i64)> = client.session_revisions().into_iter().collect();
    let t_sync = Instant::now();
    loop {
        let st = client.node_status().await;
        let served = |s: u32, rev: i64| {
            st.iter()
                .filter_map(|(_, r)| r.as_ref().ok())
                .filter(|r| r.shards.iter().any(|x| x.shard == s && x.revision >= rev))
                .count()
        };
        if want
            .iter()
            .all(|&(s, rev)| served(s, rev) >= replicas as usize)
        {
            break;
        }
        anyhow::ensure!(
            t_sync.elapsed() < Duration::from_secs(600),
            "replicas did not catch up in 10 min"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let catch_up = t_sync.elapsed().as_secs_f64();
    // Baseline: one Status RPC round trip per node (no search).
    let mut rtt = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let st = client.node_status().await;
        rtt.push(t.elapsed() / st.len().max(1) as u32);
    }
    rtt.sort();
    let by_id: std::collections::HashMap<u64, u64> = ids
        .iter()
        .enumerate()
        .map(|(i, &g)| (g, i as u64))
        .collect();
    for j in 0..100.min(a.queries) {
        client.search(data.query(j), a.k).await?;
    }
    let mut lat = Vec::with_capacity(a.queries);
    let mut got = Vec::new();
    let mut hedged = 0;
    for j in 0..a.queries {
        let t = Instant::now();
        let r = client.search(data.query(j), a.k).await?;
        lat.push(t.elapsed());
        hedged += r.hedged;
        if j < truth.len() {
            got.push(
                r.hits
                    .iter()
                    .filter_map(|h| by_id.get(&h.id).copied())
                    .collect::<Vec<u64>>(),
            );
        }
    }
    let t = Instant::now();
    let per = a.queries.div_ceil(a.concurrency);
    let mut tasks = Vec::new();
    for c in 0..a.concurrency {
        let client = client.clone();
        let qs: Vec<Vec<f32>> = (c * per..((c + 1) * per).min(a.queries))
            .map(|j| data.query(j).to_vec())
            .collect();
        let k = a.k;
        tasks.push(tokio::spawn(async move {
            for q in qs {
                client.search(&q, k).await?;
            }
            Ok::<_, mome_cluster::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let qps = a.queries as f64 / t.elapsed().as_secs_f64();
    let row = json!({
        "system": "cluster: router fan-out over gRPC, per-shard HNSW on the nodes",
        "nodes": n,
        "replicas": replicas,
        "ingest_per_s": ingest,
        "replica_catch_up_s": catch_up,
        "status_rpc_p50_us": pct(&rtt, 0.5),
        "latency": stats(lat),
        "qps": qps,
        "recall": recall(truth, &got),
        "hedged": hedged,
    });
    eprintln!("{n} node(s): {row}");
    drop(client);
    tokio::task::spawn_blocking(move || drop(tb)).await?;
    Ok(row)
}
