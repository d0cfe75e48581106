//! Helpers of the cluster tests: a testbed on 127.0.0.1 (3 etcd members, SeaweedFS
//! with 2 volume servers, 3 nodes), small experts, an exact oracle. Skipped when etcd or
//! SeaweedFS is missing, except under CI (which installs both: tools/cluster-setup.sh).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, StoreConfig};
use mome::{FlatIndex, IndexKind, KeyIndex};
use mome_cluster::testbed::{Testbed, TestbedOptions};
use mome_cluster::{Client, ClientOptions, ClusterConfig};
use rand::{Rng, SeedableRng};

pub const KEY_DIM: usize = 32;
pub const D_MODEL: usize = 32;
pub const RANK: usize = 2;

/// The small cluster of the tests: key_dim 32, rank 2, one layer, exact index, 8
/// shards on 2 replicas, 3 s leases, 12 s grace, compaction after 4 deltas.
pub fn small_config() -> ClusterConfig {
    let store = StoreConfig::new(D_MODEL as u32, KEY_DIM as u32, RANK as u32, vec![0])
        .with_shard_size(1 << 20);
    let mut c = ClusterConfig::new(store, 8);
    c.replicas = 2;
    c.lease_ttl_s = 3;
    c.gc_grace_s = 12;
    c.max_deltas = 4;
    c.index = IndexKind::Flat;
    c
}

/// Options for a testbed of `config`, or `None` (with a note) when etcd or weed is
/// missing outside CI.
pub fn options(config: ClusterConfig) -> Option<TestbedOptions> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match TestbedOptions::new(env!("CARGO_BIN_EXE_mome").into(), &ws, config) {
        Ok(o) => Some(o),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI without the cluster tools: {e}"
            );
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// Starts a testbed (panics with the logs' tails if it cannot).
pub fn start(opts: TestbedOptions) -> Testbed {
    Testbed::start(opts).unwrap_or_else(|e| panic!("{e}"))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A router with a short hedge (the nodes share two cores) and bounded deadlines.
pub async fn client(tb: &Testbed) -> Client {
    let mut o = ClientOptions::default();
    o.deadline = Duration::from_secs(40);
    Client::connect_with(&tb.etcd_endpoints(), &tb.cluster, o)
        .await
        .expect("connect client")
}

/// [`client`] once every shard is owned ([`wait_owned`], 60 s): where every test starts.
pub async fn owned_client(tb: &Testbed) -> Client {
    let c = client(tb).await;
    wait_owned(&c, Duration::from_secs(60)).await;
    c
}

/// Waits (bounded) until every shard has an owner among the live members and every
/// live member serves what its placement says.
pub async fn wait_owned(c: &Client, timeout: Duration) {
    let shards = c.config().shards;
    c.view()
        .wait_for(timeout, "every shard owned by a live member", |s| {
            (0..shards).all(|sh| {
                s.owners
                    .get(&sh)
                    .is_some_and(|o| s.nodes.contains_key(&o.info.node))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `n` random experts of the small shape; keys drawn from a seeded generator.
pub fn experts(n: usize, seed: u64) -> Vec<NewExpert> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut v = |len: usize| {
                (0..len)
                    .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                    .collect::<Vec<_>>()
            };
            let key = v(KEY_DIM);
            let a = v(RANK * D_MODEL);
            let b = v(RANK * D_MODEL);
            NewExpert {
                key,
                layers: vec![AdapterPair { a, b }],
                provenance: Provenance::fact(format!("prompt {seed}/{i}"), format!("answer {i}")),
            }
        })
        .collect()
}

pub fn key_f32(e: &NewExpert) -> Vec<f32> {
    e.key.iter().map(|x| x.to_f32()).collect()
}

/// Random query vectors.
pub fn queries(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..KEY_DIM).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

/// The exact oracle over everything acknowledged: the same flat index the nodes run,
/// over the union of the shards, under the cluster ids.
pub struct Oracle {
    pub index: FlatIndex,
    pub experts: BTreeMap<u64, NewExpert>,
}

impl Oracle {
    pub fn new() -> Self {
        Oracle {
            index: FlatIndex::new(KEY_DIM),
            experts: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, ids: &[u64], experts: &[NewExpert]) {
        for (&id, e) in ids.iter().zip(experts) {
            self.index.add(id, &key_f32(e)).expect("oracle add");
            self.experts.insert(id, e.clone());
        }
    }

    /// Inserts `experts` through `c` in batches of `batch`, each acknowledged before the
    /// next is sent, and records what was acknowledged. Returns the ids in order.
    pub async fn insert(&mut self, c: &Client, experts: &[NewExpert], batch: usize) -> Vec<u64> {
        let mut all = Vec::with_capacity(experts.len());
        for (b, chunk) in experts.chunks(batch).enumerate() {
            let ids = c
                .insert(chunk.to_vec())
                .await
                .unwrap_or_else(|e| panic!("insert batch {b}: {e}"));
            self.add(&ids, chunk);
            all.extend(ids);
        }
        all
    }

    pub fn remove(&mut self, ids: &[u64]) {
        for id in ids {
            self.index.remove(*id).expect("oracle remove");
            self.experts.remove(id);
        }
    }

    /// Top-k, best first, ties by id (the order the router merges in).
    pub fn top(&self, q: &[f32], k: usize) -> Vec<(u64, f32)> {
        let mut hits = self.index.search(q, k).expect("oracle search");
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        hits.into_iter().map(|h| (h.id, h.score)).collect()
    }
}

/// Asserts that every acknowledged expert is found by searching for its own key.
pub async fn assert_all_found(c: &Client, oracle: &Oracle) {
    for (id, e) in &oracle.experts {
        let r = c
            .search(&key_f32(e), 1)
            .await
            .unwrap_or_else(|e| panic!("search for {id}: {e}"));
        assert_eq!(
            r.hits.first().map(|h| h.id),
            Some(*id),
            "expert {id} not found by its own key"
        );
    }
}
