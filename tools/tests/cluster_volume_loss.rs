//! Kill a SeaweedFS volume server (replication 001: every object has a copy on the
//! other one): every segment is still readable and intact, and nodes restarted after the
//! loss rebuild every shard from object storage and answer exactly as before.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::*;
use mome_cluster::objects::{Objects, S3Url};
use mome_cluster::segment::SegmentView;

#[test]
fn reads_survive_a_volume_server_loss() {
    let Some(opts) = options(small_config()) else {
        return;
    };
    let mut tb = start(opts);
    let rt = runtime();
    rt.block_on(async {
        let c = owned_client(&tb).await;
        let mut oracle = Oracle::new();
        oracle.insert(&c, &experts(300, 5), 30).await;
        tb.kill_volume(0);

        // Every segment every manifest names: readable, checksums intact.
        let objects = Objects::open(&S3Url::parse(&tb.s3_url()).expect("url")).expect("bucket");
        let state = c.view().state();
        let mut n = 0;
        for v in state.manifests.values() {
            for seg in &v.manifest.segments {
                let bytes = objects
                    .get(&seg.name)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", seg.name));
                SegmentView::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", seg.name));
                n += 1;
            }
        }
        assert!(n >= 8, "{n} segments");

        // Every node's cache rebuilt from object storage with one volume server down.
        for i in 0..tb.node_count() {
            tb.kill_node(i);
        }
        for i in 0..tb.node_count() {
            tb.start_node(i).expect("restart node");
        }
        wait_owned(&c, Duration::from_secs(60)).await;
        assert_all_found(&c, &oracle).await;
        for q in queries(20, 11) {
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
        eprintln!(
            "{n} segments read back and {} experts found with volume server 0 dead",
            oracle.experts.len()
        );
    });
}
