//! Fan-out search over 3 nodes equals an exact oracle over the union of the shards:
//! same ids, same scores, same order (ties by id), through inserts, deletes, compactions
//! and read-your-writes. Also: fetch returns the inserted bytes; the etcd footprint
//! stays per shard, not per expert.

#[path = "common/cluster.rs"]
mod cluster;

use cluster::*;

#[test]
fn fan_out_top_k_equals_oracle() {
    let Some(opts) = options(small_config()) else {
        return;
    };
    let tb = start(opts);
    let rt = runtime();
    rt.block_on(async {
        let c = owned_client(&tb).await;
        let mut oracle = Oracle::new();
        let all = experts(800, 1);
        // Batches of 40: each shard gets several deltas, so compaction (after 4) runs.
        for (b, batch) in all.chunks(40).enumerate() {
            let ids = c.insert(batch.to_vec()).await.expect("insert");
            oracle.add(&ids, batch);
            // Read-your-writes: the next search sees the batch just acknowledged.
            let probe = &batch[b % batch.len()];
            let r = c.search(&key_f32(probe), 1).await.expect("search");
            assert_eq!(
                r.hits[0].id,
                ids[b % batch.len()],
                "batch {b}: own write not visible"
            );
        }
        let qs = queries(60, 7);
        let check = |label: &'static str, oracle: &Oracle| {
            let c = c.clone();
            let qs = qs.clone();
            let expect: Vec<Vec<(u64, f32)>> = qs.iter().map(|q| oracle.top(q, 10)).collect();
            async move {
                for (q, want) in qs.iter().zip(expect) {
                    let got = c.search(q, 10).await.expect("search");
                    let got: Vec<(u64, f32)> = got.hits.iter().map(|h| (h.id, h.score)).collect();
                    assert_eq!(got, want, "{label}: fan-out differs from the oracle");
                }
            }
        };
        check("after inserts", &oracle).await;

        // Deletes of every 7th expert.
        let dead: Vec<u64> = oracle.experts.keys().copied().step_by(7).collect();
        c.delete(&dead).await.expect("delete");
        oracle.remove(&dead);
        check("after deletes", &oracle).await;
        for id in &dead {
            let got = c.fetch(&[*id]).await.expect("fetch");
            assert!(got.is_empty(), "deleted expert {id} still fetched");
        }

        // Fetch returns the inserted bytes and provenance.
        let some: Vec<u64> = oracle.experts.keys().copied().take(20).collect();
        let got = c.fetch(&some).await.expect("fetch");
        assert_eq!(got.len(), some.len());
        for g in &got {
            let want = &oracle.experts[&g.id];
            assert_eq!(g.key, want.key);
            assert_eq!(g.layers, want.layers);
            assert_eq!(g.provenance, want.provenance);
        }

        // Compaction ran (4 deltas max) and the collector keeps only what manifests name.
        let state = c.view().state();
        let compacted = state
            .manifests
            .values()
            .filter(|m| m.manifest.compacted_from.is_some())
            .count();
        assert!(compacted > 0, "no shard was compacted");
        let live: u64 = state.manifests.values().map(|m| m.manifest.live).sum();
        assert_eq!(
            live as usize,
            oracle.experts.len(),
            "manifests' live counts"
        );
        let (keys, bytes) = c.etcd_footprint().await.expect("footprint");
        // config + ids + 3 nodes + per shard (manifest, owner, ≤ 3 ready marks): per shard,
        // not per expert.
        assert!(keys <= 2 + 3 + 8 * 5, "{keys} etcd keys");
        eprintln!("etcd footprint: {keys} keys, {bytes} bytes for {live} experts");
    });
}
