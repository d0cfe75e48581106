//! The node process: membership under a lease, the shards it serves (each a local
//! [`Replica`] of the embedded engine filled from segments), ownership of the shards it
//! writes (one writer task each: batch, upload a delta, fenced commit, compaction,
//! collection of unreferenced objects), and the RPC server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};

use crate::coord::{self, Commit};
use crate::error::{Error, Result};
use crate::manifest::{shard_of, ClusterConfig, Keys, Manifest, NodeInfo, SegmentRef};
use crate::objects::{Objects, S3Url};
use crate::replica::Replica;
use crate::rpc::{self, NodeRpc, NodeServer};
use crate::segment::{ClusterExpert, SegmentBuilder, SegmentKind, SegmentView};
use crate::view::{ClusterView, Versioned, ViewState};

/// Longest a search or fetch waits for a replica to reach the asked revision.
const MAX_WAIT_MS: u32 = 10_000;
/// Largest `k` a search may ask for.
pub const MAX_K: u32 = 4096;
/// Longest a write waits for its commit.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// Cluster name (the etcd prefix and the object-storage prefix).
    pub cluster: String,
    /// Bucket of the segments.
    pub s3: S3Url,
    /// Address to listen on for RPC.
    pub listen: SocketAddr,
    /// Address other processes reach this node at (default: the listen address).
    pub advertise: Option<String>,
    /// Directory for the local caches (wiped at start: a cache is rebuilt from segments).
    pub data_dir: PathBuf,
    /// Node id (default: derived from the advertised address).
    pub id: Option<String>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One served shard.
struct Slot {
    shard: u32,
    replica: RwLock<Arc<Replica>>,
    /// Serialises syncs, local applies of commits, and compactions.
    sync: tokio::sync::Mutex<()>,
    /// Applied manifest revision, for waiters.
    rev: watch::Sender<i64>,
    syncing: AtomicBool,
    ready_marked: AtomicBool,
}

impl Slot {
    fn replica(&self) -> Arc<Replica> {
        self.replica.read().clone()
    }
}

/// What a committed write reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Manifest revision holding the write.
    pub revision: i64,
    /// Manifest generation.
    pub generation: u64,
    /// Inserted ids that were already present.
    pub already_present: Vec<u64>,
}

struct WriteJob {
    inserts: Vec<ClusterExpert>,
    deletes: Vec<u64>,
    bytes: usize,
    reply: oneshot::Sender<Result<WriteOutcome>>,
}

enum WriterMsg {
    Write(WriteJob),
    Stop(oneshot::Sender<()>),
}

struct Owned {
    token: i64,
    tx: mpsc::Sender<WriterMsg>,
}

struct Inner {
    id: String,
    addr: String,
    cluster: String,
    keys: Keys,
    config: ClusterConfig,
    etcd: etcd_client::Client,
    objects: Objects,
    view: Arc<ClusterView>,
    lease: AtomicI64,
    slots: RwLock<HashMap<u32, Arc<Slot>>>,
    owned: Mutex<HashMap<u32, Owned>>,
    cache_dir: PathBuf,
    dir_counter: AtomicU64,
    stopping: AtomicBool,
    /// Test hook (`MOME_FAULT_COMMIT_DELAY_MS`): a pause between a delta's upload and
    /// its commit, so that a test can stop the owner inside that window.
    fault_commit_delay: Option<Duration>,
}

/// Runs a node until `shutdown` completes, then leaves the cluster cleanly (ownerships
/// released, lease revoked). `on_ready` receives the bound address once the node is
/// registered and serving.
pub async fn run(
    opts: NodeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr) + Send,
) -> Result<()> {
    let mut etcd = coord::connect(&opts.etcd).await?;
    let keys = Keys::new(&opts.cluster);
    let config = crate::view::read_config(&mut etcd, &keys, &opts.cluster).await?;
    let objects = Objects::open(&opts.s3)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::io(format!("listen {}", opts.listen), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(format!("listen {}", opts.listen), e))?;
    let addr = opts.advertise.clone().unwrap_or_else(|| bound.to_string());
    let id = opts
        .id
        .clone()
        .unwrap_or_else(|| format!("node-{}", addr.replace([':', '.'], "-")));
    let cache_dir = opts.data_dir.join("replicas");
    if cache_dir.exists() {
        std::fs::remove_dir_all(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    }
    std::fs::create_dir_all(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    let view = ClusterView::start(etcd.clone(), keys.clone()).await?;
    let inner = Arc::new(Inner {
        id,
        addr,
        cluster: opts.cluster.clone(),
        keys,
        config,
        etcd,
        objects,
        view,
        lease: AtomicI64::new(0),
        slots: RwLock::new(HashMap::new()),
        owned: Mutex::new(HashMap::new()),
        cache_dir,
        dir_counter: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        fault_commit_delay: std::env::var("MOME_FAULT_COMMIT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
    });
    inner.register().await?;
    tracing::info!(node = %inner.id, addr = %inner.addr, "node registered");

    let (stop_tx, stop_rx) = watch::channel(false);
    let svc = NodeServer::new(Service {
        inner: inner.clone(),
    })
    .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES);
    let mut srv_stop = stop_rx.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .timeout(Duration::from_secs(60))
            .add_service(svc)
            .serve_with_incoming_shutdown(
                // Nagle off on accepted sockets: a reply's frames otherwise wait for the
                // peer's delayed ACK (≈ 40 ms per call measured before this).
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = srv_stop.wait_for(|s| *s).await;
                },
            ),
    );
    let keepalive = tokio::spawn(keepalive_loop(inner.clone(), stop_rx.clone()));
    let reconcile = tokio::spawn(reconcile_loop(inner.clone(), stop_rx.clone()));
    // etcd's history: the smallest live member compacts it (`history.rs`).
    let history = crate::history::HistoryPolicy::from_config(&inner.config).map(|policy| {
        let me = inner.clone();
        tokio::spawn(crate::history::run(
            inner.etcd.clone(),
            inner.keys.clone(),
            policy,
            Some(crate::defrag::DefragPolicy::default()),
            move || crate::history::is_compactor(&me.view.state(), &me.id),
            stop_rx.clone(),
        ))
    });
    on_ready(bound);

    shutdown.await;
    tracing::info!(node = %inner.id, "shutting down");
    inner.stopping.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let _ = reconcile.await;
    let _ = keepalive.await;
    if let Some(h) = history {
        let _ = h.await;
    }
    inner.leave().await;
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Connect {
            addr: inner.addr.clone(),
            reason: e.to_string(),
        }),
        Err(e) => Err(Error::Connect {
            addr: inner.addr.clone(),
            reason: e.to_string(),
        }),
    }
}

