//! The inference hook of the engine: the fused selection + apply operator over one
//! request's candidates, with the request-level query (see `Engine` docs for why).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::error::{Error, Result};
use crate::kernels::{fused_apply, AdapterWeights};
use crate::model::AdapterHook;
use crate::select::{select, SelectionParams};
use crate::store::{AdapterPair, ExpertRef};

/// A request's candidate experts: stored ones (zero-copy views) and, during memory
/// tuning's verification, new ones not yet committed (owned weights).
#[derive(Clone, Default)]
pub struct CandidateSet {
    stored: Vec<ExpertRef>,
    owned: Vec<(Vec<f16>, Arc<Vec<AdapterPair>>)>,
}

impl std::fmt::Debug for CandidateSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandidateSet")
            .field("stored", &self.ids())
            .field("owned", &self.owned.len())
            .finish()
    }
}

impl CandidateSet {
    /// Candidates from stored experts.
    pub fn from_stored(stored: Vec<ExpertRef>) -> Self {
        Self {
            stored,
            owned: Vec::new(),
        }
    }

    /// Adds an uncommitted expert (its key and one pair per adapted layer).
    pub fn push_owned(&mut self, key: Vec<f16>, layers: Arc<Vec<AdapterPair>>) {
        self.owned.push((key, layers));
    }

    /// The stored candidates.
    pub fn stored_refs(&self) -> &[ExpertRef] {
        &self.stored
    }

    /// The `k` candidates whose keys are most similar (cosine) to `query`, best first
    /// (what stage 1 would return once the uncommitted ones are committed).
    pub fn top_by_score(self, query: &[f32], k: usize) -> Self {
        let cos = |key: &[f16]| -> f32 {
            let (mut d, mut n) = (0f32, 0f32);
            for (x, q) in key.iter().zip(query) {
                let x = x.to_f32();
                d += x * q;
                n += x * x;
            }
            if n == 0.0 {
                0.0
            } else {
                d / n.sqrt()
            }
        };
        let mut order: Vec<(usize, f32)> = (0..self.len()).map(|j| (j, cos(self.key(j)))).collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        order.truncate(k);
        let mut out = CandidateSet::default();
        let n_stored = self.stored.len();
        for (j, _) in order {
            if let Some(e) = self.stored.get(j) {
                out.stored.push(e.clone());
            } else if let Some(o) = self.owned.get(j - n_stored) {
                out.owned.push(o.clone());
            }
        }
        out
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.stored.len() + self.owned.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids of the candidates: the stored id, or `None` for an uncommitted one.
    pub fn ids(&self) -> Vec<Option<u64>> {
        self.stored
            .iter()
            .map(|e| Some(e.id()))
            .chain(self.owned.iter().map(|_| None))
            .collect()
    }

    fn key(&self, j: usize) -> &[f16] {
        match self.stored.get(j) {
            Some(e) => e.key(),
            None => self
                .owned
                .get(j - self.stored.len())
                .map_or(&[], |o| &o.0[..]),
        }
    }

    /// Keys as f32 rows, `[K × key_dim]`.
    pub fn keys_f32(&self) -> Vec<f32> {
        (0..self.len())
            .flat_map(|j| self.key(j).iter().map(|x| x.to_f32()))
            .collect()
    }

    /// Stage-2 selection for one query: (candidate index, weight), best first.
    pub fn select(
        &self,
        query: &[f32],
        key_dim: usize,
        params: &SelectionParams,
    ) -> Result<Vec<(usize, f32)>> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let a = select(query, &self.keys_f32(), key_dim, params)?;
        Ok(a.get(0)
            .unwrap_or(&[])
            .iter()
            .map(|s| (s.candidate as usize, s.weight))
            .collect())
    }
}

struct LayerWeights {
    set: CandidateSet,
    layer: usize,
    rank: usize,
    d_model: usize,
}

