//! Fencing: the owner of a shard is stopped (SIGSTOP) after uploading a delta and
//! before committing it, past its lease; another node takes the shard and commits
//! writes; the old owner is continued (SIGCONT): its commit is refused, nothing it
//! wrote becomes visible, and the collector deletes its orphaned object after the grace.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::*;
use mome_cluster::manifest::Keys;
use mome_cluster::objects::{Objects, S3Url};
use mome_cluster::rpc;
use mome_cluster::{shard_of, ClusterExpert};

/// Ids (from the allocator) that fall into `shard`.
async fn ids_in(c: &mome_cluster::Client, shard: u32, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..100 {
        for id in c.allocate_ids(64).await.expect("ids") {
            if shard_of(id, c.config().shards) == shard && out.len() < n {
                out.push(id);
            }
        }
        if out.len() == n {
            return out;
        }
    }
    panic!("could not draw {n} ids of shard {shard}");
}

#[test]
fn paused_owner_commit_is_refused_and_invisible() {
    let Some(mut opts) = options(small_config()) else {
        return;
    };
    // node0 pauses 4 s between a delta's upload and its commit: the window to stop it in.
    opts.node_env.push((
        "node0".into(),
        "MOME_FAULT_COMMIT_DELAY_MS".into(),
        "4000".into(),
    ));
    let tb = start(opts);
    let rt = runtime();
    rt.block_on(async {
        let c = owned_client(&tb).await;
        let state = c.view().state();
        let (&shard, owner) = state
            .owners
            .iter()
            .find(|(_, o)| o.info.node == "node0")
            .expect("node0 owns a shard");
        let old_token = owner.token;
        let objects = Objects::open(&S3Url::parse(&tb.s3_url()).expect("url")).expect("bucket");
        let prefix = Keys::segment_prefix(&tb.cluster, shard);
        let before: Vec<String> = objects
            .list(&prefix)
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.name)
            .collect();

        // A write sent straight to node0 (no router retry), for its shard.
        let fenced_id = ids_in(&c, shard, 1).await[0];
        let fenced_expert = experts(1, 40).remove(0);
        let pb = rpc::expert_to_pb(&ClusterExpert {
            id: fenced_id,
            key: fenced_expert.key.clone(),
            layers: fenced_expert.layers.clone(),
            provenance: fenced_expert.provenance.clone(),
            created_at_ms: 0,
        })
        .expect("pb");
        let addr = tb.node_addr(0);
        let write = tokio::spawn(async move {
            let mut nc = rpc::NodeClient::connect(format!("http://{addr}"))
                .await
                .expect("connect node0");
            let mut req = tonic::Request::new(rpc::WriteRequest {
                shard,
                inserts: vec![pb],
                deletes: vec![],
            });
            req.set_timeout(Duration::from_secs(60));
            nc.write(req).await
        });

        // Its delta is uploaded (a new object under the shard's prefix): stop node0 now,
        // inside the pause before the commit.
        let t0 = Instant::now();
        let orphan = loop {
            let now: Vec<String> = objects
                .list(&prefix)
                .await
                .expect("list")
                .into_iter()
                .map(|o| o.name)
                .collect();
            if let Some(n) = now.into_iter().find(|n| !before.contains(n)) {
                break n;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "node0 never uploaded its delta"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        tb.signal_node(0, "STOP").expect("SIGSTOP");
        let stopped = Instant::now();

        // Its lease ends; another node takes the shard and commits writes.
        let s = c
            .view()
            .wait_for(Duration::from_secs(30), "a new owner", |s| {
                s.owners.get(&shard).is_some_and(|o| o.info.node != "node0")
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let new_owner = s.owners[&shard].clone();
        assert!(new_owner.token > old_token, "fencing tokens only grow");
        let ids = ids_in(&c, shard, 5).await;
        let batch = experts(5, 41);
        c.put(&ids, batch.clone())
            .await
            .expect("write at the new owner");
        let mut oracle = Oracle::new();
        oracle.add(&ids, &batch);
        eprintln!(
            "node0 stopped; {} took shard {shard} (token {} → {}) and committed after {:.1} s",
            new_owner.info.node,
            old_token,
            new_owner.token,
            stopped.elapsed().as_secs_f64()
        );

        // node0 resumes: its pending commit is refused.
        tb.signal_node(0, "CONT").expect("SIGCONT");
        let res = tokio::time::timeout(Duration::from_secs(30), write)
            .await
            .expect("the old owner answers")
            .expect("task");
        let status = res.expect_err("the paused owner's write must fail");
        assert_eq!(
            rpc::status_kind(&status),
            Some("fenced"),
            "refused as fenced: {status:?}"
        );

        // Nothing of it is visible; the new owner's writes are.
        assert!(
            c.fetch(&[fenced_id]).await.expect("fetch").is_empty(),
            "fenced expert fetched"
        );
        let r = c.search(&key_f32(&fenced_expert), 3).await.expect("search");
        assert!(
            r.hits.iter().all(|h| h.id != fenced_id),
            "fenced expert found by search"
        );
        let m = c.view().state().manifests[&shard].manifest.clone();
        assert!(
            m.segments.iter().all(|sg| sg.name != orphan),
            "orphan referenced by the manifest"
        );
        assert_all_found(&c, &oracle).await;
        // node0 rejoins as a new member and, being the shard's preferred node, may get it
        // back by a handover: but only under a new ownership, never the fenced one.
        let s = c
            .view()
            .wait_for(Duration::from_secs(30), "an owner", |s| {
                s.owners.contains_key(&shard)
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(
            s.owners[&shard].token, old_token,
            "the fenced ownership is back"
        );

        // The collector removes the orphan once it is older than the grace (12 s).
        let t0 = Instant::now();
        loop {
            let names: Vec<String> = objects
                .list(&prefix)
                .await
                .expect("list")
                .into_iter()
                .map(|o| o.name)
                .collect();
            if !names.contains(&orphan) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "orphan {orphan} never collected"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "orphan collected {:.1} s after the refusal",
            t0.elapsed().as_secs_f64()
        );
    });
}
