//! A fetch from a cluster where no node runs is an error, not an empty answer: the
//! 100 rounds of a shard's fetch (100 ms apart, ≈ 10 s) end before the default 30 s
//! deadline, and used to return nothing for the shard, as if its ids did not exist.
//! One etcd member on 127.0.0.1 with a cluster config and no node. Skipped when etcd is
//! missing, except under CI.

mod common;

use mome::StoreConfig;
use mome_cluster::{Client, ClusterConfig, Error};

#[test]
fn fetch_without_a_live_node_is_unavailable() {
    let Some(etcd) = common::one_etcd() else {
        return;
    };
    let rt = common::runtime();
    rt.block_on(async {
        let ep = vec![etcd.endpoint()];
        let mut etcd_client = mome_cluster::coord::connect(&ep).await.expect("connect");
        let config = ClusterConfig::new(StoreConfig::new(4, 4, 1, vec![0]), 4);
        mome_cluster::coord::init_cluster(&mut etcd_client, "empty", &config)
            .await
            .expect("init");
        let c = Client::connect(&ep, "empty").await.expect("client");
        let r = c.fetch(&[1, 2, 3]).await;
        assert!(
            matches!(r, Err(Error::Unavailable { .. })),
            "fetch without nodes: {r:?}"
        );
    });
    drop(etcd);
}
