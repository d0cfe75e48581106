//! The cluster view loads a prefix larger than etcd-client's default 4 MiB response
//! limit (docs/SCALE.md, section etcd): 1,200 full-size manifests (≈ 5 KB each, the
//! size of a 100k-expert shard before compaction) and 1,200 owners in one etcd member on
//! 127.0.0.1. One range over the prefix fails to decode; the paged load reads every key,
//! as one snapshot while a writer keeps rewriting the first and the last manifest
//! together, and the watch that follows misses nothing. Skipped when etcd is missing,
//! except under CI.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, Txn, TxnOp};
use mome_cluster::manifest::{Keys, Manifest, OwnerInfo, SegmentRef, META_VERSION};
use mome_cluster::segment::SegmentKind;
use mome_cluster::view::ClusterView;

const SHARDS: u32 = 1_200;
/// Segment refs per manifest: 15 bases + 17 deltas (docs/SCALE.md, etcd).
const REFS: usize = 32;
/// Puts per transaction (etcd's --max-txn-ops default is 128; ≈ 500 KB per request,
/// under its 1.5 MiB request limit).
const TXN_OPS: usize = 100;

/// A manifest of `REFS` refs named the way nodes name them; `generation` varies.
fn manifest(cluster: &str, shard: u32, generation: u64) -> Vec<u8> {
    let segments = (0..REFS)
        .map(|i| SegmentRef {
            name: format!(
                "{cluster}/shards/{shard:05}/{:016x}-node-10-0-0-12-7000-{i:04}.seg",
                (u64::from(shard) << 20) | i as u64
            ),
            kind: if i < 15 {
                SegmentKind::Base
            } else {
                SegmentKind::Delta
            },
            experts: 7_060,
            tombstones: 3,
            bytes: 269_900_000,
        })
        .collect();
    let m = Manifest {
        v: META_VERSION,
        shard,
        generation,
        segments,
        live: 100_000,
        compacted_from: Some(generation.saturating_sub(1)),
    };
    serde_json::to_vec(&m).expect("json")
}

#[test]
fn view_loads_a_prefix_past_the_default_decode_limit() {
    let t0 = Instant::now();
    let Some(etcd) = common::one_etcd() else {
        return;
    };
    let rt = common::runtime();
    rt.block_on(async {
        let ep = vec![etcd.endpoint()];
        let client = mome_cluster::coord::connect(&ep).await.expect("connect");
        let cluster = "paged";
        let keys = Keys::new(cluster);

        // 1,200 manifests and 1,200 owners, in transactions of 100 puts.
        let mut puts = Vec::new();
        for shard in 0..SHARDS {
            puts.push(TxnOp::put(keys.manifest(shard), manifest(cluster, shard, 1), None));
            let owner = OwnerInfo {
                node: format!("node-10-0-0-{}-7000", shard % 7),
                lease: 0x7e57_0000 + i64::from(shard % 7),
            };
            puts.push(TxnOp::put(
                keys.owner(shard),
                serde_json::to_vec(&owner).expect("json"),
                None,
            ));
        }
        for chunk in puts.chunks(TXN_OPS) {
            let mut c = client.clone();
            let r = c.txn(Txn::new().and_then(chunk.to_vec())).await.expect("txn");
            assert!(r.succeeded());
        }

        // The prefix is past the old limit: one range over it does not decode.
        let (n, bytes) = mome_cluster::coord::footprint(&mut client.clone(), &keys)
            .await
            .expect("footprint");
        assert_eq!(n, 2 * SHARDS as usize, "keys under the prefix");
        assert!(bytes > 4 << 20, "prefix of {bytes} bytes is under 4 MiB");
        let whole = client
            .clone()
            .get(keys.root(), Some(GetOptions::new().with_prefix()))
            .await;
        match whole {
            Err(e) => assert!(
                e.to_string().contains("message length too large"),
                "unexpected error of the single range: {e}"
            ),
            Ok(r) => panic!("a single range of {} keys decoded", r.kvs().len()),
        }

        // A writer rewrites the first and the last manifest together (one transaction
        // each round) while views load: every view must see both at one generation.
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(1));
        let writer = {
            let (stop, mut c, keys) = (stop.clone(), client.clone(), keys.clone());
            let written = written.clone();
            let cluster = cluster.to_string();
            tokio::spawn(async move {
                let mut g = 1u64;
                let mut last_rev = 0;
                while !stop.load(Ordering::Relaxed) && g < 10_000 {
                    g += 1;
                    let r = c
                        .txn(Txn::new().and_then([
                            TxnOp::put(keys.manifest(0), manifest(&cluster, 0, g), None),
                            TxnOp::put(
                                keys.manifest(SHARDS - 1),
                                manifest(&cluster, SHARDS - 1, g),
                                None,
                            ),
                        ]))
                        .await
                        .expect("writer txn");
                    last_rev = r.header().map_or(0, |h| h.revision());
                    written.store(g, Ordering::Relaxed);
                }
                (g, last_rev)
            })
        };
        let w0 = Instant::now();
        while written.load(Ordering::Relaxed) < 3 {
            assert!(w0.elapsed() < Duration::from_secs(10), "the writer does not write");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut loads = Vec::new();
        for _ in 0..4 {
            let t = Instant::now();
            let view = ClusterView::start(client.clone(), keys.clone())
                .await
                .expect("view");
            loads.push(t.elapsed());
            let s = view.state();
            assert_eq!(s.manifests.len(), SHARDS as usize, "manifests in the view");
            assert_eq!(s.owners.len(), SHARDS as usize, "owners in the view");
            let (first, last) = (&s.manifests[&0], &s.manifests[&(SHARDS - 1)]);
            assert_eq!(
                first.manifest.generation, last.manifest.generation,
                "first and last manifest from different revisions (rev {})",
                s.revision
            );
            assert!(first.manifest.generation >= 3, "the writer's rounds are not in the view");
            assert_eq!(first.revision, last.revision, "one transaction, one revision");
            assert!(s.manifests.values().all(|m| m.revision <= s.revision));
            for (shard, m) in &s.manifests {
                assert_eq!(m.manifest.shard, *shard);
                assert_eq!(m.manifest.segments.len(), REFS);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;

        // A view started before the writer stops follows it to its last write, from
        // the loaded revision + 1 on: its state equals a fresh load's.
        let follower = ClusterView::start(client.clone(), keys.clone())
            .await
            .expect("view");
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        let (g, last_rev) = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("writer stops")
            .expect("writer");
        assert!(g > 2, "the writer ran ({g} generations)");
        let s = follower
            .wait_for(Duration::from_secs(10), "the writer's last revision", |s| {
                s.revision >= last_rev
            })
            .await
            .expect("follow");
        assert_eq!(s.manifests[&0].manifest.generation, g);
        assert_eq!(s.manifests[&(SHARDS - 1)].manifest.generation, g);
        let fresh = ClusterView::start(client.clone(), keys.clone())
            .await
            .expect("view")
            .state();
        assert_eq!(fresh.revision, s.revision);
        assert_eq!(fresh.manifests, s.manifests, "followed state differs from a fresh load");
        assert_eq!(fresh.owners, s.owners);
        eprintln!(
            "{n} keys, {bytes} bytes; loads under writes {loads:?}; {g} generations written; total {:?}",
            t0.elapsed()
        );
    });
    drop(etcd);
}
