//! A slow node (SIGSTOP for 1.5 s, inside its lease): searches hedged to a replica after
//! 50 ms still answer fast and exactly; without hedging a search waits for the node.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::*;
use mome_cluster::{Client, ClientOptions};

#[test]
fn hedged_search_routes_around_a_stalled_node() {
    let Some(opts) = options(small_config()) else {
        return;
    };
    let tb = start(opts);
    let rt = runtime();
    rt.block_on(async {
        let c = owned_client(&tb).await;
        let mut oracle = Oracle::new();
        oracle.insert(&c, &experts(200, 8), 40).await;
        // Wait until every replica has caught up (so that a hedge never waits either).
        let shards = c.config().shards;
        let r = c.config().replicas as usize;
        c.view()
            .wait_for(Duration::from_secs(30), "every placement ready", |s| {
                (0..shards).all(|sh| s.placement(sh, r as u32).iter().all(|n| s.readies.contains(&(sh, n.to_string()))))
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut plain = ClientOptions::default();
        plain.hedge_after = None;
        let unhedged = Client::connect_with(&tb.etcd_endpoints(), &tb.cluster, plain).await.expect("client");
        let q = queries(6, 13);
        // Warm the connections.
        for x in &q {
            c.search(x, 10).await.expect("search");
            unhedged.search(x, 10).await.expect("search");
        }
        // The node first in the read order of the most shards.
        let state = c.view().state();
        let slow = (0..tb.node_count())
            .max_by_key(|&i| (0..shards).filter(|&sh| state.read_order(sh, r as u32)[0] == tb.node_id(i)).count())
            .expect("node");
        tb.signal_node(slow, "STOP").expect("SIGSTOP");
        let stopped = Instant::now();
        let mut lat = Vec::new();
        let mut hedged = 0;
        for x in &q[..5] {
            let t = Instant::now();
            let res = c.search(x, 10).await.expect("hedged search");
            lat.push(t.elapsed());
            hedged += res.hedged;
            let got: Vec<(u64, f32)> = res.hits.iter().map(|h| (h.id, h.score)).collect();
            assert_eq!(got, oracle.top(x, 10), "hedged answer differs from the oracle");
        }
        let u = unhedged.clone();
        let qq = q[5].clone();
        let waiting = tokio::spawn(async move {
            let t = Instant::now();
            let r = u.search(&qq, 10).await;
            (t.elapsed(), r)
        });
        tokio::time::sleep(Duration::from_millis(1500).saturating_sub(stopped.elapsed())).await;
        tb.signal_node(slow, "CONT").expect("SIGCONT");
        let (unhedged_lat, r) = waiting.await.expect("task");
        r.expect("unhedged search");
        lat.sort();
        eprintln!(
            "{} stopped: hedged searches {:?} (shards answered by a hedge: {hedged}); unhedged search {:?}",
            tb.node_id(slow),
            lat,
            unhedged_lat
        );
        assert!(hedged > 0, "no shard answered by a hedge");
        assert!(lat[lat.len() - 1] < Duration::from_millis(1000), "a hedged search waited for the stalled node");
        assert!(unhedged_lat > Duration::from_millis(500), "the unhedged search did not wait: the stall was not seen");
    });
}
