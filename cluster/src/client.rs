//! The router: `Client` opens a cluster as `Store::open` opens a store, and offers
//! insert, delete, search (fan-out, deterministic merge of top-k, read-your-writes,
//! hedged requests) and fetch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use mome::{NewExpert, StoreConfig};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::ask::FactCache;
use crate::coord;
use crate::error::{Error, Result};
use crate::manifest::{shard_of, ClusterConfig, Keys};
use crate::replica::{sort_hits, Hit};
use crate::rpc::{self, NodeClient};
use crate::segment::ClusterExpert;
use crate::view::{ClusterView, ViewState};

/// Ids reserved from etcd per allocation.
const ID_BLOCK: u64 = 4096;

/// Shards a [`Client::fetch`] asks at once. An `ask` fetches its 32 candidates, at most
/// 32 shards; the bound keeps a fetch of thousands of ids from opening thousands of
/// requests at once.
pub const FETCH_CONCURRENCY: usize = 64;

/// Router behaviour.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// After this long without an answer from a node, the same shards are asked of
    /// their next replica too (the first answer wins). `None`: no hedging.
    pub hedge_after: Option<Duration>,
    /// Deadline of one RPC.
    pub rpc_timeout: Duration,
    /// Deadline of a whole search, fetch or write, retries included.
    pub deadline: Duration,
    /// How long a node may wait to catch up to the revision a read asks for.
    pub wait_ms: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            hedge_after: Some(Duration::from_millis(50)),
            rpc_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            wait_ms: 2_000,
        }
    }
}

/// What a search returns.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    /// The merged top-k, best first, ties by id.
    pub hits: Vec<Hit>,
    /// Manifest revision each shard's answer reflects.
    pub revisions: BTreeMap<u32, i64>,
    /// Shards answered by a hedged request (the first node was slower).
    pub hedged: usize,
}

/// Per-search options.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SearchOptions {
    /// Minimum manifest revision per shard (read-your-writes). Merged with this
    /// client's own writes' revisions.
    pub min_revisions: BTreeMap<u32, i64>,
}

struct IdBlock {
    next: u64,
    end: u64,
}

/// A connection to a cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    cluster: String,
    keys: Keys,
    config: ClusterConfig,
    etcd: etcd_client::Client,
    view: Arc<ClusterView>,
    opts: ClientOptions,
    conns: Mutex<HashMap<String, NodeClient<Channel>>>,
    ids: tokio::sync::Mutex<IdBlock>,
    /// Highest revision this client's writes produced, per shard (read-your-writes).
    session: Mutex<BTreeMap<u32, i64>>,
    /// Prompt queries of cluster experts for `ask`.
    facts: Mutex<FactCache>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.inner.cluster)
    }
}

/// Which call, for error messages.
#[derive(Clone, Copy)]
enum Call {
    Fetch,
    Write,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Fetch => "fetch",
            Call::Write => "write",
        }
    }
}

fn rpc_error(node: &str, call: Call, s: tonic::Status, shard: u32) -> Error {
    match rpc::status_kind(&s) {
        Some("fenced") => Error::Fenced { shard, token: 0 },
        Some("not-owner") => Error::NotOwner {
            shard,
            node: node.to_string(),
        },
        Some("invalid") => Error::InvalidInput {
            reason: s.message().to_string(),
        },
        _ => Error::Rpc {
            node: node.to_string(),
            what: call.name(),
            status: Box::new(s),
        },
    }
}

impl Client {
    /// Connects to the cluster `cluster` through etcd `endpoints`.
    pub async fn connect(endpoints: &[String], cluster: &str) -> Result<Client> {
        Self::connect_with(endpoints, cluster, ClientOptions::default()).await
    }

    /// [`Self::connect`] with router options.
    pub async fn connect_with(
        endpoints: &[String],
        cluster: &str,
        opts: ClientOptions,
    ) -> Result<Client> {
        let mut etcd = coord::connect(endpoints).await?;
        let keys = Keys::new(cluster);
        let config = crate::view::read_config(&mut etcd, &keys, cluster).await?;
        let view = ClusterView::start(etcd.clone(), keys.clone()).await?;
        Ok(Client {
            inner: Arc::new(ClientInner {
                cluster: cluster.to_string(),
                keys,
                config,
                etcd,
                view,
                opts,
                conns: Mutex::new(HashMap::new()),
                ids: tokio::sync::Mutex::new(IdBlock { next: 0, end: 0 }),
                session: Mutex::new(BTreeMap::new()),
                facts: Mutex::new(FactCache::default()),
            }),
        })
    }

