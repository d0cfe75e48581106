//! A live, watch-driven copy of the cluster's etcd state: members, drain marks,
//! owners, manifests and readiness marks. Nodes and routers both hold one; a router
//! "follows" shard moves by nothing more than this watch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchOptions};
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::manifest::{rendezvous, ClusterConfig, Keys, Manifest, NodeInfo, OwnerInfo};

/// An owner as seen in etcd: who, and the fencing token (the key's create revision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Owning node and lease.
    pub info: OwnerInfo,
    /// Create revision of the ownership key: the fencing token.
    pub token: i64,
}

/// A manifest with the revision at which it was last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The manifest.
    pub manifest: Manifest,
    /// Mod revision of the manifest key.
    pub revision: i64,
}

/// The cluster's state at one etcd revision.
#[derive(Clone, Debug, Default)]
pub struct ViewState {
    /// The etcd revision this state reflects.
    pub revision: i64,
    /// Live members by id.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Nodes marked for draining.
    pub drains: BTreeSet<String>,
    /// Owner of each owned shard.
    pub owners: BTreeMap<u32, Owner>,
    /// Latest manifest of each written shard. Shared (`Arc`): the copy of the state that
    /// each watch response makes copies pointers, not the segment lists.
    pub manifests: BTreeMap<u32, Arc<Versioned>>,
    /// (shard, node) pairs where the node has loaded the shard's latest manifest.
    pub readies: BTreeSet<(u32, String)>,
}

impl ViewState {
    /// Members that can take shards: live and not draining, sorted.
    pub fn placeable(&self) -> Vec<&str> {
        self.nodes
            .keys()
            .filter(|n| !self.drains.contains(*n))
            .map(String::as_str)
            .collect()
    }

    /// Nodes that should serve `shard`, best first: the rendezvous order of the
    /// placeable members, cut at `replicas`.
    pub fn placement(&self, shard: u32, replicas: u32) -> Vec<&str> {
        let mut v = rendezvous(shard, self.placeable());
        v.truncate(replicas as usize);
        v
    }

    /// Where to read `shard`, best first: its placement, then the owner if it is not in
    /// it (a move in progress), then every other live member (a node that still holds the
    /// shard from before a change answers; one that does not says so and is skipped).
    pub fn read_order(&self, shard: u32, replicas: u32) -> Vec<String> {
        let mut v: Vec<String> = self
            .placement(shard, replicas)
            .into_iter()
            .map(str::to_string)
            .collect();
        if let Some(o) = self.owners.get(&shard) {
            if self.nodes.contains_key(&o.info.node) && !v.contains(&o.info.node) {
                v.push(o.info.node.clone());
            }
        }
        for n in rendezvous(shard, self.nodes.keys().map(String::as_str)) {
            if !v.iter().any(|x| x == n) {
                v.push(n.to_string());
            }
        }
        v
    }

    /// Address of a live node.
    pub fn addr(&self, node: &str) -> Option<&str> {
        self.nodes.get(node).map(|n| n.addr.as_str())
    }

    /// Manifest revision of a shard (0 when never written).
    pub fn manifest_revision(&self, shard: u32) -> i64 {
        self.manifests.get(&shard).map_or(0, |m| m.revision)
    }
}

/// A shared, watch-updated [`ViewState`].
pub struct ClusterView {
    state: RwLock<Arc<ViewState>>,
    changed: watch::Sender<i64>,
    keys: Keys,
    /// Full reloads after the first load (the watch failed, ended, or fell behind
    /// compacted history).
    reloads: AtomicU64,
    /// Of those, the ones because the watch's next revision was compacted away.
    compacted_reloads: AtomicU64,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterView(rev {})", self.state.read().revision)
    }
}

