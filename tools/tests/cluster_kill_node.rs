//! `kill -9` a node that owns shards while writes go on: its lease ends, its shards are
//! taken by the others, every acknowledged expert is still found, and writes to its
//! shards resume at the new owners.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::*;

#[test]
fn killed_node_shards_reassigned_nothing_acknowledged_lost() {
    let Some(opts) = options(small_config()) else {
        return;
    };
    let mut tb = start(opts);
    let rt = runtime();
    rt.block_on(async {
        let c = owned_client(&tb).await;
        let mut oracle = Oracle::new();
        oracle.insert(&c, &experts(300, 2), 30).await;
        // The victim: the node owning the most shards.
        let state = c.view().state();
        let victim = (0..tb.node_count())
            .max_by_key(|&i| {
                state
                    .owners
                    .values()
                    .filter(|o| o.info.node == tb.node_id(i))
                    .count()
            })
            .expect("a node");
        let vid = tb.node_id(victim).to_string();
        let its: Vec<u32> = state
            .owners
            .iter()
            .filter(|(_, o)| o.info.node == vid)
            .map(|(s, _)| *s)
            .collect();
        assert!(!its.is_empty(), "victim owns nothing");
        tb.kill_node(victim);
        let killed = Instant::now();

        // Writes continue: those for the victim's shards wait for the new owners.
        oracle.insert(&c, &experts(120, 3), 30).await;
        let s = c
            .view()
            .wait_for(
                Duration::from_secs(30),
                "the victim's shards owned elsewhere",
                |s| {
                    its.iter()
                        .all(|sh| s.owners.get(sh).is_some_and(|o| o.info.node != vid))
                        && !s.nodes.contains_key(&vid)
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "killed {vid} (owner of {its:?}); reassigned after {:.1} s; owners now {:?}",
            killed.elapsed().as_secs_f64(),
            its.iter()
                .map(|sh| s.owners[sh].info.node.clone())
                .collect::<Vec<_>>()
        );
        assert_all_found(&c, &oracle).await;
        // And the top-k still equals the oracle over everything acknowledged.
        for q in queries(20, 9) {
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
    });
}
