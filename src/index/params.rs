//! Index parameters: structure, HNSW connectivity and expansion, vector storage.

use serde::{Deserialize, Serialize};

/// Which index structure to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum IndexKind {
    /// usearch HNSW graph: sub-linear search, approximate.
    Hnsw,
    /// Exact scan: linear search, for small stores and as an oracle.
    Flat,
}

/// How HNSW stores vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Quantization {
    /// Half precision (the keys' own precision).
    F16,
    /// 8-bit integers: half the memory, lower recall.
    I8,
}

/// Index parameters; persisted with the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IndexParams {
    /// Structure.
    pub kind: IndexKind,
    /// HNSW connectivity (M): edges per node.
    pub connectivity: usize,
    /// HNSW expansion while adding (ef_construction).
    pub expansion_add: usize,
    /// HNSW expansion while searching (ef); may change without a rebuild.
    pub expansion_search: usize,
    /// HNSW vector storage.
    pub quantization: Quantization,
}

impl Default for IndexParams {
    /// Chosen from measurements at 100k and 1M clustered keys of dim 576; see
    /// `docs/BENCHMARKS.md` ("Index").
    fn default() -> Self {
        IndexParams {
            kind: IndexKind::Hnsw,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            quantization: Quantization::F16,
        }
    }
}

impl IndexParams {
    /// The exact flat index.
    pub fn flat() -> Self {
        IndexParams {
            kind: IndexKind::Flat,
            ..Default::default()
        }
    }

    /// Checks the HNSW parameters against bounds (connectivity 2..=1024, expansions
    /// 1..=65536): they size usearch's per-node and per-search memory, and a saved
    /// `index.json` may carry anything.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.kind == IndexKind::Flat {
            return Ok(());
        }
        if !(2..=1024).contains(&self.connectivity) {
            return Err(format!(
                "connectivity {} is outside 2..=1024",
                self.connectivity
            ));
        }
        for (name, v) in [
            ("expansion_add", self.expansion_add),
            ("expansion_search", self.expansion_search),
        ] {
            if !(1..=65_536).contains(&v) {
                return Err(format!("{name} {v} is outside 1..=65536"));
            }
        }
        Ok(())
    }

    /// Whether an index built with `self` can serve `other` without a rebuild.
    pub(crate) fn same_structure(&self, other: &IndexParams) -> bool {
        self.kind == other.kind
            && (self.kind == IndexKind::Flat
                || (self.connectivity == other.connectivity
                    && self.expansion_add == other.expansion_add
                    && self.quantization == other.quantization))
    }
}
