//! The etcd transactions of the tier: creating the cluster, allocating ids, taking and
//! giving up shard ownership, and the fenced commit of a manifest.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::error::{Error, Result};
use crate::manifest::{ClusterConfig, Keys, Manifest, OwnerInfo};

/// Connects to etcd with bounded timeouts (endpoints `host:port` or URLs). A request
/// times out after 2 s (one stuck behind a dead leader is resolved by the caller: a
/// read is retried, a commit's outcome is read back), and a member without a leader
/// refuses requests instead of holding them.
pub async fn connect(endpoints: &[String]) -> Result<etcd_client::Client> {
    if endpoints.is_empty() {
        return Err(Error::invalid("no etcd endpoint given"));
    }
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(2))
        .with_require_leader(true)
        // HTTP/2 pings no more often than etcd's --grpc-keepalive-min-time (5 s): the
        // server closes connections that ping faster ("too many pings").
        .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    etcd_client::Client::connect(endpoints, Some(opts))
        .await
        .map_err(|e| Error::etcd(format!("connecting to {}", endpoints.join(",")), e))
}

/// Whether an etcd error means the request never reached a server: the client's
/// balancer picked an endpoint that refuses connections (a dead member). Such a request
/// is safe to send again, whatever it was.
pub fn unsent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("tcp connect")
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Runs an etcd request, sending it again (up to 8 times, 25 ms apart) while it fails
/// without reaching a server ([`unsent`]).
pub async fn retry<T, F, Fut>(mut f: F) -> std::result::Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let mut tries = 0;
    loop {
        match f().await {
            Err(e) if unsent(&e) && tries < 8 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => return other,
        }
    }
}

/// Splits `a,b,c` into endpoints.
pub fn endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_start_matches("http://").to_string())
        .collect()
}

/// Writes the cluster config if there is none; an existing, equal config is accepted
/// (idempotent), a different one refused.
pub async fn init_cluster(
    client: &mut etcd_client::Client,
    cluster: &str,
    config: &ClusterConfig,
) -> Result<()> {
    config.validate().map_err(Error::invalid)?;
    let keys = Keys::new(cluster);
    let value = serde_json::to_vec(config).map_err(|e| Error::invalid(e.to_string()))?;
    let txn = Txn::new()
        .when([Compare::create_revision(keys.config(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(keys.config(), value, None)])
        .or_else([TxnOp::get(keys.config(), None)]);
    let resp = retry(|| {
        let (mut c, t) = (client.clone(), txn.clone());
        async move { c.txn(t).await }
    })
    .await
    .map_err(|e| Error::etcd("creating the cluster config", e))?;
    if resp.succeeded() {
        return Ok(());
    }
    let existing = crate::view::read_config(client, &keys, cluster).await?;
    if &existing == config {
        Ok(())
    } else {
        Err(Error::ClusterExists {
            cluster: cluster.to_string(),
        })
    }
}

/// Reserves `n` consecutive ids: one compare-and-swap on the allocator key (retried on
/// contention, at most 64 times). Returns the first.
pub async fn allocate_ids(client: &mut etcd_client::Client, keys: &Keys, n: u64) -> Result<u64> {
    for _ in 0..64 {
        let resp = retry(|| {
            let mut c = client.clone();
            let k = keys.ids();
            async move { c.get(k, None).await }
        })
        .await
        .map_err(|e| Error::etcd("reading the id allocator", e))?;
        let (next, cmp) = match resp.kvs().first() {
            Some(kv) => {
                let v = kv
                    .value_str()
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| Error::CorruptMeta {
                        key: keys.ids(),
                        reason: "not a number".into(),
                    })?;
                (
                    v,
                    Compare::mod_revision(keys.ids(), CompareOp::Equal, kv.mod_revision()),
                )
            }
            None => (1, Compare::create_revision(keys.ids(), CompareOp::Equal, 0)),
        };
        let end = next
            .checked_add(n)
            .ok_or_else(|| Error::invalid("id space exhausted"))?;
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(keys.ids(), end.to_string(), None)]);
        let r = retry(|| {
            let (mut c, t) = (client.clone(), txn.clone());
            async move { c.txn(t).await }
        })
        .await
        .map_err(|e| Error::etcd("advancing the id allocator", e))?;
        if r.succeeded() {
            return Ok(next);
        }
    }
    Err(Error::Timeout {
        what: "allocating ids (64 conflicting tries)".into(),
        ms: 0,
    })
}

