//! The node RPC (gRPC through tonic): generated types, limits, and conversions.
//!
//! Errors cross the wire as a gRPC status with a machine-readable kind in the
//! `mome-error` metadata entry, so the router can tell "retry at the new owner" from
//! "this write was fenced" without parsing messages.

use half::f16;
use mome::{AdapterPair, Provenance, StoreConfig};

use crate::error::Error;
use crate::segment::{ClusterExpert, Shape};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("mome.cluster.v1");
}

pub use pb::node_client::NodeClient;
pub use pb::node_server::{Node as NodeRpc, NodeServer};
pub use pb::{
    Expert, FetchReply, FetchRequest, Hit, SearchReply, SearchRequest, ShardHits, ShardQuery,
    ShardStatus, StatusReply, StatusRequest, WriteReply, WriteRequest,
};

/// Largest message a node or router encodes or decodes (64 MiB: a write of ≈ 1,700
/// experts of the reference shape; routers split bigger batches).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Bytes of experts a router puts in one write request.
pub const WRITE_CHUNK_BYTES: usize = 16 << 20;

const KIND: &str = "mome-error";

/// Encodes an error as a status with its kind.
pub fn to_status(e: &Error) -> tonic::Status {
    let (code, kind) = match e {
        Error::Fenced { .. } => (tonic::Code::Aborted, "fenced"),
        Error::NotOwner { .. } => (tonic::Code::FailedPrecondition, "not-owner"),
        Error::NoOwner { .. } => (tonic::Code::Unavailable, "no-owner"),
        Error::Stale { .. } => (tonic::Code::Unavailable, "stale"),
        Error::Unavailable { .. } => (tonic::Code::Unavailable, "unavailable"),
        Error::Timeout { .. } => (tonic::Code::DeadlineExceeded, "timeout"),
        Error::InvalidInput { .. } | Error::Segment { .. } => {
            (tonic::Code::InvalidArgument, "invalid")
        }
        Error::ShuttingDown => (tonic::Code::Unavailable, "shutting-down"),
        _ => (tonic::Code::Internal, "internal"),
    };
    let mut s = tonic::Status::new(code, e.to_string());
    if let Ok(v) = kind.parse() {
        s.metadata_mut().insert(KIND, v);
    }
    s
}

/// The kind a node put on a status (`fenced`, `not-owner`, ...), if any.
pub fn status_kind(s: &tonic::Status) -> Option<&str> {
    s.metadata().get(KIND).and_then(|v| v.to_str().ok())
}

fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect()
}

fn bytes_f16(b: &[u8]) -> Vec<f16> {
    b.chunks_exact(2)
        .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

/// An expert on the wire.
pub fn expert_to_pb(e: &ClusterExpert) -> Result<Expert, Error> {
    let mut weights = Vec::new();
    for p in &e.layers {
        weights.extend(f16_bytes(&p.a));
        weights.extend(f16_bytes(&p.b));
    }
    Ok(Expert {
        id: e.id,
        key: f16_bytes(&e.key),
        weights,
        provenance: serde_json::to_vec(&e.provenance).map_err(|e| Error::invalid(e.to_string()))?,
        created_at_ms: e.created_at_ms,
    })
}

/// An expert from the wire, checked against the cluster's shape.
pub fn expert_from_pb(p: &Expert, config: &StoreConfig) -> Result<ClusterExpert, Error> {
    let shape = Shape::of(config);
    if p.key.len() != shape.key_bytes() || p.weights.len() != shape.weight_bytes() {
        return Err(Error::invalid(format!(
            "expert {}: {} key bytes and {} weight bytes, expected {} and {}",
            p.id,
            p.key.len(),
            p.weights.len(),
            shape.key_bytes(),
            shape.weight_bytes()
        )));
    }
    let m = shape.mat_len * 2;
    let layers = p
        .weights
        .chunks_exact(2 * m)
        .map(|c| AdapterPair {
            a: bytes_f16(&c[..m]),
            b: bytes_f16(&c[m..]),
        })
        .collect();
    let provenance: Provenance = serde_json::from_slice(&p.provenance)
        .map_err(|e| Error::invalid(format!("expert {}: provenance: {e}", p.id)))?;
    let e = ClusterExpert {
        id: p.id,
        key: bytes_f16(&p.key),
        layers,
        provenance,
        created_at_ms: p.created_at_ms,
    };
    shape.check(&e).map_err(|e| Error::invalid(e.to_string()))?;
    Ok(e)
}

/// Wire size of an expert (for splitting writes).
pub fn wire_bytes(config: &StoreConfig) -> usize {
    let s = Shape::of(config);
    s.key_bytes() + s.weight_bytes() + 64
}
