//! # mome-cluster — the scale-out tier of mome
//!
//! mome's embedded engine holds about a million experts of the reference shape on one
//! machine. This crate runs it past one machine on existing distributed systems:
//!
//! * **etcd** holds only small, strongly consistent state: the cluster config, node
//!   membership under leases, one ownership key per shard (created only if absent; its
//!   create revision is the fencing token), and one manifest per shard (generation and
//!   list of segment objects). Never one entry per expert.
//! * **S3-compatible object storage** holds every byte of bulk data as immutable
//!   [segments](segment) under unique names.
//! * **Nodes** ([`node`]) run the embedded engine (a local `mome::Store` and
//!   `mome::ExpertIndex` per served shard) as a cache over those segments, and
//!   the owner of a shard commits its writes with one fenced etcd transaction.
//! * The **router** ([`Client`]) fans a query out to the nodes serving the shards,
//!   merges their top-k deterministically (ties by id), reads its own writes by
//!   minimum revision, and hedges slow nodes to a replica.
//!
//! See `docs/SCALE.md` for the design, the invariants and the figures.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod ask;
pub mod client;
pub mod coord;
pub mod defrag;
pub mod error;
pub mod history;
pub mod manifest;
pub mod node;
pub mod objects;
pub mod replica;
pub mod rpc;
pub mod segment;
pub mod testbed;
pub mod view;

pub use ask::ClusterAnswer;
pub use client::{Client, ClientOptions, SearchOptions, SearchResult};
pub use error::{Error, Result};
pub use manifest::{shard_of, ClusterConfig};
pub use replica::Hit;
pub use segment::ClusterExpert;