impl Inner {
    fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    fn slot(&self, shard: u32) -> Option<Arc<Slot>> {
        self.slots.read().get(&shard).cloned()
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.lease_ttl_s)
    }

    /// Grants a lease and creates the membership key under it, only if no key of the
    /// same id exists (a previous incarnation's key lives until its lease ends: wait
    /// for that, at most 3 TTLs).
    async fn register(&self) -> Result<()> {
        let mut etcd = self.etcd.clone();
        let deadline = Instant::now() + 3 * self.ttl() + Duration::from_secs(2);
        let info = NodeInfo {
            id: self.id.clone(),
            addr: self.addr.clone(),
            started_ms: now_ms(),
        };
        let value = serde_json::to_vec(&info).map_err(|e| Error::invalid(e.to_string()))?;
        loop {
            let ttl = self.config.lease_ttl_s as i64;
            let lease = coord::retry(|| {
                let mut c = etcd.clone();
                async move { c.lease_grant(ttl, None).await }
            })
            .await
            .map_err(|e| Error::etcd("granting the node lease", e))?
            .id();
            let key = self.keys.node(&self.id);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let r = coord::retry(|| {
                let (mut c, t) = (etcd.clone(), txn.clone());
                async move { c.txn(t).await }
            })
            .await
            .map_err(|e| Error::etcd("registering the node", e))?;
            if r.succeeded() {
                self.lease.store(lease, Ordering::SeqCst);
                for s in self.slots.read().values() {
                    s.ready_marked.store(false, Ordering::SeqCst);
                }
                return Ok(());
            }
            let _ = etcd.lease_revoke(lease).await;
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "registering node {}: its id is held by a live member",
                        self.id
                    ),
                    ms: (3 * self.ttl()).as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The lease ended while we were away (paused, partitioned): everything held under
    /// it is gone. Stop every writer (their commits would be fenced anyway) and join again.
    async fn on_lease_lost(&self) {
        tracing::warn!(node = %self.id, "lease lost; dropping ownerships and registering again");
        let owned: Vec<(u32, Owned)> = self.owned.lock().drain().collect();
        for (shard, o) in owned {
            stop_writer(shard, o).await;
        }
        let mut pause = Duration::from_millis(200);
        while !self.stopping.load(Ordering::SeqCst) {
            match self.register().await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "re-registering failed"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn leave(&self) {
        let owned: Vec<(u32, Owned)> = self.owned.lock().drain().collect();
        let mut etcd = self.etcd.clone();
        for (shard, o) in owned {
            let token = o.token;
            stop_writer(shard, o).await;
            if let Err(e) = coord::release(&mut etcd, &self.keys, shard, token).await {
                tracing::warn!(shard, error = %e, "release on shutdown failed");
            }
        }
        let lease = self.lease();
        let revoked = coord::retry(|| {
            let mut c = etcd.clone();
            async move { c.lease_revoke(lease).await }
        })
        .await;
        if let Err(e) = revoked {
            tracing::warn!(error = %e, "lease revoke on shutdown failed");
        }
    }

    fn new_replica_dir(&self, shard: u32) -> PathBuf {
        let n = self.dir_counter.fetch_add(1, Ordering::SeqCst);
        self.cache_dir.join(format!("shard-{shard:05}-{n}"))
    }

    async fn new_replica(&self, shard: u32) -> Result<Replica> {
        let dir = self.new_replica_dir(shard);
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || Replica::create(&dir, shard, &config))
            .await
            .map_err(|e| Error::invalid(format!("replica task: {e}")))?
    }

    async fn download_apply(&self, replica: &Arc<Replica>, seg: &SegmentRef) -> Result<()> {
        let bytes = self.objects.get(&seg.name).await?;
        let r = replica.clone();
        let name = seg.name.clone();
        let store = self.config.store.clone();
        tokio::task::spawn_blocking(move || r.apply(&name, &bytes, &store))
            .await
            .map_err(|e| Error::invalid(format!("apply task: {e}")))?
    }

    /// Brings a slot to `target` (the view's manifest when `None`); the caller holds
    /// `slot.sync`. Follows appended deltas in place, adopts a compaction of exactly the
    /// applied generation, and otherwise rebuilds the replica from the manifest's segments.
    async fn sync_locked(&self, slot: &Slot, target: Option<Versioned>) -> Result<()> {
        let target = match target {
            Some(t) => t,
            None => match self.view.state().manifests.get(&slot.shard) {
                Some(v) => Versioned::clone(v),
                None => return Ok(()),
            },
        };
        let replica = slot.replica();
        let applied = replica.applied();
        if target.revision <= applied.revision {
            return Ok(());
        }
        let have = &applied.manifest.segments;
        let want = &target.manifest.segments;
        let prefix =
            want.len() >= have.len() && want.iter().zip(have).all(|(a, b)| a.name == b.name);
        let mut attempt = if prefix {
            let mut res = Ok(());
            for seg in &want[have.len()..] {
                res = self.download_apply(&replica, seg).await;
                if res.is_err() {
                    break;
                }
            }
            res.map(|()| {
                replica.set_applied(target.manifest.clone(), target.revision);
            })
        } else if target.manifest.compacted_from == Some(applied.manifest.generation)
            && applied.revision > 0
        {
            replica.set_applied(target.manifest.clone(), target.revision);
            Ok(())
        } else {
            Err(Error::invalid("not a continuation"))
        };
        if let Err(e) = &attempt {
            if prefix {
                tracing::warn!(shard = slot.shard, error = %e, "incremental sync failed; rebuilding");
            }
            // Rebuild from the newest manifest in etcd (the view's may be stale and a
            // segment it names already collected).
            let mut etcd = self.etcd.clone();
            let (m, rev) = coord::read_manifest(&mut etcd, &self.keys, slot.shard).await?;
            let fresh = Arc::new(self.new_replica(slot.shard).await?);
            for seg in &m.segments {
                self.download_apply(&fresh, seg).await?;
            }
            fresh.set_applied(m, rev);
            *slot.replica.write() = fresh;
            attempt = Ok(());
        }
        attempt?;
        let rev = slot.replica().applied().revision;
        slot.rev.send_replace(rev);
        Ok(())
    }

    fn spawn_sync(self: &Arc<Self>, slot: Arc<Slot>) {
        if slot.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let res = {
                let _g = slot.sync.lock().await;
                me.sync_locked(&slot, None).await
            };
            slot.syncing.store(false, Ordering::SeqCst);
            if let Err(e) = res {
                tracing::warn!(shard = slot.shard, error = %e, "sync failed; will retry");
            }
        });
    }

    async fn add_slot(self: &Arc<Self>, shard: u32) -> Result<()> {
        let replica = Arc::new(self.new_replica(shard).await?);
        let (rev, _) = watch::channel(0);
        let slot = Arc::new(Slot {
            shard,
            replica: RwLock::new(replica),
            sync: tokio::sync::Mutex::new(()),
            rev,
            syncing: AtomicBool::new(false),
            ready_marked: AtomicBool::new(false),
        });
        self.slots.write().insert(shard, slot.clone());
        self.spawn_sync(slot);
        Ok(())
    }

    async fn drop_slot(&self, shard: u32) {
        let slot = self.slots.write().remove(&shard);
        if slot.is_some() {
            let key = self.keys.ready(shard, &self.id);
            let _ = coord::retry(|| {
                let mut c = self.etcd.clone();
                let k = key.clone();
                async move { c.delete(k, None).await }
            })
            .await;
            tracing::info!(node = %self.id, shard, "no longer serving shard");
        }
    }

    /// Takes ownership of `shard` and starts its writer. The replica is first brought
    /// to the newest manifest so that the writer's compare-and-swap starts from it.
    async fn take(self: &Arc<Self>, shard: u32) -> Result<bool> {
        let Some(slot) = self.slot(shard) else {
            return Ok(false);
        };
        let mut etcd = self.etcd.clone();
        let Some(token) =
            coord::acquire(&mut etcd, &self.keys, shard, &self.id, self.lease()).await?
        else {
            return Ok(false);
        };
        let synced = {
            let _g = slot.sync.lock().await;
            match coord::read_manifest(&mut etcd, &self.keys, shard).await {
                Ok((manifest, revision)) => {
                    self.sync_locked(&slot, Some(Versioned { manifest, revision }))
                        .await
                }
                Err(e) => Err(e),
            }
        };
        if let Err(e) = synced {
            tracing::warn!(shard, error = %e, "cannot load shard after taking it; releasing");
            let _ = coord::release(&mut etcd, &self.keys, shard, token).await;
            return Err(e);
        }
        let (tx, rx) = mpsc::channel(1024);
        self.owned.lock().insert(shard, Owned { token, tx });
        tokio::spawn(writer_loop(self.clone(), shard, token, rx));
        tracing::info!(node = %self.id, shard, token, "owner of shard");
        Ok(true)
    }

    /// Hands a shard to its preferred node: stop the writer (its batch in flight
    /// finishes), then delete the ownership key if it is still ours.
    async fn give(&self, shard: u32) {
        let Some(o) = self.owned.lock().remove(&shard) else {
            return;
        };
        let token = o.token;
        stop_writer(shard, o).await;
        let mut etcd = self.etcd.clone();
        match coord::release(&mut etcd, &self.keys, shard, token).await {
            Ok(_) => tracing::info!(node = %self.id, shard, "released shard to its preferred node"),
            Err(e) => tracing::warn!(shard, error = %e, "release failed"),
        }
    }

    fn lost(&self, shard: u32, token: i64) {
        let mut owned = self.owned.lock();
        if owned.get(&shard).is_some_and(|o| o.token == token) {
            owned.remove(&shard);
            tracing::warn!(node = %self.id, shard, token, "ownership lost (fenced)");
        }
    }

    /// One writer batch: dedupe against the replica, upload a delta, fenced commit,
    /// local apply, replies. Returns whether the writer was fenced.
    async fn commit_jobs(&self, shard: u32, token: i64, jobs: Vec<WriteJob>) -> bool {
        let Some(slot) = self.slot(shard) else {
            for j in jobs {
                let _ = j.reply.send(Err(Error::NotOwner {
                    shard,
                    node: self.id.clone(),
                }));
            }
            return false;
        };
        let _g = slot.sync.lock().await;
        let replica = slot.replica();
        let applied = replica.applied();
        let generation = applied.manifest.generation + 1;
        let mut batch: BTreeMap<u64, ClusterExpert> = BTreeMap::new();
        let mut tombs: HashSet<u64> = HashSet::new();
        let mut already: Vec<Vec<u64>> = Vec::with_capacity(jobs.len());
        let now = now_ms();
        for j in &jobs {
            let mut a = Vec::new();
            for e in &j.inserts {
                if replica.contains(e.id) || batch.contains_key(&e.id) {
                    a.push(e.id);
                } else {
                    let mut e = e.clone();
                    e.created_at_ms = now;
                    batch.insert(e.id, e);
                }
            }
            for &d in &j.deletes {
                if batch.remove(&d).is_none() && replica.contains(d) {
                    tombs.insert(d);
                }
            }
            already.push(a);
        }
        let reply_all =
            |jobs: Vec<WriteJob>, res: &dyn Fn() -> Result<(i64, u64)>, already: Vec<Vec<u64>>| {
                for (j, a) in jobs.into_iter().zip(already) {
                    let _ = j
                        .reply
                        .send(res().map(|(revision, generation)| WriteOutcome {
                            revision,
                            generation,
                            already_present: a,
                        }));
                }
            };
        if batch.is_empty() && tombs.is_empty() {
            let (r, g) = (applied.revision, applied.manifest.generation);
            reply_all(jobs, &|| Ok((r, g)), already);
            return false;
        }
        let n_ins = batch.len() as u64;
        let n_del = tombs.len() as u64;
        let mut b = SegmentBuilder::new(SegmentKind::Delta, shard, generation, &self.config.store);
        let mut bad = None;
        for e in batch.into_values() {
            if let Err(e) = b.push(e) {
                bad = Some(e.to_string());
                break;
            }
        }
        for t in tombs {
            b.tombstone(t);
        }
        let bytes = match bad.map_or_else(|| b.finish().map_err(|e| e.to_string()), Err) {
            Ok(b) => b,
            Err(reason) => {
                reply_all(jobs, &|| Err(Error::invalid(reason.clone())), already);
                return false;
            }
        };
        let name = format!(
            "{}g{generation:012}-{}-{:016x}.seg",
            Keys::segment_prefix(&self.cluster, shard),
            self.id,
            rand::random::<u64>()
        );
        let size = bytes.len() as u64;
        let started = Instant::now();
        if let Err(e) = self.objects.put(&name, bytes.clone()).await {
            let msg = e.to_string();
            reply_all(
                jobs,
                &|| {
                    Err(Error::Unavailable {
                        shard,
                        reason: msg.clone(),
                    })
                },
                already,
            );
            return false;
        }
        // The collector deletes unreferenced objects older than the grace period; commit
        // only well inside it (an owner stalled here lets the object be collected).
        let limit = Duration::from_secs(self.config.gc_grace_s / 2);
        if started.elapsed() > limit {
            let ms = limit.as_millis() as u64;
            reply_all(
                jobs,
                &|| {
                    Err(Error::Timeout {
                        what: format!("committing {name} after its upload"),
                        ms,
                    })
                },
                already,
            );
            return false;
        }
        let mut manifest = applied.manifest.clone();
        manifest.v = crate::manifest::META_VERSION;
        manifest.shard = shard;
        manifest.generation = generation;
        manifest.live = manifest.live + n_ins - n_del.min(manifest.live + n_ins);
        manifest.compacted_from = None;
        manifest.segments.push(SegmentRef {
            name: name.clone(),
            kind: SegmentKind::Delta,
            experts: n_ins,
            tombstones: n_del,
            bytes: size,
        });
        if let Some(d) = self.fault_commit_delay {
            tracing::warn!(shard, object = %name, ms = d.as_millis() as u64, "fault injection: pausing before the commit");
            tokio::time::sleep(d).await;
        }
        let outcome = self
            .commit_resolved(&manifest, applied.revision, token, &name)
            .await;
        match outcome {
            Ok(Commit::Done(rev)) => {
                let r = replica.clone();
                let store = self.config.store.clone();
                let n = name.clone();
                let local = tokio::task::spawn_blocking(move || r.apply(&n, &bytes, &store)).await;
                match local {
                    Ok(Ok(())) => {
                        replica.set_applied(manifest, rev);
                        slot.rev.send_replace(rev);
                    }
                    other => {
                        // Committed and durable; only this cache is behind: rebuild it.
                        tracing::error!(
                            shard,
                            ?other,
                            "local apply of a committed segment failed; rebuilding"
                        );
                        if let Err(e) = self.sync_locked(&slot, None).await {
                            tracing::error!(shard, error = %e, "rebuild failed");
                        }
                    }
                }
                reply_all(jobs, &|| Ok((rev, generation)), already);
                false
            }
            Ok(Commit::Superseded(rev)) => {
                // In, but newer commits followed: follow the manifest instead of applying
                // this segment alone on top of a stale state.
                if let Err(e) = self.sync_locked(&slot, None).await {
                    tracing::warn!(shard, error = %e, "sync after a superseded commit failed");
                }
                reply_all(jobs, &|| Ok((rev, generation)), already);
                false
            }
            Ok(Commit::Fenced) => {
                tracing::warn!(shard, token, object = %name, "commit refused: fenced");
                reply_all(jobs, &|| Err(Error::Fenced { shard, token }), already);
                true
            }
            Ok(Commit::Moved) => {
                reply_all(
                    jobs,
                    &|| {
                        Err(Error::Unavailable {
                            shard,
                            reason: "manifest moved under the owner; retry".into(),
                        })
                    },
                    already,
                );
                let _ = self.sync_locked(&slot, None).await;
                false
            }
            Err(e) => {
                // Outcome unknown: the retry is safe (inserts are deduplicated by id).
                let msg = e.to_string();
                reply_all(
                    jobs,
                    &|| {
                        Err(Error::Unavailable {
                            shard,
                            reason: format!("commit outcome unknown: {msg}"),
                        })
                    },
                    already,
                );
                let mut etcd = self.etcd.clone();
                if let Ok((m, r)) = coord::read_manifest(&mut etcd, &self.keys, shard).await {
                    let _ = self
                        .sync_locked(
                            &slot,
                            Some(Versioned {
                                manifest: m,
                                revision: r,
                            }),
                        )
                        .await;
                }
                false
            }
        }
    }

    /// The fenced commit, with an unknown outcome (etcd unreachable mid-request)
    /// resolved: read the manifest back; if it names `object` the commit happened,
    /// otherwise try the same compare-and-swap again (at most 6 tries, 100 ms apart).
    async fn commit_resolved(
        &self,
        manifest: &Manifest,
        seen: i64,
        token: i64,
        object: &str,
    ) -> Result<Commit> {
        let mut etcd = self.etcd.clone();
        let mut last = None;
        for attempt in 0..6 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match coord::read_manifest(&mut etcd, &self.keys, manifest.shard).await {
                    Ok((m, rev)) if m.segments.iter().any(|s| s.name == object) => {
                        return Ok(if m.generation == manifest.generation {
                            Commit::Done(rev)
                        } else {
                            Commit::Superseded(rev)
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            match coord::commit(&mut etcd, &self.keys, manifest, seen, token).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(shard = manifest.shard, error = %e, "commit outcome unknown; resolving");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(Error::ShuttingDown))
    }

    /// Merges every segment of the shard into base segments (parts of at most
    /// `max_segment_bytes`) when deltas exceed `max_deltas`, through the same fenced
    /// compare-and-swap as a write.
    async fn maybe_compact(&self, shard: u32, token: i64) -> Result<()> {
        let Some(slot) = self.slot(shard) else {
            return Ok(());
        };
        let _g = slot.sync.lock().await;
        let replica = slot.replica();
        let applied = replica.applied();
        if applied.manifest.deltas() <= self.config.max_deltas as usize {
            return Ok(());
        }
        let t0 = Instant::now();
        let mut all: BTreeMap<u64, ClusterExpert> = BTreeMap::new();
        for seg in &applied.manifest.segments {
            let bytes = self.objects.get(&seg.name).await?;
            let v = SegmentView::parse(&bytes).map_err(|source| Error::Segment {
                object: seg.name.clone(),
                source,
            })?;
            for i in 0..v.len() {
                let e = v.expert(i).map_err(|source| Error::Segment {
                    object: seg.name.clone(),
                    source,
                })?;
                all.insert(e.id, e);
            }
            for t in v.tombstones() {
                all.remove(&t);
            }
        }
        if all.len() != replica.len() {
            tracing::error!(
                shard,
                segments = all.len(),
                replica = replica.len(),
                "replica differs from its segments"
            );
        }
        let generation = applied.manifest.generation + 1;
        let live = all.len() as u64;
        let mut parts = Vec::new();
        let mut b = SegmentBuilder::new(SegmentKind::Base, shard, generation, &self.config.store);
        for e in all.into_values() {
            b.push(e).map_err(|source| Error::Segment {
                object: "compaction".into(),
                source,
            })?;
            if b.payload_bytes() as u64 >= self.config.max_segment_bytes {
                let full = std::mem::replace(
                    &mut b,
                    SegmentBuilder::new(SegmentKind::Base, shard, generation, &self.config.store),
                );
                parts.push(full);
            }
        }
        if !b.is_empty() || parts.is_empty() {
            parts.push(b);
        }
        let mut refs = Vec::new();
        for (p, part) in parts.into_iter().enumerate() {
            let experts = part.len() as u64;
            let bytes = part.finish().map_err(|source| Error::Segment {
                object: "compaction".into(),
                source,
            })?;
            let name = format!(
                "{}g{generation:012}-base{p:04}-{}-{:016x}.seg",
                Keys::segment_prefix(&self.cluster, shard),
                self.id,
                rand::random::<u64>()
            );
            let size = bytes.len() as u64;
            self.objects.put(&name, bytes).await?;
            refs.push(SegmentRef {
                name,
                kind: SegmentKind::Base,
                experts,
                tombstones: 0,
                bytes: size,
            });
        }
        if t0.elapsed() > Duration::from_secs(self.config.gc_grace_s / 2) {
            return Err(Error::Timeout {
                what: format!("compaction of shard {shard}"),
                ms: t0.elapsed().as_millis() as u64,
            });
        }
        let manifest = Manifest {
            v: crate::manifest::META_VERSION,
            shard,
            generation,
            segments: refs,
            live,
            compacted_from: Some(applied.manifest.generation),
        };
        let mut etcd = self.etcd.clone();
        match coord::commit(&mut etcd, &self.keys, &manifest, applied.revision, token).await? {
            Commit::Done(rev) => {
                tracing::info!(
                    shard,
                    generation,
                    live,
                    ms = t0.elapsed().as_millis() as u64,
                    "compacted"
                );
                replica.set_applied(manifest, rev);
                slot.rev.send_replace(rev);
                Ok(())
            }
            Commit::Fenced => Err(Error::Fenced { shard, token }),
            Commit::Moved => Ok(()),
            Commit::Superseded(_) => {
                self.sync_locked(&slot, None).await?;
                Ok(())
            }
        }
    }

    /// Deletes the shard's objects that the current manifest does not name and that
    /// are older than the grace period. Lists first, reads the manifest second: an
    /// object uploaded after the listing is not considered.
    async fn collect(&self, shard: u32) -> Result<usize> {
        let listed = self
            .objects
            .list(&Keys::segment_prefix(&self.cluster, shard))
            .await?;
        let mut etcd = self.etcd.clone();
        let (m, _) = coord::read_manifest(&mut etcd, &self.keys, shard).await?;
        let live: HashSet<&str> = m.segments.iter().map(|s| s.name.as_str()).collect();
        let grace = self.config.gc_grace_s * 1000;
        let now = now_ms();
        let mut n = 0;
        for o in listed {
            if !live.contains(o.name.as_str()) && now.saturating_sub(o.modified_ms) > grace {
                self.objects.delete(&o.name).await?;
                tracing::info!(shard, object = %o.name, "collected unreferenced object");
                n += 1;
            }
        }
        Ok(n)
    }
}

async fn stop_writer(shard: u32, o: Owned) {
    let (ack, done) = oneshot::channel();
    if o.tx.send(WriterMsg::Stop(ack)).await.is_ok()
        && tokio::time::timeout(WRITE_TIMEOUT, done).await.is_err()
    {
        tracing::warn!(shard, "writer did not stop in time");
    }
}

fn refuse_rest(rx: &mut mpsc::Receiver<WriterMsg>, shard: u32, node: &str) {
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            WriterMsg::Write(j) => {
                let _ = j.reply.send(Err(Error::NotOwner {
                    shard,
                    node: node.to_string(),
                }));
            }
            WriterMsg::Stop(ack) => {
                let _ = ack.send(());
            }
        }
    }
}