/// Takes ownership of `shard` if nobody holds it: creates the ownership key under
/// `lease` only if absent. Returns the fencing token (the key's create revision).
pub async fn acquire(
    client: &mut etcd_client::Client,
    keys: &Keys,
    shard: u32,
    node: &str,
    lease: i64,
) -> Result<Option<i64>> {
    let value = serde_json::to_vec(&OwnerInfo {
        node: node.to_string(),
        lease,
    })
    .map_err(|e| Error::invalid(e.to_string()))?;
    let txn = Txn::new()
        .when([Compare::create_revision(
            keys.owner(shard),
            CompareOp::Equal,
            0,
        )])
        .and_then([TxnOp::put(
            keys.owner(shard),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let r = client
        .txn(txn)
        .await
        .map_err(|e| Error::etcd(format!("acquiring shard {shard}"), e))?;
    Ok(r.succeeded()
        .then(|| r.header().map_or(0, |h| h.revision())))
}

/// Gives up ownership: deletes the key only if it is still the one `token` names.
pub async fn release(
    client: &mut etcd_client::Client,
    keys: &Keys,
    shard: u32,
    token: i64,
) -> Result<bool> {
    let txn = Txn::new()
        .when([Compare::create_revision(
            keys.owner(shard),
            CompareOp::Equal,
            token,
        )])
        .and_then([TxnOp::delete(keys.owner(shard), None)]);
    let r = retry(|| {
        let (mut c, t) = (client.clone(), txn.clone());
        async move { c.txn(t).await }
    })
    .await
    .map_err(|e| Error::etcd(format!("releasing shard {shard}"), e))?;
    Ok(r.succeeded())
}

/// Outcome of a fenced commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Published; the manifest key's new mod revision.
    Done(i64),
    /// Published, found out only after later commits (by a newer owner): the write is
    /// in, and the manifest is now at this revision; the writer's own view is stale.
    Superseded(i64),
    /// Refused: the ownership key is gone or was re-created (another owner).
    Fenced,
    /// Refused: the manifest moved since `seen` (the caller's view is stale).
    Moved,
}

/// Publishes `manifest` with one transaction that checks both the manifest revision
/// the writer last saw and the writer's own ownership revision.
pub async fn commit(
    client: &mut etcd_client::Client,
    keys: &Keys,
    manifest: &Manifest,
    seen: i64,
    token: i64,
) -> Result<Commit> {
    let shard = manifest.shard;
    let value = serde_json::to_vec(manifest).map_err(|e| Error::invalid(e.to_string()))?;
    let txn = Txn::new()
        .when([
            Compare::mod_revision(keys.manifest(shard), CompareOp::Equal, seen),
            Compare::create_revision(keys.owner(shard), CompareOp::Equal, token),
        ])
        .and_then([TxnOp::put(keys.manifest(shard), value, None)])
        .or_else([TxnOp::get(keys.owner(shard), None)]);
    let r = retry(|| {
        let (mut c, t) = (client.clone(), txn.clone());
        async move { c.txn(t).await }
    })
    .await
    .map_err(|e| Error::etcd(format!("committing shard {shard}"), e))?;
    if r.succeeded() {
        return Ok(Commit::Done(r.header().map_or(0, |h| h.revision())));
    }
    let owner_rev = r.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => Some(g.kvs().first().map_or(0, |kv| kv.create_revision())),
        _ => None,
    });
    if owner_rev == Some(token) {
        Ok(Commit::Moved)
    } else {
        Ok(Commit::Fenced)
    }
}

/// Reads a shard's manifest and its mod revision (an empty manifest at 0 when absent).
pub async fn read_manifest(
    client: &mut etcd_client::Client,
    keys: &Keys,
    shard: u32,
) -> Result<(Manifest, i64)> {
    let r = retry(|| {
        let mut c = client.clone();
        let k = keys.manifest(shard);
        async move { c.get(k, None).await }
    })
    .await
    .map_err(|e| Error::etcd(format!("reading manifest of shard {shard}"), e))?;
    match r.kvs().first() {
        None => Ok((Manifest::empty(shard), 0)),
        Some(kv) => {
            let m: Manifest =
                serde_json::from_slice(kv.value()).map_err(|e| Error::CorruptMeta {
                    key: keys.manifest(shard),
                    reason: e.to_string(),
                })?;
            Ok((m, kv.mod_revision()))
        }
    }
}

/// Number of keys under the cluster prefix and their total size (for `status`).
pub async fn footprint(client: &mut etcd_client::Client, keys: &Keys) -> Result<(usize, usize)> {
    let r = retry(|| {
        let mut c = client.clone();
        let k = keys.root().to_string();
        async move { c.get(k, Some(GetOptions::new().with_prefix())).await }
    })
    .await
    .map_err(|e| Error::etcd("reading the cluster prefix", e))?;
    Ok((
        r.kvs().len(),
        r.kvs()
            .iter()
            .map(|kv| kv.key().len() + kv.value().len())
            .sum(),
    ))
}