    /// The cluster's config.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The expert shape.
    pub fn store_config(&self) -> &StoreConfig {
        &self.inner.config.store
    }

    /// The live view of the cluster's etcd state.
    pub fn view(&self) -> &Arc<ClusterView> {
        &self.inner.view
    }

    /// The prompt queries `ask` keeps, by cluster id.
    pub(crate) fn facts(&self) -> &Mutex<FactCache> {
        &self.inner.facts
    }

    /// Highest revision this client's writes produced, per shard.
    pub fn session_revisions(&self) -> BTreeMap<u32, i64> {
        self.inner.session.lock().clone()
    }

    fn conn(&self, addr: &str) -> Result<NodeClient<Channel>> {
        if let Some(c) = self.inner.conns.lock().get(addr) {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.inner.opts.rpc_timeout)
            .tcp_nodelay(true);
        let c = NodeClient::new(ep.connect_lazy())
            .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES);
        self.inner.conns.lock().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Reserves `n` fresh cluster-wide ids.
    pub async fn allocate_ids(&self, n: usize) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(n);
        let mut block = self.inner.ids.lock().await;
        while out.len() < n {
            if block.next == block.end {
                let want = ID_BLOCK.max((n - out.len()) as u64);
                let mut etcd = self.inner.etcd.clone();
                let first = coord::allocate_ids(&mut etcd, &self.inner.keys, want).await?;
                *block = IdBlock {
                    next: first,
                    end: first + want,
                };
            }
            let take = ((n - out.len()) as u64).min(block.end - block.next);
            out.extend(block.next..block.next + take);
            block.next += take;
        }
        Ok(out)
    }

    /// Inserts experts: new ids, each routed to its shard's owner; returns once every
    /// shard's owner has committed (the write is then durable in object storage and
    /// etcd). Order of the ids follows the input.
    pub async fn insert(&self, experts: Vec<NewExpert>) -> Result<Vec<u64>> {
        let ids = self.allocate_ids(experts.len()).await?;
        self.put(&ids, experts).await?;
        Ok(ids)
    }

    /// Inserts experts under ids the caller reserved with [`Self::allocate_ids`].
    /// Idempotent: retrying after an error inserts nothing twice (an owner skips ids
    /// its shard already holds).
    pub async fn put(&self, ids: &[u64], experts: Vec<NewExpert>) -> Result<()> {
        if ids.len() != experts.len() {
            return Err(Error::invalid(format!(
                "{} ids for {} experts",
                ids.len(),
                experts.len()
            )));
        }
        let s = self.inner.config.shards;
        let mut by_shard: BTreeMap<u32, Vec<ClusterExpert>> = BTreeMap::new();
        for (&id, e) in ids.iter().zip(experts) {
            by_shard
                .entry(shard_of(id, s))
                .or_default()
                .push(ClusterExpert {
                    id,
                    key: e.key,
                    layers: e.layers,
                    provenance: e.provenance,
                    created_at_ms: 0,
                });
        }
        let per = (rpc::WRITE_CHUNK_BYTES / rpc::wire_bytes(&self.inner.config.store)).max(1);
        let mut calls = FuturesUnordered::new();
        for (shard, experts) in by_shard {
            for chunk in experts.chunks(per) {
                let pb: Vec<rpc::Expert> =
                    chunk.iter().map(rpc::expert_to_pb).collect::<Result<_>>()?;
                calls.push(self.write_shard(shard, pb, Vec::new()));
            }
        }
        while let Some(r) = calls.next().await {
            r?;
        }
        Ok(())
    }

    /// Deletes experts by id (unknown ids are ignored).
    pub async fn delete(&self, ids: &[u64]) -> Result<()> {
        let s = self.inner.config.shards;
        let mut by_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &id in ids {
            by_shard.entry(shard_of(id, s)).or_default().push(id);
        }
        let mut calls = FuturesUnordered::new();
        for (shard, ids) in by_shard {
            calls.push(self.write_shard(shard, Vec::new(), ids));
        }
        while let Some(r) = calls.next().await {
            r?;
        }
        Ok(())
    }

    /// One shard's write, sent to its owner; retried (bounded by the deadline) when the
    /// owner moves or is unreachable. A fenced write is retried too: it committed nothing.
    async fn write_shard(
        &self,
        shard: u32,
        inserts: Vec<rpc::Expert>,
        deletes: Vec<u64>,
    ) -> Result<()> {
        let deadline = Instant::now() + self.inner.opts.deadline;
        let mut last: Option<Error> = None;
        let mut pause = Duration::from_millis(20);
        for _ in 0..1000 {
            if Instant::now() >= deadline {
                break;
            }
            let state = self.inner.view.state();
            let target = state.owners.get(&shard).and_then(|o| {
                state
                    .addr(&o.info.node)
                    .map(|a| (o.info.node.clone(), a.to_string()))
            });
            let Some((node, addr)) = target else {
                last = Some(Error::NoOwner { shard });
                let wait = pause.min(deadline.saturating_duration_since(Instant::now()));
                let _ = self
                    .inner
                    .view
                    .wait_for(wait, "an owner", |s| s.owners.contains_key(&shard))
                    .await;
                pause = (pause * 2).min(Duration::from_millis(500));
                continue;
            };
            let mut c = self.conn(&addr)?;
            let req = rpc::WriteRequest {
                shard,
                inserts: inserts.clone(),
                deletes: deletes.clone(),
            };
            let mut req = tonic::Request::new(req);
            req.set_timeout(Duration::from_secs(35));
            match c.write(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let mut s = self.inner.session.lock();
                    let e = s.entry(shard).or_insert(0);
                    *e = (*e).max(r.revision);
                    return Ok(());
                }
                Err(status) => {
                    let e = rpc_error(&node, Call::Write, status, shard);
                    if matches!(e, Error::InvalidInput { .. }) {
                        return Err(e);
                    }
                    tracing::debug!(shard, node = %node, error = %e, "write retry");
                    last = Some(e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
        Err(last.unwrap_or(Error::Timeout {
            what: format!("writing shard {shard}"),
            ms: self.inner.opts.deadline.as_millis() as u64,
        }))
    }

    /// The `k` experts of the whole cluster whose keys are most similar to `query`.
    pub async fn search(&self, query: &[f32], k: usize) -> Result<SearchResult> {
        self.search_with(query, k, &SearchOptions::default()).await
    }

    /// [`Self::search`] with explicit minimum revisions.
    ///
    /// Fans out one request per node (the shards it is first in line for); a node that
    /// fails, is stale, or does not serve a shard has those shards asked of the next node
    /// in their read order at once; a node slower than `hedge_after` has its shards asked
    /// of the next node as well, and the first answer per shard wins. The merge sorts
    /// every shard's hits by score, ties by id, and keeps `k`.
    pub async fn search_with(
        &self,
        query: &[f32],
        k: usize,
        opts: &SearchOptions,
    ) -> Result<SearchResult> {
        let dim = self.inner.config.store.key_dim as usize;
        if query.len() != dim {
            return Err(Error::invalid(format!(
                "query has {} elements, key_dim is {dim}",
                query.len()
            )));
        }
        if k == 0 || k > crate::node::MAX_K as usize {
            return Err(Error::invalid(format!(
                "k must be in 1..={}",
                crate::node::MAX_K
            )));
        }
        let mut min = self.session_revisions();
        for (s, r) in &opts.min_revisions {
            let e = min.entry(*s).or_insert(0);
            *e = (*e).max(*r);
        }
        let shards: Vec<u32> = (0..self.inner.config.shards).collect();
        let per_shard = self.fan_out(&shards, &min, query, k).await?;
        let mut hits = Vec::new();
        let mut revisions = BTreeMap::new();
        let mut hedged = 0;
        for (shard, a) in per_shard {
            hits.extend(a.hits);
            revisions.insert(shard, a.revision);
            hedged += usize::from(a.hedged);
        }
        sort_hits(&mut hits);
        hits.truncate(k);
        Ok(SearchResult {
            hits,
            revisions,
            hedged,
        })
    }

    async fn fan_out(
        &self,
        shards: &[u32],
        min: &BTreeMap<u32, i64>,
        query: &[f32],
        k: usize,
    ) -> Result<BTreeMap<u32, ShardAnswer>> {
        let deadline = Instant::now() + self.inner.opts.deadline;
        let mut f = FanOut {
            client: self,
            state: self.inner.view.state(),
            min,
            query: query.to_vec(),
            k: k as u32,
            cursor: HashMap::new(),
            pending: HashMap::new(),
            errors: HashMap::new(),
            reasons: HashMap::new(),
            done: BTreeMap::new(),
            inflight: FuturesUnordered::new(),
        };
        f.dispatch(shards.to_vec(), false);
        let hedge_at = self.inner.opts.hedge_after.map(|h| Instant::now() + h);
        let mut hedged = false;
        while f.done.len() < shards.len() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let open: Vec<u32> = shards
                .iter()
                .copied()
                .filter(|s| !f.done.contains_key(s) && !f.errors.contains_key(s))
                .collect();
            if open.is_empty() && f.inflight.is_empty() {
                // Every open shard ran out of candidates: wait for the view to change (a
                // failover, a move) and start their read order again.
                let stuck: Vec<u32> = shards
                    .iter()
                    .copied()
                    .filter(|s| !f.done.contains_key(s))
                    .collect();
                let wait = Duration::from_millis(200).min(deadline.saturating_duration_since(now));
                let rev = f.state.revision;
                let _ = self
                    .inner
                    .view
                    .wait_for(wait, "a cluster change", |s| s.revision > rev)
                    .await;
                f.state = self.inner.view.state();
                for s in &stuck {
                    f.errors.remove(s);
                    f.cursor.insert(*s, 0);
                }
                f.dispatch(stuck, false);
                continue;
            }
            let hedge_due = hedge_at.filter(|_| !hedged);
            let wake = hedge_due.filter(|t| *t > now).unwrap_or(deadline);
            tokio::select! {
                next = f.inflight.next(), if !f.inflight.is_empty() => {
                    if let Some((node, group, hedge, res)) = next {
                        f.receive(&node, &group, hedge, res);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    if hedge_due.is_some_and(|t| Instant::now() >= t) {
                        hedged = true;
                        let slow: Vec<u32> = shards
                            .iter()
                            .copied()
                            .filter(|s| !f.done.contains_key(s) && f.pending.get(s).copied().unwrap_or(0) > 0)
                            .collect();
                        if !slow.is_empty() {
                            f.dispatch(slow, true);
                        }
                    }
                }
            }
        }
        if f.done.len() < shards.len() {
            let missing = shards
                .iter()
                .copied()
                .find(|s| !f.done.contains_key(s))
                .unwrap_or(0);
            return Err(Error::Unavailable {
                shard: missing,
                reason: f
                    .errors
                    .get(&missing)
                    .cloned()
                    .unwrap_or_else(|| "deadline passed".into()),
            });
        }
        Ok(f.done)
    }

    /// Copies of experts by id (keys, weights, provenance), from a node serving each
    /// one's shard, in the order of `ids`. Ids the cluster does not hold are left out.
    ///
    /// The shards are fetched concurrently, up to [`FETCH_CONCURRENCY`] in flight at once,
    /// each by [`Self::fetch_shard`] with its own deadline, tries and replica order. Their
    /// answers are taken in shard order, so an error is the lowest failing shard's, the
    /// one the fetch reported when it asked one shard after another; the shards still in
    /// flight are then dropped.
    pub async fn fetch(&self, ids: &[u64]) -> Result<Vec<ClusterExpert>> {
        let s = self.inner.config.shards;
        let mut by_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for &id in ids {
            by_shard.entry(shard_of(id, s)).or_default().push(id);
        }
        let min = self.session_revisions();
        let mut shards = futures::stream::iter(by_shard.into_iter().map(|(shard, ids)| {
            let min_revision = min.get(&shard).copied().unwrap_or(0);
            self.fetch_shard(shard, ids, min_revision)
        }))
        .buffered(FETCH_CONCURRENCY);
        let mut out: HashMap<u64, ClusterExpert> = HashMap::new();
        while let Some(experts) = shards.next().await {
            for e in experts? {
                out.insert(e.id, e);
            }
        }
        Ok(ids.iter().filter_map(|id| out.remove(id)).collect())
    }

    /// One shard's part of [`Self::fetch`]: its read order is tried node after node
    /// (up to 100 rounds, 100 ms apart, with the view read again each round) until one
    /// answers, within one deadline; past the deadline or the rounds, the last error.
    async fn fetch_shard(
        &self,
        shard: u32,
        ids: Vec<u64>,
        min_revision: i64,
    ) -> Result<Vec<ClusterExpert>> {
        let deadline = Instant::now() + self.inner.opts.deadline;
        let mut last = None;
        for _ in 0..100 {
            let state = self.inner.view.state();
            for node in state.read_order(shard, self.inner.config.replicas) {
                let Some(addr) = state.addr(&node) else {
                    continue;
                };
                let mut c = self.conn(addr)?;
                let mut req = tonic::Request::new(rpc::FetchRequest {
                    shard,
                    ids: ids.clone(),
                    min_revision,
                    wait_ms: self.inner.opts.wait_ms,
                });
                req.set_timeout(self.inner.opts.rpc_timeout);
                match c.fetch(req).await {
                    Ok(r) => {
                        return r
                            .into_inner()
                            .experts
                            .iter()
                            .map(|p| rpc::expert_from_pb(p, &self.inner.config.store))
                            .collect();
                    }
                    Err(st) => last = Some(rpc_error(&node, Call::Fetch, st, shard)),
                }
            }
            if Instant::now() >= deadline {
                return Err(last.unwrap_or(Error::Unavailable {
                    shard,
                    reason: "no node answered".into(),
                }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every round failed before the deadline (no live node, or each failing at
        // once): the shard is unavailable. Its ids must not read as absent.
        Err(last.unwrap_or(Error::Unavailable {
            shard,
            reason: "no node answered in 100 rounds".into(),
        }))
    }

    /// Each live node's status (what it serves and owns), by node id. Nodes that do not
    /// answer are listed with the error.
    pub async fn node_status(&self) -> Vec<(String, Result<rpc::StatusReply>)> {
        let state = self.inner.view.state();
        let mut out = Vec::new();
        for (id, info) in &state.nodes {
            let r = match self.conn(&info.addr) {
                Ok(mut c) => {
                    let mut req = tonic::Request::new(rpc::StatusRequest {});
                    req.set_timeout(self.inner.opts.rpc_timeout);
                    c.status(req)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| Error::Rpc {
                            node: id.clone(),
                            what: "status",
                            status: Box::new(s),
                        })
                }
                Err(e) => Err(e),
            };
            out.push((id.clone(), r));
        }
        out
    }

    /// etcd keys and bytes the cluster uses.
    pub async fn etcd_footprint(&self) -> Result<(usize, usize)> {
        let mut etcd = self.inner.etcd.clone();
        coord::footprint(&mut etcd, &self.inner.keys).await
    }

    /// Marks a node for draining (its shards move to others) or clears the mark.
    pub async fn set_drain(&self, node: &str, drain: bool) -> Result<()> {
        let mut etcd = self.inner.etcd.clone();
        let key = self.inner.keys.drain(node);
        if drain {
            etcd.put(key, Vec::new(), None).await.map(|_| ())
        } else {
            etcd.delete(key, None).await.map(|_| ())
        }
        .map_err(|e| Error::etcd(format!("setting drain mark of {node}"), e))
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.inner.cluster
    }
}

/// One shard's answer in a fan-out.
struct ShardAnswer {
    hits: Vec<Hit>,
    revision: i64,
    hedged: bool,
}

type Inflight = futures::future::BoxFuture<
    'static,
    (
        String,
        Vec<u32>,
        bool,
        std::result::Result<rpc::SearchReply, tonic::Status>,
    ),
>;

/// The state of one fan-out: where each shard was sent, what came back.
struct FanOut<'a> {
    client: &'a Client,
    state: Arc<ViewState>,
    min: &'a BTreeMap<u32, i64>,
    query: Vec<f32>,
    k: u32,
    /// Next position in each shard's read order.
    cursor: HashMap<u32, usize>,
    /// Requests in flight per shard.
    pending: HashMap<u32, usize>,
    /// Shards that ran out of candidates, with the last reason.
    errors: HashMap<u32, String>,
    /// Last failure seen per shard.
    reasons: HashMap<u32, String>,
    done: BTreeMap<u32, ShardAnswer>,
    inflight: FuturesUnordered<Inflight>,
}

impl FanOut<'_> {
    /// Sends each shard to the next node of its read order, one request per node.
    fn dispatch(&mut self, todo: Vec<u32>, hedge: bool) {
        let r = self.client.inner.config.replicas;
        let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for s in todo {
            let order = self.state.read_order(s, r);
            let c = self.cursor.entry(s).or_insert(0);
            if *c >= order.len() {
                if self.pending.get(&s).copied().unwrap_or(0) == 0 {
                    let why = self
                        .reasons
                        .get(&s)
                        .cloned()
                        .unwrap_or_else(|| "no live node serves it".into());
                    self.errors.insert(s, why);
                }
                continue;
            }
            let node = order[*c].clone();
            *c += 1;
            *self.pending.entry(s).or_insert(0) += 1;
            groups.entry(node).or_default().push(s);
        }
        for (node, group) in groups {
            let req = rpc::SearchRequest {
                shards: group
                    .iter()
                    .map(|&s| rpc::ShardQuery {
                        shard: s,
                        min_revision: self.min.get(&s).copied().unwrap_or(0),
                    })
                    .collect(),
                query: self.query.clone(),
                k: self.k,
                wait_ms: self.client.inner.opts.wait_ms,
            };
            let conn = self.state.addr(&node).map(|a| self.client.conn(a));
            let timeout = self.client.inner.opts.rpc_timeout;
            let fut: Inflight = Box::pin(async move {
                let res = match conn {
                    Some(Ok(mut c)) => {
                        let mut req = tonic::Request::new(req);
                        req.set_timeout(timeout);
                        c.search(req).await.map(|r| r.into_inner())
                    }
                    Some(Err(e)) => Err(tonic::Status::unavailable(e.to_string())),
                    None => Err(tonic::Status::unavailable("node has no address")),
                };
                (node, group, hedge, res)
            });
            self.inflight.push(fut);
        }
    }

    /// Takes a node's answer: complete shards are done, the others go to their next node.
    fn receive(
        &mut self,
        node: &str,
        group: &[u32],
        hedge: bool,
        res: std::result::Result<rpc::SearchReply, tonic::Status>,
    ) {
        for s in group {
            if let Some(p) = self.pending.get_mut(s) {
                *p = p.saturating_sub(1);
            }
        }
        let mut retry = Vec::new();
        match res {
            Ok(reply) => {
                for sh in reply.shards {
                    if self.done.contains_key(&sh.shard) {
                        continue;
                    }
                    let want = self.min.get(&sh.shard).copied().unwrap_or(0);
                    if sh.error.is_empty() && sh.revision >= want {
                        let hits = sh
                            .hits
                            .iter()
                            .map(|h| Hit {
                                id: h.id,
                                score: h.score,
                            })
                            .collect();
                        self.done.insert(
                            sh.shard,
                            ShardAnswer {
                                hits,
                                revision: sh.revision,
                                hedged: hedge,
                            },
                        );
                        self.errors.remove(&sh.shard);
                    } else {
                        tracing::debug!(shard = sh.shard, node, error = %sh.error, "shard retry");
                        self.reasons
                            .insert(sh.shard, format!("{node}: {}", sh.error));
                        retry.push(sh.shard);
                    }
                }
            }
            Err(status) => {
                tracing::debug!(node, %status, "search failed; trying replicas");
                for &s in group {
                    if !self.done.contains_key(&s) {
                        self.reasons
                            .insert(s, format!("{node}: {}", status.message()));
                        retry.push(s);
                    }
                }
            }
        }
        // A shard with another request still in flight waits for that one.
        retry.retain(|s| self.pending.get(s).copied().unwrap_or(0) == 0);
        if !retry.is_empty() {
            self.dispatch(retry, hedge);
        }
    }
}
