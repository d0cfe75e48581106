//! The cluster tier's error type: every variant names what and where (shard, node,
//! object, revision).

use crate::segment::SegmentError;

/// Result alias of the cluster crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the cluster tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// etcd refused or failed a request.
    #[error("etcd error while {context}: {source}")]
    Etcd {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Object storage refused or failed a request.
    #[error("object storage error while {context}: {source}")]
    ObjectStore {
        /// What was being done, with the object name.
        context: String,
        /// The client's error.
        #[source]
        source: object_store::Error,
    },
    /// A segment object is corrupt or of another shape.
    #[error("segment {object}: {source}")]
    Segment {
        /// Object name.
        object: String,
        /// What is wrong.
        #[source]
        source: SegmentError,
    },
    /// A value in etcd does not parse.
    #[error("corrupt cluster metadata at {key}: {reason}")]
    CorruptMeta {
        /// The etcd key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// No cluster config under this name: run `mome cluster init` first.
    #[error("no cluster `{cluster}` in etcd (run `mome cluster init`)")]
    NoCluster {
        /// Cluster name.
        cluster: String,
    },
    /// `mome cluster init` on a cluster that exists with another config.
    #[error("cluster `{cluster}` already exists with another config")]
    ClusterExists {
        /// Cluster name.
        cluster: String,
    },
    /// The commit was refused because this node no longer owns the shard (its lease
    /// ended, another node took the shard). Nothing of the write is visible.
    #[error("shard {shard}: commit refused, ownership token {token} is no longer valid (fenced)")]
    Fenced {
        /// Shard.
        shard: u32,
        /// The ownership revision the writer held.
        token: i64,
    },
    /// The write went to a node that does not own the shard; retry at the owner.
    #[error("shard {shard}: node {node} is not its owner")]
    NotOwner {
        /// Shard.
        shard: u32,
        /// The node asked.
        node: String,
    },
    /// The shard has no owner right now (a move or failover in progress).
    #[error("shard {shard} has no owner")]
    NoOwner {
        /// Shard.
        shard: u32,
    },
    /// No live node serves the shard.
    #[error("shard {shard}: no node serves it ({reason})")]
    Unavailable {
        /// Shard.
        shard: u32,
        /// What every try found.
        reason: String,
    },
    /// A node had not applied the revision asked for within the wait.
    #[error("shard {shard}: node has revision {have}, the read asked for {want}")]
    Stale {
        /// Shard.
        shard: u32,
        /// Applied revision.
        have: i64,
        /// Asked-for revision.
        want: i64,
    },
    /// An RPC to a node failed.
    #[error("RPC to node {node} ({what}): {status}")]
    Rpc {
        /// Node address or id.
        node: String,
        /// The call.
        what: &'static str,
        /// gRPC status.
        status: Box<tonic::Status>,
    },
    /// Connecting to a node failed.
    #[error("cannot connect to node {addr}: {reason}")]
    Connect {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A deadline passed.
    #[error("timed out after {ms} ms while {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The deadline.
        ms: u64,
    },
    /// Bad input: dimensions, an empty batch, an unknown shard, a bad URL.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },
    /// The embedded engine (a node's local cache store or index) failed.
    #[error("local engine for shard {shard}: {source}")]
    Engine {
        /// Shard.
        shard: u32,
        /// The engine's error.
        #[source]
        source: mome::Error,
    },
    /// The local backbone or engine of `Client::ask` failed.
    #[error("local engine: {source}")]
    Model {
        /// The engine's error.
        #[source]
        source: mome::Error,
    },
    /// A local file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// Path.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
}

impl Error {
    pub(crate) fn etcd(context: impl Into<String>, source: etcd_client::Error) -> Self {
        Error::Etcd {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn objects(context: impl Into<String>, source: object_store::Error) -> Self {
        Error::ObjectStore {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether retrying elsewhere (another replica, the new owner) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotOwner { .. }
                | Error::NoOwner { .. }
                | Error::Unavailable { .. }
                | Error::Stale { .. }
                | Error::Rpc { .. }
                | Error::Connect { .. }
                | Error::Timeout { .. }
                | Error::Fenced { .. }
        )
    }
}
