//! Stage 1 (retrieval) and the request-level selection that the apply operator consumes.
//!
//! Once per request the pooled query searches the index for the top-K candidates; their
//! weight views are resolved from one store snapshot (zero-copy), their keys gathered
//! into a small `[K, key_dim]` fp16 tensor. Stage 2 then runs per token (and per adapted
//! layer, inside the fused operator) over just those K.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use half::f16;

use super::{select, SelectionParams, TokenAssignments};
use crate::error::{Error, Result};
use crate::index::{ExpertIndex, Hit};
use crate::kernels::AdapterWeights;
use crate::store::{ExpertRef, StoreError, UsageAccumulator};

/// The candidates of one request, resolved from one store snapshot.
#[derive(Clone)]
pub struct Candidates {
    experts: Arc<[ExpertRef]>,
    hits: Vec<Hit>,
    keys: Tensor,
    key_dim: usize,
}

impl std::fmt::Debug for Candidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidates")
            .field("hits", &self.hits)
            .finish_non_exhaustive()
    }
}

impl Candidates {
    /// Stage 1: the `k_candidates` experts whose keys are most similar to `pooled_query`.
    /// An empty store gives an empty candidate set.
    pub fn retrieve(
        index: &ExpertIndex,
        pooled_query: &[f32],
        k_candidates: usize,
    ) -> Result<Self> {
        if k_candidates == 0 {
            return Err(Error::InvalidArgument {
                name: "k_candidates",
                reason: "K must be at least 1".into(),
            });
        }
        let hits = index.search(pooled_query, k_candidates)?;
        let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
        // A candidate deleted between the search and this resolve is simply dropped.
        let snap = index.store().snapshot();
        let mut experts = Vec::with_capacity(ids.len());
        let mut kept = Vec::with_capacity(ids.len());
        for h in hits {
            match snap.get(h.id) {
                Ok(e) => {
                    experts.push(e);
                    kept.push(h);
                }
                Err(StoreError::UnknownExpert { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Self::from_experts(experts, kept, index.store().config().key_dim as usize)
    }

    /// Candidates from already-resolved experts (e.g. memory tuning's neighbours).
    pub fn from_experts(experts: Vec<ExpertRef>, hits: Vec<Hit>, key_dim: usize) -> Result<Self> {
        let mut flat: Vec<f16> = Vec::with_capacity(experts.len() * key_dim);
        for e in &experts {
            let k = e.key();
            if k.len() != key_dim {
                return Err(Error::DimMismatch {
                    what: format!("key of expert {}", e.id()),
                    expected: key_dim,
                    found: k.len(),
                });
            }
            flat.extend_from_slice(k);
        }
        let keys = Tensor::from_vec(flat, (experts.len(), key_dim), &Device::Cpu)
            .map_err(|e| Error::Kernel(e.into()))?;
        Ok(Candidates {
            experts: experts.into(),
            hits,
            keys,
            key_dim,
        })
    }

    /// Number of candidates (K, or fewer when the store holds fewer experts).
    pub fn len(&self) -> usize {
        self.experts.len()
    }

    /// Whether there is no candidate (an empty store).
    pub fn is_empty(&self) -> bool {
        self.experts.is_empty()
    }

    /// The candidate experts, in retrieval order (best first).
    pub fn experts(&self) -> &[ExpertRef] {
        &self.experts
    }

    /// Retrieval hits (id and cosine of the pooled query), in order.
    pub fn hits(&self) -> &[Hit] {
        &self.hits
    }

    /// Candidate keys `[K, key_dim]`, fp16.
    pub fn keys(&self) -> &Tensor {
        &self.keys
    }

    /// Keys as f32 rows (for the portable selection function).
    pub fn keys_f32(&self) -> Result<Vec<f32>> {
        Ok(self
            .experts
            .iter()
            .flat_map(|e| e.key().iter().map(|x| x.to_f32()))
            .collect())
    }

    /// Key dimension.
    pub fn key_dim(&self) -> usize {
        self.key_dim
    }

    /// The candidates' weights for the `layer_pos`-th adapted layer, borrowed from the
    /// store's mapping (no copy).
    pub fn layer_weights(&self, layer_pos: usize) -> Result<Arc<dyn AdapterWeights>> {
        let Some(first) = self.experts.first() else {
            return Ok(Arc::new(StoreAdapters {
                experts: self.experts.clone(),
                layer: layer_pos,
                rank: 0,
                d_model: 0,
            }));
        };
        if layer_pos >= first.n_layers() {
            return Err(Error::InvalidArgument {
                name: "layer_pos",
                reason: format!(
                    "adapted layer position {layer_pos} but experts have {} layers",
                    first.n_layers()
                ),
            });
        }
        let layout = first.layout();
        Ok(Arc::new(StoreAdapters {
            experts: self.experts.clone(),
            layer: layer_pos,
            rank: layout.rank,
            d_model: layout.d_model,
        }))
    }
}

/// One adapted layer's weights of a candidate set, straight from the shard mappings.
pub struct StoreAdapters {
    experts: Arc<[ExpertRef]>,
    layer: usize,
    rank: usize,
    d_model: usize,
}

impl AdapterWeights for StoreAdapters {
    fn num_candidates(&self) -> usize {
        self.experts.len()
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn d_model(&self) -> usize {
        self.d_model
    }
    fn a(&self, j: usize) -> &[f16] {
        self.experts.get(j).map_or(&[], |e| e.a(self.layer))
    }
    fn b(&self, j: usize) -> &[f16] {
        self.experts.get(j).map_or(&[], |e| e.b(self.layer))
    }
}

/// The full selection of a request: candidates (stage 1) and per-token assignments
/// (stage 2), as a plain data structure.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Stage-1 candidates.
    pub candidates: Candidates,
    /// Stage-2 result: for each token, (candidate index, score, weight).
    pub assignments: TokenAssignments,
}

impl Selection {
    /// Runs both stages: retrieval with the pooled query, then per-token selection with
    /// `queries` (`T × key_dim`, row-major). `top_k` may not exceed `k_candidates`.
    pub fn compute(
        index: &ExpertIndex,
        pooled_query: &[f32],
        queries: &[f32],
        k_candidates: usize,
        params: &SelectionParams,
    ) -> Result<Selection> {
        if k_candidates == 0 {
            return Err(Error::InvalidArgument {
                name: "k_candidates",
                reason: "K must be at least 1".into(),
            });
        }
        if params.top_k > k_candidates {
            return Err(Error::InvalidArgument {
                name: "top_k",
                reason: format!("k = {} exceeds K = {k_candidates}", params.top_k),
            });
        }
        let candidates = Candidates::retrieve(index, pooled_query, k_candidates)?;
        let assignments = candidates.select(queries, params)?;
        Ok(Selection {
            candidates,
            assignments,
        })
    }

    /// The expert ids a token uses with their weights.
    pub fn token(&self, t: usize) -> Vec<(u64, f32)> {
        self.assignments
            .get(t)
            .unwrap_or(&[])
            .iter()
            .filter_map(|s| {
                self.candidates
                    .experts
                    .get(s.candidate as usize)
                    .map(|e| (e.id(), s.weight))
            })
            .collect()
    }

    /// Adds one count per (token, selected expert) to the usage statistics.
    pub fn record_usage(&self, usage: &UsageAccumulator) {
        let mut ids = Vec::new();
        for t in 0..self.assignments.tokens() {
            ids.extend(self.token(t).into_iter().map(|(id, _)| id));
        }
        usage.record(&ids);
    }
}

impl Candidates {
    /// Stage 2 over these candidates for `queries` (`T × key_dim`).
    pub fn select(&self, queries: &[f32], params: &SelectionParams) -> Result<TokenAssignments> {
        if self.key_dim == 0 || !queries.len().is_multiple_of(self.key_dim) {
            return Err(Error::DimMismatch {
                what: "per-token queries (length must be a multiple of key_dim)".into(),
                expected: self.key_dim,
                found: queries.len(),
            });
        }
        if let Some(index) = queries.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "per-token queries".into(),
                index,
            });
        }
        let keys = self.keys_f32()?;
        Ok(select(queries, &keys, self.key_dim, params)?)
    }

    /// The usage-frequency penalty of L2P for these candidates: `lambda · n_j / max_i n_i`
    /// where `n_j` counts past selections (persisted and pending). Off unless asked for.
    pub fn usage_penalty(
        &self,
        usage: &UsageAccumulator,
        store: &crate::store::Store,
        lambda: f32,
    ) -> Result<Vec<f32>> {
        let counts: Vec<u64> = self
            .experts
            .iter()
            .map(|e| usage.total(store, e.id()))
            .collect::<crate::store::StoreResult<_>>()?;
        let max = counts.iter().copied().max().unwrap_or(0).max(1) as f32;
        Ok(counts.iter().map(|&n| lambda * n as f32 / max).collect())
    }
}