impl ClusterView {
    /// Loads the state and keeps it up to date from a watch, in a task of the current
    /// runtime, until the returned view is dropped.
    pub async fn start(client: etcd_client::Client, keys: Keys) -> Result<Arc<Self>> {
        let (tx, _rx) = watch::channel(0);
        let view = Arc::new(ClusterView {
            state: RwLock::new(Arc::new(ViewState::default())),
            changed: tx,
            keys,
            reloads: AtomicU64::new(0),
            compacted_reloads: AtomicU64::new(0),
        });
        let rev = view.reload(&client).await?;
        let weak = Arc::downgrade(&view);
        tokio::spawn(async move { watch_loop(weak, client, rev).await });
        Ok(view)
    }

    /// The current state.
    pub fn state(&self) -> Arc<ViewState> {
        self.state.read().clone()
    }

    /// Full reloads since the first load: each time the watch failed, ended, or fell
    /// behind etcd's compacted history, the state was read again from a fresh snapshot.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Of [`Self::reloads`], those because the watch lagged past a compaction (etcd
    /// canceled it with a compact revision).
    pub fn compacted_reloads(&self) -> u64 {
        self.compacted_reloads.load(Ordering::Relaxed)
    }

    /// A receiver notified at every change (the value is the etcd revision).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.changed.subscribe()
    }

    /// Waits until `pred` holds for the state, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&ViewState) -> bool,
    ) -> Result<Arc<ViewState>> {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.state();
            if pred(&s) {
                return Ok(s);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    ms: timeout.as_millis() as u64,
                });
            }
        }
    }

    /// Reads everything under the cluster prefix, as one snapshot in pages
    /// ([`crate::coord::scan_prefix`]); returns the revision read at (the watch goes on
    /// from the next one).
    async fn reload(&self, client: &etcd_client::Client) -> Result<i64> {
        let keys = &self.keys;
        let (rev, mut s) = crate::coord::scan_prefix(
            client,
            keys.root(),
            "reading the cluster state",
            ViewState::default,
            |s, kv| apply_put(keys, s, kv),
        )
        .await?;
        s.revision = rev;
        *self.state.write() = Arc::new(s);
        self.changed.send_replace(rev);
        Ok(rev)
    }

    /// Applies one watch response to a copy of the state (readers keep the state they
    /// hold): a shallow copy, the manifests being shared.
    fn apply_events(&self, rev: i64, events: &[etcd_client::Event]) {
        let mut s = (*self.state()).clone();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => apply_put(&self.keys, &mut s, kv),
                EventType::Delete => apply_delete(&self.keys, &mut s, kv),
            }
        }
        s.revision = s.revision.max(rev);
        *self.state.write() = Arc::new(s);
        self.changed.send_replace(rev);
    }
}

fn parse<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(kv.value()) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "unparsable value ignored");
            None
        }
    }
}

fn apply_put(keys: &Keys, s: &mut ViewState, kv: &KeyValue) {
    let Ok(key) = kv.key_str() else { return };
    if let Some(id) = key.strip_prefix(&keys.nodes()) {
        if let Some(n) = parse::<NodeInfo>(kv) {
            s.nodes.insert(id.to_string(), n);
        }
    } else if let Some(id) = key.strip_prefix(&keys.drains()) {
        s.drains.insert(id.to_string());
    } else if let Some(shard) = keys.shard_in(key, &keys.owners()) {
        if let Some(info) = parse::<OwnerInfo>(kv) {
            s.owners.insert(
                shard,
                Owner {
                    info,
                    token: kv.create_revision(),
                },
            );
        }
    } else if let Some(shard) = keys.shard_in(key, &keys.manifests()) {
        if let Some(manifest) = parse::<Manifest>(kv) {
            s.manifests.insert(
                shard,
                Arc::new(Versioned {
                    manifest,
                    revision: kv.mod_revision(),
                }),
            );
        }
    } else if let Some(shard) = keys.shard_in(key, &keys.readies()) {
        if let Some(node) = key.strip_prefix(&keys.readies()).and_then(|r| r.get(6..)) {
            s.readies.insert((shard, node.to_string()));
        }
    }
}

