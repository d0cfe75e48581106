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
    /// 8-bit integers: half the memory and cheaper distances, lower recall on its own;
    /// pair it with [`IndexParams::rerank`] to re-rank the graph's candidates exactly.
    /// Each vector is scaled by 127 / its largest magnitude and rounded (cosine ignores
    /// the scale), so every key and query uses the full 8 bits. Saved as `"i8max"`.
    #[serde(rename = "i8max")]
    I8,
    /// An index saved as `"i8"`, before [`Quantization::I8`] made its own codes: it
    /// holds usearch's codes (divided by the L2 norm, truncated), which must not be
    /// mixed with the new ones. Never built: opening asks for [`Quantization::I8`]
    /// instead ([`IndexParams::upgraded`]), so such an index is rebuilt from the
    /// store's keys with its other parameters kept.
    #[doc(hidden)]
    #[serde(rename = "i8")]
    LegacyI8,
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
    /// Candidates taken from the graph before exact re-ranking (0: none). A search for
    /// `k` takes the `max(rerank, k)` best by the graph's own (possibly quantized)
    /// distances, scores each by exact cosine with its fp16 key read from the store's
    /// shard (checksum-verified like every read), and returns the top `k`. May change
    /// without a rebuild; absent in indexes saved before it existed (read as 0).
    #[serde(default)]
    pub rerank: usize,
    /// On an i8 graph, search with the crate's own traversal of a read-only copy of the
    /// graph usearch built (prefetching, flat layout; same recall as usearch's search at
    /// the same ef) instead of usearch's search. The copy costs memory (`key_dim` rounded
    /// up to 64, plus `4 × (2M + 1) + 12` bytes per expert) and is remade after each save
    /// and each reader catch-up; between a write and the next save, searches go through
    /// usearch. No effect on f16 graphs. May change without a rebuild; absent in indexes
    /// saved before it existed (read as on).
    #[serde(default = "yes")]
    pub own_search: bool,
}

fn yes() -> bool {
    true
}

impl Default for IndexParams {
    /// Chosen from measurements at 100k, 300k and 1M clustered keys of dim 576
    /// (`docs/BENCHMARKS.md`, "Index" and "1M: the sweep beside FAISS"). At 1M, M 16
    /// needed ef 128 for recall@10 ≥ 0.97 (0.971 at 773 / 1,532 µs p50 / p99; 0.957 at
    /// ef 64); M 32 at ef 64 gave 0.986 at 473 / 807 µs and built no slower.
    fn default() -> Self {
        IndexParams {
            kind: IndexKind::Hnsw,
            connectivity: 32,
            expansion_add: 128,
            expansion_search: 64,
            quantization: Quantization::F16,
            rerank: 0,
            own_search: true,
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
        // The re-rank width sizes a search's candidate list (and usearch widens ef to it).
        if self.rerank > 65_536 {
            return Err(format!("rerank {} is outside 0..=65536", self.rerank));
        }
        Ok(())
    }

    /// The parameters to build with for these (saved) ones: a legacy i8 index is
    /// rebuilt with today's i8 codes.
    pub(crate) fn upgraded(mut self) -> Self {
        if self.quantization == Quantization::LegacyI8 {
            self.quantization = Quantization::I8;
        }
        self
    }

    /// Whether an index built with `self` can serve `other` without a rebuild (the
    /// search-time knobs, `expansion_search`, `rerank` and `own_search`, do not count).
    pub(crate) fn same_structure(&self, other: &IndexParams) -> bool {
        self.kind == other.kind
            && (self.kind == IndexKind::Flat
                || (self.connectivity == other.connectivity
                    && self.expansion_add == other.expansion_add
                    && self.quantization == other.quantization))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `index.json` written before `rerank` existed still parses (as no re-rank), and
    /// the search-time knobs never force a rebuild.
    #[test]
    fn params_saved_without_rerank_still_load() {
        let old = r#"{"kind":"hnsw","connectivity":16,"expansion_add":128,
                      "expansion_search":64,"quantization":"f16"}"#;
        let p: IndexParams = serde_json::from_str(old).expect("old params");
        // The saved M is kept (16 was the default then); everything else is today's.
        assert_eq!(
            p,
            IndexParams {
                connectivity: 16,
                ..IndexParams::default()
            }
        );
        assert_eq!(p.rerank, 0);
        let mut q = p;
        q.rerank = 128;
        q.expansion_search = 200;
        q.own_search = false;
        assert!(p.same_structure(&q));
        assert!(
            p.own_search,
            "an index saved before the knob searches its own way"
        );
        q.quantization = Quantization::I8;
        assert!(!p.same_structure(&q));
        let back: IndexParams =
            serde_json::from_str(&serde_json::to_string(&q).expect("encode")).expect("decode");
        assert_eq!(back, q);
        q.rerank = 65_537;
        assert!(q.check().is_err());
        // An index of usearch's own i8 codes is not read as one of ours: it is rebuilt
        // as i8 with its other parameters.
        let old_i8 = old.replace("f16", "i8");
        let legacy: IndexParams = serde_json::from_str(&old_i8).expect("legacy i8");
        assert_eq!(legacy.quantization, Quantization::LegacyI8);
        let up = legacy.upgraded();
        assert_eq!(up.quantization, Quantization::I8);
        assert_eq!(up.connectivity, legacy.connectivity);
        assert!(!legacy.same_structure(&up));
        assert!(serde_json::to_string(&up)
            .expect("encode")
            .contains("\"i8max\""));
    }
}
