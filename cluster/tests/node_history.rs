//! A node compacts etcd's history by itself: `node::run` starts the history runner
//! with the cluster's `etcd_history_s` (here 1 s), and the node, the only live member,
//! is the compactor. One etcd member on 127.0.0.1 without auto-compaction flags, one
//! node in this process (no object storage is touched: nothing is written to the
//! cluster), and a writer of other keys. The writer's first revision must read as
//! compacted within a bounded wait, and the node must shut down cleanly. Skipped when
//! etcd is missing, except under CI.

mod common;

use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use mome::{IndexKind, StoreConfig};
use mome_cluster::node::{self, NodeOptions};
use mome_cluster::objects::S3Url;
use mome_cluster::ClusterConfig;

#[test]
fn a_node_compacts_etcd_history() {
    let Some(etcd) = common::one_etcd() else {
        return;
    };
    let data = tempfile::tempdir().expect("tempdir");
    let rt = common::runtime();
    rt.block_on(async {
        let ep = vec![etcd.endpoint()];
        let mut c = mome_cluster::coord::connect(&ep).await.expect("connect");
        let mut config = ClusterConfig::new(StoreConfig::new(4, 4, 1, vec![0]), 2);
        config.index = IndexKind::Flat;
        config.etcd_history_s = 1;
        mome_cluster::coord::init_cluster(&mut c, "nh", &config)
            .await
            .expect("init");
        let first_rev = c
            .put("/other/k", "0", None)
            .await
            .expect("put")
            .header()
            .map_or(0, |h| h.revision());

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = NodeOptions {
            etcd: ep.clone(),
            cluster: "nh".into(),
            // Never reached: nothing is written to the cluster, and the collector's first
            // round comes after gc_grace_s / 4 = 15 min.
            s3: S3Url::parse("http://127.0.0.1:9/none").expect("url"),
            listen: "127.0.0.1:0".parse().expect("addr"),
            advertise: None,
            data_dir: data.path().to_path_buf(),
            id: Some("n0".into()),
        };
        let node = tokio::spawn(node::run(
            opts,
            async move {
                let _ = stop_rx.await;
            },
            |_| {},
        ));

        // Writes of other keys (compaction is etcd-wide) until the first one is compacted.
        let t0 = Instant::now();
        let mut i = 0u64;
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "revision {first_rev} not compacted within 30 s"
            );
            i += 1;
            c.put("/other/k", i.to_string(), None).await.expect("put");
            let old = c
                .get("/other/k", Some(GetOptions::new().with_revision(first_rev)))
                .await;
            if matches!(&old, Err(e) if e.to_string().contains("compacted")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "revision {first_rev} compacted after {i} puts, {:?}",
            t0.elapsed()
        );
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(30), node)
            .await
            .expect("node stops")
            .expect("node task")
            .expect("node");
    });
    drop(etcd);
}
