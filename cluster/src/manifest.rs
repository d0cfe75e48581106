//! Cluster metadata kept in etcd: the cluster config, shard manifests, and the key
//! layout. Everything here is small: one config, one manifest per shard, one
//! ownership key per shard, one membership key per node. Never one entry per expert.

use mome::IndexKind;
use mome::StoreConfig;
use serde::{Deserialize, Serialize};

use crate::segment::SegmentKind;

/// Version of the JSON values written to etcd.
pub const META_VERSION: u32 = 1;

/// Shard of an expert id: a 64-bit mix of the id, modulo the shard count.
pub fn shard_of(id: u64, shards: u32) -> u32 {
    (mix64(id) % u64::from(shards.max(1))) as u32
}

/// SplitMix64's finaliser: a bijective, well-spread mix of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The cluster's identity and policy, written once by `mome cluster init`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// Format version of this value.
    pub v: u32,
    /// Shape of every expert.
    pub store: StoreConfig,
    /// Number of shards (fixed for the cluster's life: `shard_of` depends on it).
    pub shards: u32,
    /// Nodes serving each shard (the owner included).
    pub replicas: u32,
    /// Lease of a node's membership and ownerships, seconds.
    pub lease_ttl_s: u64,
    /// Age after which an object no manifest references is deleted, seconds.
    pub gc_grace_s: u64,
    /// Deltas in a manifest that trigger a compaction into a base.
    pub max_deltas: u32,
    /// Largest segment written, bytes (bases are split into parts of this size).
    pub max_segment_bytes: u64,
    /// Index each node builds per shard.
    pub index: IndexKind,
    /// etcd history kept, seconds: one node compacts etcd at the revision that was
    /// current this long ago (`history.rs`); 0 leaves compaction to etcd's own flags.
    /// Absent in configs written before it existed: the default.
    #[serde(default = "default_etcd_history_s")]
    pub etcd_history_s: u64,
}

/// Default of [`ClusterConfig::etcd_history_s`]: five minutes.
pub const DEFAULT_ETCD_HISTORY_S: u64 = 300;

fn default_etcd_history_s() -> u64 {
    DEFAULT_ETCD_HISTORY_S
}

impl ClusterConfig {
    /// A config with the defaults for everything but the shape and the shard count.
    pub fn new(store: StoreConfig, shards: u32) -> Self {
        ClusterConfig {
            v: META_VERSION,
            store,
            shards,
            replicas: 2,
            lease_ttl_s: 10,
            gc_grace_s: 3600,
            max_deltas: 16,
            max_segment_bytes: 256 << 20,
            index: IndexKind::Hnsw,
            etcd_history_s: DEFAULT_ETCD_HISTORY_S,
        }
    }

    /// Checks the policy's bounds (the shape is checked by `StoreConfig::validate`).
    pub fn validate(&self) -> Result<(), String> {
        self.store.validate().map_err(|e| e.to_string())?;
        if self.v != META_VERSION {
            return Err(format!(
                "config version {} (this build: {META_VERSION})",
                self.v
            ));
        }
        if self.shards == 0 || self.shards > 65_536 {
            return Err("shards must be in 1..=65536".into());
        }
        if self.replicas == 0 || self.replicas > 16 {
            return Err("replicas must be in 1..=16".into());
        }
        if self.lease_ttl_s < 2 || self.lease_ttl_s > 3600 {
            return Err("lease_ttl_s must be in 2..=3600".into());
        }
        // An owner commits within half the grace of its upload (it re-uploads otherwise),
        // and an owner holds its lease while it does; so the grace must exceed both.
        if self.gc_grace_s < 4 * self.lease_ttl_s {
            return Err("gc_grace_s must be at least 4 × lease_ttl_s".into());
        }
        if self.max_deltas == 0 {
            return Err("max_deltas must be at least 1".into());
        }
        if self.max_segment_bytes < 1 << 16 {
            return Err("max_segment_bytes must be at least 64 KiB".into());
        }
        if self.etcd_history_s > 86_400 {
            return Err("etcd_history_s must be in 0..=86400".into());
        }
        Ok(())
    }
}

/// One segment object named by a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    /// Object name (key in the bucket).
    pub name: String,
    /// Base or delta.
    pub kind: SegmentKind,
    /// Experts it inserts.
    pub experts: u64,
    /// Ids it tombstones.
    pub tombstones: u64,
    /// Object size in bytes.
    pub bytes: u64,
}

/// A shard's state: the segments to apply, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub v: u32,
    /// Shard.
    pub shard: u32,
    /// Incremented by every commit (write or compaction).
    pub generation: u64,
    /// Segments, applied in order.
    pub segments: Vec<SegmentRef>,
    /// Live experts after applying every segment.
    pub live: u64,
    /// For a manifest written by compaction: the generation whose state its bases hold.
    /// A node that applied exactly that generation adopts the new list without reloading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_from: Option<u64>,
}

impl Manifest {
    /// The manifest of a shard nobody has written to.
    pub fn empty(shard: u32) -> Self {
        Manifest {
            v: META_VERSION,
            shard,
            ..Default::default()
        }
    }

    /// Deltas since the last compaction.
    pub fn deltas(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.kind == SegmentKind::Delta)
            .count()
    }
}