async fn writer_loop(inner: Arc<Inner>, shard: u32, token: i64, mut rx: mpsc::Receiver<WriterMsg>) {
    let every = Duration::from_secs((inner.config.gc_grace_s / 4).clamp(1, 300));
    let mut gc = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let limit = (inner.config.max_segment_bytes / 2) as usize;
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                let mut jobs = Vec::new();
                let mut stop = None;
                match msg {
                    WriterMsg::Write(j) => jobs.push(j),
                    WriterMsg::Stop(ack) => stop = Some(ack),
                }
                // Group commit: everything that queued while the last batch committed.
                let mut bytes = jobs.first().map_or(0, |j| j.bytes);
                while stop.is_none() && bytes < limit {
                    match rx.try_recv() {
                        Ok(WriterMsg::Write(j)) => {
                            bytes += j.bytes;
                            jobs.push(j);
                        }
                        Ok(WriterMsg::Stop(ack)) => stop = Some(ack),
                        Err(_) => break,
                    }
                }
                if !jobs.is_empty() {
                    let fenced = inner.commit_jobs(shard, token, jobs).await;
                    let fenced = fenced || match inner.maybe_compact(shard, token).await {
                        Err(Error::Fenced { .. }) => true,
                        Err(e) => {
                            tracing::warn!(shard, error = %e, "compaction failed");
                            false
                        }
                        Ok(()) => false,
                    };
                    if fenced {
                        inner.lost(shard, token);
                        refuse_rest(&mut rx, shard, &inner.id);
                        if let Some(ack) = stop {
                            let _ = ack.send(());
                        }
                        return;
                    }
                }
                if let Some(ack) = stop {
                    refuse_rest(&mut rx, shard, &inner.id);
                    let _ = ack.send(());
                    return;
                }
            }
            _ = gc.tick() => {
                if let Err(e) = inner.collect(shard).await {
                    tracing::warn!(shard, error = %e, "collection failed");
                }
            }
        }
    }
}

