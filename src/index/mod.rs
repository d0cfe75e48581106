//! Vector index over expert keys: stage 1 of selection (retrieval of top-K candidates).
//!
//! Two implementations of [`KeyIndex`]: [`HnswIndex`] (usearch HNSW, cosine, fp16 or i8
//! storage) for large stores, and [`FlatIndex`] (exact scan), the oracle for recall tests
//! and the right choice for small stores. [`ExpertIndex`] keeps either in step with a
//! [`Store`](crate::store::Store), persists it next to the store with the commit sequence
//! it covers, and catches up or rebuilds on open.

mod error;
mod expert_index;
mod flat;
mod graph;
mod hnsw;
mod params;
mod reachable;
mod rerank;
mod saved;

pub use error::{IndexError, IndexResult};
pub use expert_index::{ExpertIndex, IndexCheck, OpenedFrom};
pub use flat::FlatIndex;
pub use hnsw::HnswIndex;
pub use params::{IndexKind, IndexParams, Quantization};
pub use reachable::add_reachable;
pub use saved::{saved_index_info, tombstone_horizon, SavedIndexInfo};

use error::IndexResult as Result;

/// One search result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Expert id.
    pub id: u64,
    /// Cosine similarity between the query and the expert's key, in [-1, 1].
    pub score: f32,
}

/// A nearest-neighbour index over expert keys with cosine similarity.
///
/// Implementations are safe to search from many threads while another thread adds.
pub trait KeyIndex: Send + Sync {
    /// Key dimension.
    fn dim(&self) -> usize;
    /// Number of keys indexed.
    fn len(&self) -> usize;
    /// Whether the index is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Adds (or replaces) the key of `id`.
    fn add(&self, id: u64, key: &[f32]) -> Result<()>;
    /// Removes `id`; `false` if it was not indexed.
    fn remove(&self, id: u64) -> Result<bool>;
    /// Whether `id` is indexed.
    fn contains(&self, id: u64) -> bool;
    /// The `k` keys most similar to `query`, best first.
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>>;
    /// Searches several queries (`queries.len() == n * dim`), one result list each.
    fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        let dim = self.dim();
        check_batch(queries, dim)?;
        queries
            .chunks_exact(dim)
            .map(|q| self.search(q, k))
            .collect()
    }
    /// Changes the search expansion (ef) where the structure has one; exact indexes
    /// ignore it.
    fn set_expansion_search(&self, _ef: usize) {}
    /// Whether searches are exact (no reachability to check after adds).
    fn is_exact(&self) -> bool {
        false
    }
    /// Turns the crate's own search over a read-only copy of the structure on or off
    /// (see [`HnswIndex::own_traversal`]); returns whether it now serves. Structures
    /// without one return `false`.
    fn own_traversal(&self, _on: bool) -> Result<bool> {
        Ok(false)
    }
    /// Whether the crate's own search serves searches now (no add or remove since the
    /// copy was made).
    fn own_traversal_active(&self) -> bool {
        false
    }
    /// Serialises the index to `path`.
    fn save(&self, path: &std::path::Path) -> Result<()>;
    /// Approximate bytes of memory used.
    fn memory_bytes(&self) -> usize;
}

/// Checks a query's dimension and finiteness.
pub(crate) fn check_query(query: &[f32], dim: usize, what: &str) -> Result<()> {
    if query.len() != dim {
        return Err(IndexError::DimMismatch {
            what: what.to_string(),
            expected: dim,
            found: query.len(),
        });
    }
    if let Some(index) = query.iter().position(|x| !x.is_finite()) {
        return Err(IndexError::NonFinite {
            what: what.to_string(),
            index,
        });
    }
    Ok(())
}

/// Checks that a batch of queries is whole rows of `dim`.
pub(crate) fn check_batch(queries: &[f32], dim: usize) -> Result<()> {
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(IndexError::DimMismatch {
            what: "batch of queries (length must be a multiple of key_dim)".into(),
            expected: dim,
            found: queries.len(),
        });
    }
    Ok(())
}

/// Checks `k` for a search.
pub(crate) fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(IndexError::InvalidArgument {
            name: "k",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}
