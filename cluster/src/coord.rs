//! The etcd transactions of the tier: creating the cluster, allocating ids, taking and
//! giving up shard ownership, and the fenced commit of a manifest.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
};

use crate::error::{Error, Result};
use crate::manifest::{ClusterConfig, Keys, Manifest, OwnerInfo};

/// Connects to etcd with bounded timeouts (endpoints `host:port` or URLs). A request
/// times out after 2 s (one stuck behind a dead leader is resolved by the caller: a
/// read is retried, a commit's outcome is read back), and a member without a leader
/// refuses requests instead of holding them.
pub async fn connect(endpoints: &[String]) -> Result<etcd_client::Client> {
    connect_with_timeout(endpoints, Duration::from_secs(2)).await
}

/// [`connect`] with another request timeout, for the one request that may take longer
/// (a member's defragmentation, `defrag.rs`).
pub async fn connect_with_timeout(
    endpoints: &[String],
    request_timeout: Duration,
) -> Result<etcd_client::Client> {
    if endpoints.is_empty() {
        return Err(Error::invalid("no etcd endpoint given"));
    }
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(request_timeout)
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
    let (_, counts) = scan_prefix(
        client,
        keys.root(),
        "reading the cluster prefix",
        || (0, 0),
        |(n, bytes), kv| {
            *n += 1;
            *bytes += kv.key().len() + kv.value().len();
        },
    )
    .await?;
    Ok(counts)
}

/// Largest etcd response this client decodes, bytes. etcd-client's own default is 4 MiB,
/// which one range over the whole prefix passes at about 830 shards (docs/SCALE.md). A
/// page of a prefix read ([`PAGE_KEYS`] keys) stays far under this bound; a watch
/// response can carry many revisions at once while it catches up, and gets the same bound.
pub const MAX_DECODE_BYTES: usize = 64 << 20;

/// Keys per page of a prefix read: ≈ 2.5 MB of full manifests (≈ 5 KB each).
pub const PAGE_KEYS: i64 = 512;

/// Full re-reads of a prefix after its snapshot revision was compacted away mid-read.
const SCAN_ATTEMPTS: usize = 8;

/// The first key after every key that starts with `prefix` (etcd's range end of a
/// prefix); `"\0"` (to the end of the key space) when no such key exists.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn status_says(e: &etcd_client::Error, what: &str) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == tonic::Code::OutOfRange && s.message().contains(what))
}

/// Reads every key under `prefix` as one consistent snapshot, in pages: the first page
/// at the newest revision, every later one at that same revision (`with_revision`),
/// each starting just after the last key of the page before (keyset pagination, key +
/// `"\0"`), [`PAGE_KEYS`] keys at a time. `add` folds each key-value into an
/// accumulator made by `init`; returns the snapshot's revision and the accumulator.
///
/// A page too large to decode (huge values) is asked again with half the keys, down to
/// one. When etcd compacts the snapshot revision away in the middle, the read starts
/// over from a fresh `init()` at the newest revision (at most [`SCAN_ATTEMPTS`] times).
/// Every request is sent again while it fails without reaching a server ([`retry`]).
/// A watch that continues from the returned revision starts at revision + 1.
pub async fn scan_prefix<A>(
    client: &etcd_client::Client,
    prefix: &str,
    what: &str,
    mut init: impl FnMut() -> A,
    mut add: impl FnMut(&mut A, &KeyValue),
) -> Result<(i64, A)> {
    let kv = client
        .kv_client()
        .max_decoding_message_size(MAX_DECODE_BYTES);
    let end = prefix_end(prefix.as_bytes());
    'attempt: for _ in 0..SCAN_ATTEMPTS {
        let mut acc = init();
        let mut rev = 0; // 0: the newest, for the first page only
        let mut from = prefix.as_bytes().to_vec();
        let mut limit = PAGE_KEYS;
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(limit)
                .with_revision(rev);
            let r = retry(|| {
                let (mut c, k, o) = (kv.clone(), from.clone(), opts.clone());
                async move { c.get(k, Some(o)).await }
            })
            .await;
            let resp = match r {
                Ok(resp) => resp,
                Err(e) if limit > 1 && status_says(&e, "message length too large") => {
                    limit = (limit / 2).max(1);
                    continue;
                }
                Err(e) if rev > 0 && status_says(&e, "compacted") => {
                    tracing::warn!(
                        prefix,
                        rev,
                        "snapshot compacted during a paged read; reading again"
                    );
                    continue 'attempt;
                }
                Err(e) => return Err(Error::etcd(what, e)),
            };
            if rev == 0 {
                rev = match resp.header() {
                    Some(h) if h.revision() > 0 => h.revision(),
                    _ => {
                        return Err(Error::etcd(
                            what,
                            etcd_client::Error::Internal(
                                "range response without a revision".into(),
                            ),
                        ))
                    }
                };
            }
            for kv in resp.kvs() {
                add(&mut acc, kv);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((rev, acc)),
            }
        }
    }
    Err(Error::Timeout {
        what: format!("{what} ({SCAN_ATTEMPTS} snapshots compacted during the read)"),
        ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"/mome/t/"), b"/mome/t0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
