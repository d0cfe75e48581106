//! Timing of the router's weight fetch (`Client::fetch`) on a testbed on 127.0.0.1, for
//! docs/BENCHMARKS.md §Cluster. Not a check: it prints figures and asserts only that
//! every fetch returns what it asked for. Ignored by default (it needs the `mome`
//! binary: `$MOME_BIN`, else `target/release/mome`); run with
//!
//! ```text
//! cargo build --release -p mome-cli --bin mome
//! cargo test --release -p mome-cluster --test fetch_timing -- --ignored --nocapture
//! ```
//!
//! Shape: the reference record (d_model 576, key_dim 576, rank 8, layers 28 and 29:
//! 38 KB of weights), 32 shards on 2 replicas, 3 nodes, 1,024 experts. What an `ask`
//! fetches: its `k_candidates` = 32 hits, here 32 ids drawn at random (≈ 20 distinct
//! shards of 32). Timed: 200 fetches of 1 id in a row, then 200 rounds of a 32-id
//! fetch, a 1-id fetch, and a search k = 32 with the fetch of its hits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use half::f16;
use mome::{AdapterPair, IndexKind, NewExpert, Provenance, StoreConfig};
use mome_cluster::testbed::{Testbed, TestbedOptions};
use mome_cluster::{shard_of, Client, ClusterConfig};
use rand::{Rng, SeedableRng};

const D_MODEL: u32 = 576;
const RANK: u32 = 8;
const SHARDS: u32 = 32;
const EXPERTS: usize = 1_024;
const CANDIDATES: usize = 32;
const ROUNDS: usize = 200;

fn mome_bin() -> PathBuf {
    std::env::var_os("MOME_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/mome"),
        PathBuf::from,
    )
}

fn experts(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<NewExpert> {
    let mut v = |len: u32| {
        (0..len)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
            .collect::<Vec<_>>()
    };
    (0..n)
        .map(|i| NewExpert {
            key: v(D_MODEL),
            layers: (0..2)
                .map(|_| AdapterPair {
                    a: v(RANK * D_MODEL),
                    b: v(RANK * D_MODEL),
                })
                .collect(),
            provenance: Provenance::fact(format!("prompt {i}"), format!("answer {i}")),
        })
        .collect()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn report(label: &str, mut lat: Vec<Duration>) {
    lat.sort();
    let mean = lat.iter().sum::<Duration>().as_secs_f64() * 1e3 / lat.len() as f64;
    println!(
        "{label}: n {} p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms mean {:.2} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        mean
    );
}

#[test]
#[ignore = "timing for docs/BENCHMARKS.md; needs the mome binary, etcd and SeaweedFS"]
fn fetch_timing() {
    let store = StoreConfig::new(D_MODEL, D_MODEL, RANK, vec![28, 29]).with_shard_size(64 << 20);
    let mut config = ClusterConfig::new(store, SHARDS);
    config.index = IndexKind::Flat;
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut opts = TestbedOptions::new(mome_bin(), &ws, config).unwrap_or_else(|e| panic!("{e}"));
    opts.nodes = 3;
    let tb = Testbed::start(opts).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = Client::connect(&tb.etcd_endpoints(), &tb.cluster)
            .await
            .expect("connect");
        c.view()
            .wait_for(Duration::from_secs(60), "every shard owned", |s| {
                (0..SHARDS).all(|sh| s.owners.contains_key(&sh))
            })
            .await
            .expect("owned");
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        let all = experts(EXPERTS, &mut rng);
        let mut ids = Vec::new();
        let t = Instant::now();
        for batch in all.chunks(256) {
            ids.extend(c.insert(batch.to_vec()).await.expect("insert"));
        }
        println!("inserted {EXPERTS} experts in {:?}", t.elapsed());
        // Every replica has applied every shard (the fetches below then never wait).
        let shards = SHARDS;
        c.view()
            .wait_for(Duration::from_secs(120), "every replica ready", |s| {
                (0..shards).all(|sh| {
                    let rev = s.manifest_revision(sh);
                    rev > 0
                        && s.placement(sh, 2)
                            .iter()
                            .all(|n| s.readies.contains(&(sh, n.to_string())))
                })
            })
            .await
            .expect("ready");

        let draw = |rng: &mut rand::rngs::StdRng| -> Vec<u64> {
            let mut pick = BTreeSet::new();
            while pick.len() < CANDIDATES {
                pick.insert(ids[rng.random_range(0..ids.len())]);
            }
            pick.into_iter().collect()
        };
        for _ in 0..20 {
            let want = draw(&mut rng);
            assert_eq!(c.fetch(&want).await.expect("fetch").len(), CANDIDATES);
        }
        // A 1-id fetch on its own, 200 in a row (the mixed rounds below time one right
        // after a 32-id fetch).
        let mut alone = Vec::new();
        for _ in 0..ROUNDS {
            let want = draw(&mut rng);
            let t = Instant::now();
            assert_eq!(c.fetch(&want[..1]).await.expect("fetch").len(), 1);
            alone.push(t.elapsed());
        }
        let mut one = Vec::new();
        let mut many = Vec::new();
        let mut retrieval = Vec::new();
        let mut distinct = 0;
        for _ in 0..ROUNDS {
            let want = draw(&mut rng);
            distinct += want
                .iter()
                .map(|id| shard_of(*id, SHARDS))
                .collect::<BTreeSet<_>>()
                .len();
            let t = Instant::now();
            let got = c.fetch(&want).await.expect("fetch");
            many.push(t.elapsed());
            assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), want);
            let t = Instant::now();
            assert_eq!(c.fetch(&want[..1]).await.expect("fetch").len(), 1);
            one.push(t.elapsed());
            // What `ask` does before its rule runs: search k = 32, fetch the hits.
            let q: Vec<f32> = (0..D_MODEL).map(|_| rng.random_range(-1.0..1.0)).collect();
            let t = Instant::now();
            let hits = c.search(&q, CANDIDATES).await.expect("search");
            let hit_ids: Vec<u64> = hits.hits.iter().map(|h| h.id).collect();
            let got = c.fetch(&hit_ids).await.expect("fetch");
            retrieval.push(t.elapsed());
            assert_eq!(got.len(), CANDIDATES);
        }
        println!(
            "{CANDIDATES} candidates over {:.1} distinct shards on average",
            distinct as f64 / ROUNDS as f64
        );
        report("fetch of 1 expert, 200 in a row", alone);
        report("fetch of 1 expert, after each 32", one);
        report(&format!("fetch of {CANDIDATES} experts"), many);
        report(
            &format!("search k {CANDIDATES} + fetch of the hits"),
            retrieval,
        );
    });
    drop(tb);
}
