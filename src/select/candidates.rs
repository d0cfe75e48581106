//! A request's candidate experts and the view of their weights that the fused operator
//! reads.

use std::sync::Arc;

use half::f16;

use crate::kernels::AdapterWeights;
use crate::store::{AdapterPair, ExpertRef};

/// A request's candidate experts: stored ones (zero-copy views into the shard
/// mappings) and, during memory tuning's verification, new ones not yet committed
/// (owned weights). Stored candidates come first.
#[derive(Clone, Default)]
pub struct CandidateSet {
    stored: Vec<ExpertRef>,
    owned: Vec<Arc<Vec<AdapterPair>>>,
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

    /// Adds an uncommitted expert (one pair per adapted layer); returns its index.
    pub fn push_owned(&mut self, layers: Arc<Vec<AdapterPair>>) -> usize {
        self.owned.push(layers);
        self.len() - 1
    }

    /// The stored candidates.
    pub fn stored_refs(&self) -> &[ExpertRef] {
        &self.stored
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

    /// `A` of candidate `j` at adapted layer `layer` (store order): `rank × d_model`.
    pub fn a(&self, j: usize, layer: usize) -> &[f16] {
        match self.stored.get(j) {
            Some(e) => e.a(layer),
            None => self
                .owned
                .get(j - self.stored.len())
                .and_then(|o| o.get(layer))
                .map_or(&[], |p| &p.a[..]),
        }
    }

    /// `B` of candidate `j` at adapted layer `layer`: `d_model × rank`.
    pub fn b(&self, j: usize, layer: usize) -> &[f16] {
        match self.stored.get(j) {
            Some(e) => e.b(layer),
            None => self
                .owned
                .get(j - self.stored.len())
                .and_then(|o| o.get(layer))
                .map_or(&[], |p| &p.b[..]),
        }
    }

    /// The candidates' weights at adapted layer `layer`, as the fused operator reads
    /// them (borrowed, no copy).
    pub fn layer_weights(
        &self,
        layer: usize,
        rank: usize,
        d_model: usize,
    ) -> Arc<dyn AdapterWeights> {
        Arc::new(LayerWeights {
            set: self.clone(),
            layer,
            rank,
            d_model,
        })
    }
}

/// One adapted layer's weights of a candidate set.
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
        self.set.a(j, self.layer)
    }
    fn b(&self, j: usize) -> &[f16] {
        self.set.b(j, self.layer)
    }
}