async fn keepalive_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let every = inner.ttl() / 3;
    let mut etcd = inner.etcd.clone();
    while !*stop.borrow() {
        let lease = inner.lease();
        let mut lost = false;
        match etcd.lease_keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(inner.ttl(), stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => {
                        lost = true;
                        break;
                    }
                    _ => break,
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            },
            Err(e) => tracing::warn!(error = %e, "lease keep-alive stream failed"),
        }
        if lost {
            inner.on_lease_lost().await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

async fn reconcile_loop(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut changes = inner.view.subscribe();
    let mut ownerless_since: HashMap<u32, Instant> = HashMap::new();
    loop {
        let state = inner.view.state();
        reconcile(&inner, &state, &mut ownerless_since).await;
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn reconcile(inner: &Arc<Inner>, s: &ViewState, ownerless_since: &mut HashMap<u32, Instant>) {
    if inner.stopping.load(Ordering::SeqCst) || !s.nodes.contains_key(&inner.id) {
        return; // not (yet, or no longer) a member in this view
    }
    let r = inner.config.replicas;
    let owned: HashMap<u32, i64> = inner
        .owned
        .lock()
        .iter()
        .map(|(k, o)| (*k, o.token))
        .collect();
    for shard in 0..inner.config.shards {
        let placement = s.placement(shard, r);
        let rank = placement.iter().position(|n| *n == inner.id);
        let serve = rank.is_some() || owned.contains_key(&shard);
        let slot = inner.slot(shard);
        match (serve, &slot) {
            (true, None) => {
                if let Err(e) = inner.add_slot(shard).await {
                    tracing::warn!(shard, error = %e, "cannot create replica");
                }
                continue;
            }
            (false, Some(_)) => {
                inner.drop_slot(shard).await;
                continue;
            }
            (false, None) => continue,
            (true, Some(_)) => {}
        }
        let Some(slot) = slot else { continue };
        let latest = s.manifest_revision(shard);
        let applied = *slot.rev.borrow();
        if latest > applied {
            inner.spawn_sync(slot.clone());
        }
        let synced = applied >= latest;
        if synced && !slot.ready_marked.load(Ordering::SeqCst) {
            let (key, lease) = (inner.keys.ready(shard, &inner.id), inner.lease());
            let put = coord::retry(|| {
                let mut c = inner.etcd.clone();
                let k = key.clone();
                async move {
                    c.put(k, Vec::new(), Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await;
            if put.is_ok() {
                slot.ready_marked.store(true, Ordering::SeqCst);
            }
        }
        let owner = s.owners.get(&shard);
        if let Some(&token) = owned.get(&shard) {
            // The view has seen our acquisition: a different owner, or none, means we lost it.
            if s.revision >= token && owner.is_none_or(|o| o.token != token) {
                inner.lost(shard, token);
                continue;
            }
            let preferred = placement.first().copied();
            if let Some(p) = preferred {
                if p != inner.id && s.readies.contains(&(shard, p.to_string())) {
                    inner.give(shard).await;
                }
            }
            continue;
        }
        if owner.is_some() {
            ownerless_since.remove(&shard);
            continue;
        }
        let since = *ownerless_since.entry(shard).or_insert_with(Instant::now);
        // The preferred node takes an ownerless shard at once; the next ones after a
        // lease TTL each, in case the preferred one is alive but not progressing.
        let Some(rank) = rank else { continue };
        if synced && since.elapsed() >= inner.ttl() * rank as u32 {
            match inner.take(shard).await {
                Ok(true) => {
                    ownerless_since.remove(&shard);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(shard, error = %e, "taking shard failed"),
            }
        }
    }
}

struct Service {
    inner: Arc<Inner>,
}

type RpcResult<T> = std::result::Result<tonic::Response<T>, tonic::Status>;

async fn wait_revision(slot: &Slot, want: i64, wait_ms: u32) -> bool {
    if want <= 0 {
        return true;
    }
    let mut rx = slot.rev.subscribe();
    let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)));
    tokio::time::timeout(wait, rx.wait_for(|r| *r >= want))
        .await
        .is_ok_and(|r| r.is_ok())
}

#[tonic::async_trait]
impl NodeRpc for Service {
    async fn search(&self, req: tonic::Request<rpc::SearchRequest>) -> RpcResult<rpc::SearchReply> {
        let r = req.into_inner();
        let inner = &self.inner;
        if r.query.len() != inner.config.store.key_dim as usize {
            return Err(rpc::to_status(&Error::invalid(format!(
                "query has {} elements, key_dim is {}",
                r.query.len(),
                inner.config.store.key_dim
            ))));
        }
        if r.k == 0 || r.k > MAX_K {
            return Err(rpc::to_status(&Error::invalid(format!(
                "k must be in 1..={MAX_K}"
            ))));
        }
        let mut out = Vec::with_capacity(r.shards.len());
        let mut work = Vec::new();
        for sq in &r.shards {
            let err = |m: &str| rpc::ShardHits {
                shard: sq.shard,
                error: m.to_string(),
                ..Default::default()
            };
            match inner.slot(sq.shard) {
                None => out.push(err("not served")),
                Some(slot) => {
                    if wait_revision(&slot, sq.min_revision, r.wait_ms).await {
                        work.push((slot.replica(), sq.min_revision));
                    } else {
                        out.push(err("stale"));
                    }
                }
            }
        }
        let query = r.query;
        let k = r.k as usize;
        let done = tokio::task::spawn_blocking(move || {
            use rayon::prelude::*;
            // The shards of one request are searched in parallel.
            work.into_par_iter()
                .map(|(rep, min)| {
                    let revision = rep.applied().revision;
                    if revision < min {
                        return rpc::ShardHits {
                            shard: rep.shard(),
                            revision,
                            error: "stale".into(),
                            ..Default::default()
                        };
                    }
                    match rep.search(&query, k) {
                        Ok(hits) => rpc::ShardHits {
                            shard: rep.shard(),
                            revision,
                            hits: hits
                                .iter()
                                .map(|h| rpc::Hit {
                                    id: h.id,
                                    score: h.score,
                                })
                                .collect(),
                            error: String::new(),
                        },
                        Err(e) => rpc::ShardHits {
                            shard: rep.shard(),
                            revision,
                            error: e.to_string(),
                            ..Default::default()
                        },
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
        out.extend(done);
        Ok(tonic::Response::new(rpc::SearchReply {
            shards: out,
            node: inner.id.clone(),
        }))
    }

    async fn fetch(&self, req: tonic::Request<rpc::FetchRequest>) -> RpcResult<rpc::FetchReply> {
        let r = req.into_inner();
        let inner = &self.inner;
        let Some(slot) = inner.slot(r.shard) else {
            return Err(rpc::to_status(&Error::Unavailable {
                shard: r.shard,
                reason: format!("not served by {}", inner.id),
            }));
        };
        if !wait_revision(&slot, r.min_revision, r.wait_ms).await {
            return Err(rpc::to_status(&Error::Stale {
                shard: r.shard,
                have: *slot.rev.borrow(),
                want: r.min_revision,
            }));
        }
        let rep = slot.replica();
        let ids = r.ids;
        let (found, missing, revision) = tokio::task::spawn_blocking(move || {
            rep.fetch(&ids).map(|(f, m)| (f, m, rep.applied().revision))
        })
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .map_err(|e| rpc::to_status(&e))?;
        let experts = found
            .iter()
            .map(rpc::expert_to_pb)
            .collect::<Result<Vec<_>>>()
            .map_err(|e| rpc::to_status(&e))?;
        Ok(tonic::Response::new(rpc::FetchReply {
            experts,
            missing,
            revision,
        }))
    }

    async fn write(&self, req: tonic::Request<rpc::WriteRequest>) -> RpcResult<rpc::WriteReply> {
        let r = req.into_inner();
        let inner = &self.inner;
        let shard = r.shard;
        if shard >= inner.config.shards {
            return Err(rpc::to_status(&Error::invalid(format!("no shard {shard}"))));
        }
        let mut inserts = Vec::with_capacity(r.inserts.len());
        for p in &r.inserts {
            let e = rpc::expert_from_pb(p, &inner.config.store).map_err(|e| rpc::to_status(&e))?;
            inserts.push(e);
        }
        for id in inserts
            .iter()
            .map(|e| e.id)
            .chain(r.deletes.iter().copied())
        {
            if shard_of(id, inner.config.shards) != shard {
                return Err(rpc::to_status(&Error::invalid(format!(
                    "expert {id} belongs to shard {}, not {shard}",
                    shard_of(id, inner.config.shards)
                ))));
            }
        }
        let tx = inner.owned.lock().get(&shard).map(|o| o.tx.clone());
        let not_owner = || {
            rpc::to_status(&Error::NotOwner {
                shard,
                node: inner.id.clone(),
            })
        };
        let Some(tx) = tx else {
            return Err(not_owner());
        };
        let (reply, rx) = oneshot::channel();
        let bytes = inserts.len() * rpc::wire_bytes(&inner.config.store) + r.deletes.len() * 8;
        let job = WriteJob {
            inserts,
            deletes: r.deletes,
            bytes,
            reply,
        };
        tx.send(WriterMsg::Write(job))
            .await
            .map_err(|_| not_owner())?;
        let out = tokio::time::timeout(WRITE_TIMEOUT, rx)
            .await
            .map_err(|_| {
                rpc::to_status(&Error::Timeout {
                    what: format!("commit of shard {shard}"),
                    ms: WRITE_TIMEOUT.as_millis() as u64,
                })
            })?
            .map_err(|_| not_owner())?
            .map_err(|e| rpc::to_status(&e))?;
        Ok(tonic::Response::new(rpc::WriteReply {
            revision: out.revision,
            generation: out.generation,
            already_present: out.already_present,
        }))
    }

    async fn status(
        &self,
        _req: tonic::Request<rpc::StatusRequest>,
    ) -> RpcResult<rpc::StatusReply> {
        let inner = &self.inner;
        let owned: HashSet<u32> = inner.owned.lock().keys().copied().collect();
        let mut slots: Vec<Arc<Slot>> = inner.slots.read().values().cloned().collect();
        slots.sort_by_key(|s| s.shard);
        let shards = slots
            .iter()
            .map(|s| {
                let rep = s.replica();
                let a = rep.applied();
                rpc::ShardStatus {
                    shard: s.shard,
                    revision: a.revision,
                    generation: a.manifest.generation,
                    experts: rep.len() as u64,
                    owner: owned.contains(&s.shard),
                    segments: a.manifest.segments.len() as u32,
                }
            })
            .collect();
        Ok(tonic::Response::new(rpc::StatusReply {
            node: inner.id.clone(),
            addr: inner.addr.clone(),
            shards,
        }))
    }
}
