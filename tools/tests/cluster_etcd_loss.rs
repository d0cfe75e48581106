//! Kill the etcd leader (one of three members): the cluster keeps serving searches and
//! accepting writes, no node loses its lease, and everything acknowledged is found.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::*;

#[test]
fn cluster_serves_and_writes_without_one_etcd_member() {
    let Some(opts) = options(small_config()) else {
        return;
    };
    let mut tb = start(opts);
    let rt = runtime();
    rt.block_on(async {
        let c = owned_client(&tb).await;
        let mut oracle = Oracle::new();
        oracle.insert(&c, &experts(160, 6), 40).await;
        let tokens_before: Vec<(u32, i64)> = c
            .view()
            .state()
            .owners
            .iter()
            .map(|(s, o)| (*s, o.token))
            .collect();

        // The leader, by asking each member.
        let eps = tb.etcd_endpoints();
        let mut leader = None;
        for (i, ep) in eps.iter().enumerate() {
            let mut e = mome_cluster::coord::connect(std::slice::from_ref(ep))
                .await
                .expect("etcd");
            let st = e.status().await.expect("status");
            if st.leader() == st.header().map_or(0, |h| h.member_id()) {
                leader = Some(i);
            }
        }
        let leader = leader.expect("a leader");
        tb.kill_etcd(leader);
        let killed = Instant::now();

        // Writes and searches go on (bounded: 10 rounds).
        let mut worst = Duration::ZERO;
        for (b, batch) in experts(200, 7).chunks(20).enumerate() {
            let t = Instant::now();
            let ids = c
                .insert(batch.to_vec())
                .await
                .unwrap_or_else(|e| panic!("round {b}: {e}"));
            worst = worst.max(t.elapsed());
            oracle.add(&ids, batch);
            let r = c.search(&key_f32(&batch[0]), 1).await.expect("search");
            assert_eq!(r.hits[0].id, ids[0]);
        }
        assert_all_found(&c, &oracle).await;
        for q in queries(20, 12) {
            let got: Vec<(u64, f32)> = c
                .search(&q, 10)
                .await
                .expect("search")
                .hits
                .iter()
                .map(|h| (h.id, h.score))
                .collect();
            assert_eq!(got, oracle.top(&q, 10));
        }
        // No ownership moved: the leases lived through the leader change.
        let tokens_after: Vec<(u32, i64)> = c
            .view()
            .state()
            .owners
            .iter()
            .map(|(s, o)| (*s, o.token))
            .collect();
        assert_eq!(tokens_before, tokens_after, "an ownership changed");
        eprintln!(
            "etcd leader e{leader} killed; 10 write rounds in {:.1} s, slowest {:.0} ms",
            killed.elapsed().as_secs_f64(),
            worst.as_secs_f64() * 1000.0
        );
    });
}