impl AdapterWeights for LayerWeights {
    fn num_candidates(&self) -> usize {
        self.set.len()
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn d_model(&self) -> usize {
        self.d_model
    }
    fn a(&self, j: usize) -> &[f16] {
        match self.set.stored.get(j) {
            Some(e) => e.a(self.layer),
            None => self
                .set
                .owned
                .get(j - self.set.stored.len())
                .and_then(|o| o.1.get(self.layer))
                .map_or(&[], |p| &p.a[..]),
        }
    }
    fn b(&self, j: usize) -> &[f16] {
        match self.set.stored.get(j) {
            Some(e) => e.b(self.layer),
            None => self
                .set
                .owned
                .get(j - self.set.stored.len())
                .and_then(|o| o.1.get(self.layer))
                .map_or(&[], |p| &p.b[..]),
        }
    }
}

/// [`AdapterHook`] running the fused operator with one query per batch row (the
/// request query) for every position of that row.
pub struct RequestHook {
    /// Candidates: one entry shared by every row, or one per row.
    sets: Vec<RowCandidates>,
    layer_pos: HashMap<usize, usize>,
    params: SelectionParams,
    /// `[B, key_dim]`.
    queries: Tensor,
}

/// One candidate set as the fused operator takes it.
struct RowCandidates {
    /// `[K, key_dim]` f32.
    keys: Tensor,
    /// One view per adapted layer.
    weights: Vec<Arc<dyn AdapterWeights>>,
}

impl RowCandidates {
    fn new(
        set: CandidateSet,
        n_layers: usize,
        key_dim: usize,
        rank: usize,
        d_model: usize,
    ) -> Result<Self> {
        let flat_keys: Vec<f16> = (0..set.len())
            .flat_map(|j| set.key(j).iter().copied())
            .collect();
        if flat_keys.len() != set.len() * key_dim {
            return Err(Error::DimMismatch {
                what: "candidate keys vs request query".into(),
                expected: set.len() * key_dim,
                found: flat_keys.len(),
            });
        }
        let kerr = |e: candle_core::Error| Error::Kernel(e.into());
        let keys = Tensor::from_vec(flat_keys, (set.len(), key_dim), &Device::Cpu)
            .map_err(kerr)?
            .to_dtype(DType::F32)
            .map_err(kerr)?;
        let weights = (0..n_layers)
            .map(|layer| {
                Arc::new(LayerWeights {
                    set: set.clone(),
                    layer,
                    rank,
                    d_model,
                }) as Arc<dyn AdapterWeights>
            })
            .collect();
        Ok(Self { keys, weights })
    }
}

impl std::fmt::Debug for RequestHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHook")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl RequestHook {
    /// A hook for `set` on the adapted backbone `layers` (store order), with one
    /// request query per batch row (`queries`: rows of `key_dim`).
    pub fn new(
        set: CandidateSet,
        params: SelectionParams,
        layers: &[u32],
        rank: usize,
        d_model: usize,
        queries: &[Vec<f32>],
    ) -> Result<Self> {
        Self::per_row(vec![set], params, layers, rank, d_model, queries)
    }

    /// A hook where batch row `i` has its own candidate set `sets[i]` (one set: shared
    /// by every row), e.g. verifying a batch of new facts in one pass.
    pub fn per_row(
        sets: Vec<CandidateSet>,
        params: SelectionParams,
        layers: &[u32],
        rank: usize,
        d_model: usize,
        queries: &[Vec<f32>],
    ) -> Result<Self> {
        let key_dim = queries.first().map_or(0, Vec::len);
        if sets.len() != 1 && sets.len() != queries.len() {
            return Err(Error::InvalidArgument {
                name: "sets",
                reason: format!(
                    "{} candidate sets for {} request queries (one, or one per query)",
                    sets.len(),
                    queries.len()
                ),
            });
        }
        let sets = sets
            .into_iter()
            .map(|set| RowCandidates::new(set, layers.len(), key_dim, rank, d_model))
            .collect::<Result<Vec<_>>>()?;
        let kerr = |e: candle_core::Error| Error::Kernel(e.into());
        let q: Vec<f32> = queries.iter().flatten().copied().collect();
        let queries = Tensor::from_vec(q, (queries.len(), key_dim), &Device::Cpu).map_err(kerr)?;
        Ok(Self {
            sets,
            layer_pos: layers
                .iter()
                .enumerate()
                .map(|(i, &l)| (l as usize, i))
                .collect(),
            params,
            queries,
        })
    }
}

impl AdapterHook for RequestHook {
    fn apply(
        &self,
        layer: usize,
        h: &Tensor,
        h_norm: &Tensor,
        _queries: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some(&pos) = self.layer_pos.get(&layer) else {
            return Ok(h.clone());
        };
        let (b, t, _) = h.dims3()?;
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let Some(set) = self.sets.get(i).or(self.sets.last()) else {
                return Ok(h.clone());
            };
            let (Some(weights), true) = (set.weights.get(pos), set.keys.dim(0)? > 0) else {
                rows.push(h.get(i)?);
                continue;
            };
            let q = self.queries.get(i)?.unsqueeze(0)?;
            let q = q.broadcast_as((t, q.dim(1)?))?.contiguous()?;
            let out = fused_apply(
                &h.get(i)?.contiguous()?,
                &h_norm.get(i)?.contiguous()?,
                &q,
                &set.keys,
                weights.clone(),
                &self.params,
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            rows.push(out);
        }
        Tensor::stack(&rows, 0)
    }
}