fn apply_delete(keys: &Keys, s: &mut ViewState, kv: &KeyValue) {
    let Ok(key) = kv.key_str() else { return };
    if let Some(id) = key.strip_prefix(&keys.nodes()) {
        s.nodes.remove(id);
    } else if let Some(id) = key.strip_prefix(&keys.drains()) {
        s.drains.remove(id);
    } else if let Some(shard) = keys.shard_in(key, &keys.owners()) {
        s.owners.remove(&shard);
    } else if let Some(shard) = keys.shard_in(key, &keys.manifests()) {
        s.manifests.remove(&shard);
    } else if let Some(shard) = keys.shard_in(key, &keys.readies()) {
        if let Some(node) = key.strip_prefix(&keys.readies()).and_then(|r| r.get(6..)) {
            s.readies.remove(&(shard, node.to_string()));
        }
    }
}

/// Follows the prefix from `rev + 1`; on any stream end or error, reloads and watches
/// again (with a pause that grows to 2 s), until the view is dropped. A watch whose next
/// revision etcd has compacted away (a view that lagged past the history's retention,
/// `history.rs`) is canceled by etcd with the compact revision: the events in between
/// are gone, so the view is read again from a fresh snapshot, the same as after an
/// error, and the watch goes on from that snapshot.
async fn watch_loop(view: std::sync::Weak<ClusterView>, client: etcd_client::Client, mut rev: i64) {
    let mut watcher = client
        .watch_client()
        .max_decoding_message_size(crate::coord::MAX_DECODE_BYTES);
    let mut pause = Duration::from_millis(50);
    loop {
        let Some(v) = view.upgrade() else { return };
        let prefix = v.keys.root().to_string();
        drop(v);
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        match watcher.watch(prefix, Some(opts)).await {
            Ok(mut stream) => loop {
                let msg = tokio::time::timeout(Duration::from_secs(1), stream.message()).await;
                let Some(v) = view.upgrade() else { return };
                match msg {
                    Err(_) => continue, // idle: check the view is still wanted
                    Ok(Ok(Some(resp))) => {
                        if resp.compact_revision() > 0 {
                            tracing::warn!(
                                rev,
                                compacted = resp.compact_revision(),
                                "watch fell behind compacted history; reloading"
                            );
                            v.compacted_reloads.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        if resp.canceled() {
                            tracing::warn!(
                                rev,
                                reason = resp.cancel_reason(),
                                "watch canceled; reloading"
                            );
                            break;
                        }
                        let r = resp.header().map_or(rev, |h| h.revision());
                        if !resp.events().is_empty() {
                            v.apply_events(r, resp.events());
                        }
                        rev = rev.max(r);
                        pause = Duration::from_millis(50);
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "watch failed; reloading");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot start watch"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
        let Some(v) = view.upgrade() else { return };
        match v.reload(&client).await {
            Ok(r) => {
                rev = r;
                v.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "reload failed"),
        }
    }
}

/// Reads and checks the cluster config.
pub async fn read_config(
    client: &mut etcd_client::Client,
    keys: &Keys,
    cluster: &str,
) -> Result<ClusterConfig> {
    let resp = crate::coord::retry(|| {
        let mut c = client.clone();
        let k = keys.config();
        async move { c.get(k, None).await }
    })
    .await
    .map_err(|e| Error::etcd("reading the cluster config", e))?;
    let kv = resp.kvs().first().ok_or_else(|| Error::NoCluster {
        cluster: cluster.to_string(),
    })?;
    let c: ClusterConfig = serde_json::from_slice(kv.value()).map_err(|e| Error::CorruptMeta {
        key: keys.config(),
        reason: e.to_string(),
    })?;
    c.validate().map_err(|reason| Error::CorruptMeta {
        key: keys.config(),
        reason,
    })?;
    Ok(c)
}
