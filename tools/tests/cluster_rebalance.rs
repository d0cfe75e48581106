//! Moving shards without node-to-node copies: a third node joins a two-node cluster,
//! loads the shards it is preferred for from object storage, and takes them over when
//! their owners hand them off; then a node is drained with `mome cluster rebalance
//! --drain`. Writes go on throughout, readers follow through their watch, nothing
//! acknowledged is lost. Also checks the `mome cluster` commands' outputs.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::Duration;

use cluster::*;

#[test]
fn join_and_drain_move_shards_and_lose_nothing() {
    let Some(mut opts) = options(small_config()) else {
        return;
    };
    opts.nodes = 2;
    let mut tb = start(opts);
    let rt = runtime();
    let etcd = tb.etcd_list();
    let name = tb.cluster.clone();
    let conn = [
        "--etcd",
        etcd.as_str(),
        "--cluster",
        name.as_str(),
        "--json",
    ];
    rt.block_on(async {
        let c = owned_client(&tb).await;
        let mut oracle = Oracle::new();
        oracle.insert(&c, &experts(200, 21), 40).await;
        assert!(c
            .view()
            .state()
            .owners
            .values()
            .all(|o| o.info.node != "node2"));

        // A third node joins: the shards it ranks first for move to it.
        let i = tb.add_node().expect("add node");
        assert_eq!(tb.node_id(i), "node2");
        let mut writes = 0;
        let s = loop {
            let batch = experts(10, 100 + writes);
            let ids = c
                .insert(batch.clone())
                .await
                .expect("insert during the move");
            oracle.add(&ids, &batch);
            writes += 1;
            let s = c.view().state();
            let settled = (0..8).all(|sh| {
                let p = s.placement(sh, 2)[0].to_string();
                s.owners.get(&sh).is_some_and(|o| o.info.node == p)
            });
            if settled {
                break s;
            }
            assert!(writes < 300, "shards did not move to node2");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let moved = s.owners.values().filter(|o| o.info.node == "node2").count();
        assert!(moved > 0, "node2 took nothing");
        eprintln!("node2 joined and owns {moved} shards after {writes} write rounds");
        assert_all_found(&c, &oracle).await;

        // Drain node0 through the CLI and wait for it.
        let out = common::ok(
            &[
                &["cluster", "rebalance", "--drain", "node0", "--wait", "60"][..],
                &conn[..],
            ]
            .concat(),
        );
        assert_eq!(
            out.json()["pending"],
            serde_json::json!([]),
            "{}",
            out.stdout
        );
        let s = c.view().state();
        assert!(
            s.owners.values().all(|o| o.info.node != "node0"),
            "node0 still owns a shard"
        );
        // After the drain.
        oracle.insert(&c, &experts(40, 300), 20).await;
        assert_all_found(&c, &oracle).await;

        // The admin views agree.
        let shards = common::ok(&[&["cluster", "shards"][..], &conn[..]].concat()).json();
        let rows = shards["shards"].as_array().expect("rows");
        assert_eq!(rows.len(), 8);
        let total: u64 = rows
            .iter()
            .map(|r| r["experts"].as_u64().expect("experts"))
            .sum();
        assert_eq!(total as usize, oracle.experts.len());
        assert!(rows
            .iter()
            .all(|r| r["owner"].is_string() && r["owner"] != "node0"));
        let status = common::ok(&[&["cluster", "status"][..], &conn[..]].concat()).json();
        assert_eq!(
            status["experts"].as_u64(),
            Some(oracle.experts.len() as u64)
        );
        assert_eq!(status["unowned_shards"], 0);
        assert_eq!(status["draining"], serde_json::json!(["node0"]));
        let n0 = status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["id"] == "node0")
            .cloned()
            .expect("node0");
        assert_eq!(n0["owns"], serde_json::json!([]));
    });
}
