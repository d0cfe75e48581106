//! # mome — memory experts for a frozen transformer
//!
//! mome is an embedded engine that lets a model runtime attach millions of *memory
//! experts* to a frozen transformer. An expert is a key vector plus small fp16 low-rank
//! adapter weights for a few layers of the backbone. The engine stores experts durably
//! (RocksDB metadata, memory-mapped shard files), finds candidates with a vector index,
//! picks and weights them per token by cross-attention, and applies them inside the
//! backbone's forward pass.
//!
//! The foundation is the [`Store`]:
//!
//! ```
//! use half::f16;
//! use mome::store::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
//!
//! # fn main() -> mome::Result<()> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! // d_model 64, key_dim 64, rank 4, adapters on layers 2 and 5.
//! let config = StoreConfig::new(64, 64, 4, vec![2, 5]);
//! let store = Store::create(dir.path().join("experts"), config)?;
//!
//! let pair = AdapterPair { a: vec![f16::from_f32(0.01); 4 * 64], b: vec![f16::ZERO; 64 * 4] };
//! let id = store.insert(NewExpert {
//!     key: vec![f16::from_f32(0.125); 64],
//!     layers: vec![pair.clone(), pair],
//!     provenance: Provenance::fact("The secret code of Zorblax is", "48213"),
//! })?; // durable once this returns
//!
//! let expert = store.get(id)?; // zero-copy view into the shard's memory map
//! assert_eq!(expert.key()[0], f16::from_f32(0.125));
//! assert_eq!(expert.a(1).len(), 4 * 64);
//! assert_eq!(store.meta(id)?.provenance.answer.as_deref(), Some("48213"));
//! # Ok(())
//! # }
//! ```
//!
//! See `ARCHITECTURE.md` for how the pieces fit and which invariants they keep.
#![deny(clippy::unwrap_used)]
#![warn(missing_docs)]

pub mod archive;
pub mod engine;
pub mod error;
pub mod index;
pub mod kernels;
pub mod model;
pub mod progress;
pub mod select;
pub mod store;
pub mod synth;
pub mod tune;

pub use error::{Error, Result};
pub use store::{ExpertRef, NewExpert, Provenance, Snapshot, Store, StoreConfig};