/// Membership value of a node (under its lease).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// RPC address (host:port).
    pub addr: String,
    /// When the node registered (ms since the epoch).
    pub started_ms: u64,
}

/// Ownership value of a shard (under the owner's lease).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerInfo {
    /// Owning node id.
    pub node: String,
    /// Its lease.
    pub lease: i64,
}

/// The etcd key layout under one cluster prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// Keys under `/mome/<cluster>/`.
    pub fn new(cluster: &str) -> Self {
        Keys {
            root: format!("/mome/{cluster}/"),
        }
    }

    /// Prefix of every key of the cluster.
    pub fn root(&self) -> &str {
        &self.root
    }
    /// The cluster config.
    pub fn config(&self) -> String {
        format!("{}config", self.root)
    }
    /// The id allocator's high-water mark.
    pub fn ids(&self) -> String {
        format!("{}ids", self.root)
    }
    /// Prefix of membership keys.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.root)
    }
    /// Membership key of a node.
    pub fn node(&self, id: &str) -> String {
        format!("{}nodes/{id}", self.root)
    }
    /// Prefix of drain marks.
    pub fn drains(&self) -> String {
        format!("{}drain/", self.root)
    }
    /// Drain mark of a node: shards move off it.
    pub fn drain(&self, id: &str) -> String {
        format!("{}drain/{id}", self.root)
    }
    /// Prefix of ownership keys.
    pub fn owners(&self) -> String {
        format!("{}owner/", self.root)
    }
    /// Ownership key of a shard.
    pub fn owner(&self, shard: u32) -> String {
        format!("{}owner/{shard:05}", self.root)
    }
    /// Prefix of manifests.
    pub fn manifests(&self) -> String {
        format!("{}manifest/", self.root)
    }
    /// Manifest of a shard.
    pub fn manifest(&self, shard: u32) -> String {
        format!("{}manifest/{shard:05}", self.root)
    }
    /// Prefix of readiness marks (a node has loaded a shard's latest manifest).
    pub fn readies(&self) -> String {
        format!("{}ready/", self.root)
    }
    /// Readiness mark of a node for a shard.
    pub fn ready(&self, shard: u32, node: &str) -> String {
        format!("{}ready/{shard:05}/{node}", self.root)
    }
    /// Shard number of an ownership, manifest or readiness key.
    pub fn shard_in(&self, key: &str, prefix: &str) -> Option<u32> {
        let rest = key.strip_prefix(prefix)?;
        rest.get(..5)?.parse().ok()
    }
    /// Object-storage prefix of a shard's segments.
    pub fn segment_prefix(cluster: &str, shard: u32) -> String {
        format!("{cluster}/shards/{shard:05}/")
    }
}

/// Rendezvous (highest-random-weight) order of `nodes` for `shard`: the first is the
/// preferred owner, the first `replicas` serve it. Deterministic for a given set, and
/// a node joining or leaving moves only the shards it ranks first or last for.
pub fn rendezvous<'a>(shard: u32, nodes: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<(u64, &str)> = nodes
        .into_iter()
        .map(|n| (mix64(fnv1a(n.as_bytes()) ^ mix64(u64::from(shard) + 1)), n))
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    v.into_iter().map(|(_, n)| n).collect()
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_spread_evenly() {
        let mut counts = [0u32; 8];
        for id in 0..80_000u64 {
            counts[shard_of(id, 8) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn rendezvous_moves_only_what_it_must() {
        let three = ["a", "b", "c"];
        let two = ["a", "b"];
        let mut moved = 0;
        for s in 0..300 {
            let r3 = rendezvous(s, three);
            let r2 = rendezvous(s, two);
            assert_eq!(r3.len(), 3);
            if r3[0] != "c" {
                // c leaving changes nothing for shards c did not rank first.
                assert_eq!(r3[0], r2[0]);
            } else {
                moved += 1;
            }
        }
        assert!((60..140).contains(&moved), "{moved}");
    }

    #[test]
    fn keys_parse_back() {
        let k = Keys::new("t");
        assert_eq!(k.shard_in(&k.owner(42), &k.owners()), Some(42));
        assert_eq!(k.shard_in(&k.ready(7, "n1"), &k.readies()), Some(7));
        assert_eq!(k.shard_in("/mome/t/owner/x", &k.owners()), None);
    }

    #[test]
    fn config_bounds() {
        let mut c = ClusterConfig::new(StoreConfig::new(8, 8, 2, vec![0]), 4);
        c.validate().unwrap();
        c.gc_grace_s = c.lease_ttl_s;
        assert!(c.validate().is_err());
        c.gc_grace_s = 4 * c.lease_ttl_s;
        c.etcd_history_s = 0;
        c.validate().unwrap();
        c.etcd_history_s = 86_401;
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_config_without_etcd_history_gets_the_default() {
        let c = ClusterConfig::new(StoreConfig::new(8, 8, 2, vec![0]), 4);
        let mut v = serde_json::to_value(&c).unwrap();
        v.as_object_mut().unwrap().remove("etcd_history_s");
        let old: ClusterConfig = serde_json::from_value(v).unwrap();
        assert_eq!(old.etcd_history_s, DEFAULT_ETCD_HISTORY_S);
        assert_eq!(old, c);
    }
}
