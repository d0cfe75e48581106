//! Helpers of the cluster crate's tests: deterministic small experts and segments for the
//! format tests; one etcd member and a runtime for the tests against etcd.
#![allow(dead_code)]

use half::f16;
use mome::{AdapterPair, Provenance, StoreConfig};
use mome_cluster::segment::{ClusterExpert, SegmentBuilder, SegmentKind};
use mome_cluster::testbed::{find_etcd, EtcdProcess};

/// d_model 4, key_dim 4, rank 1, adapters on layer 0 and 2.
pub fn config() -> StoreConfig {
    StoreConfig::new(4, 4, 1, vec![0, 2])
}

/// Expert `id` with values derived from the id only.
pub fn expert(id: u64) -> ClusterExpert {
    let v = |n: usize, s: f32| {
        (0..n)
            .map(|i| f16::from_f32(s + i as f32 * 0.25))
            .collect::<Vec<_>>()
    };
    let s = id as f32;
    ClusterExpert {
        id,
        key: v(4, s),
        layers: vec![
            AdapterPair {
                a: v(4, s + 1.0),
                b: v(4, -s),
            },
            AdapterPair {
                a: v(4, 0.5),
                b: v(4, s * 2.0),
            },
        ],
        provenance: Provenance::fact(format!("the code of {id}"), format!("{}", id * 7)),
        created_at_ms: 1_700_000_000_000 + id,
    }
}

/// The fixture: a delta of shard 3, generation 9, experts 5 and 11, tombstones 2 and 4.
pub fn fixture() -> Vec<u8> {
    let mut b = SegmentBuilder::new(SegmentKind::Delta, 3, 9, &config());
    b.push(expert(11)).expect("push");
    b.push(expert(5)).expect("push");
    b.tombstone(4);
    b.tombstone(2);
    b.finish().expect("finish")
}

/// One etcd member on 127.0.0.1 (its own directory and ports, stopped by PID on drop);
/// `None`, after saying why, when etcd is not installed, which only a developer's machine
/// may lack: under CI a missing etcd fails the test.
pub fn one_etcd() -> Option<EtcdProcess> {
    etcd_members(1)
}

/// [`one_etcd`] with `n` members in one etcd cluster.
pub fn etcd_members(n: usize) -> Option<EtcdProcess> {
    let Some(bin) = find_etcd() else {
        assert!(std::env::var_os("CI").is_none(), "CI without etcd");
        eprintln!("skipped: etcd not found");
        return None;
    };
    Some(EtcdProcess::start_members(&bin, n, &[]).unwrap_or_else(|e| panic!("{e}")))
}

/// The tests' async runtime: two workers, like the 2-core machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
