//! Both stages for one question: retrieval from the index, the rule over the
//! candidates' stored prompts, and the resulting candidate set and plan. The engine's
//! `ask` and memory tuning both come through here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::candidates::CandidateSet;
use super::plan::RowPlan;
use super::query::{Encoded, Query, QueryEncoder};
use super::rule::{select_facts, Chosen, RuleParams};
use crate::error::{Error, Result};
use crate::index::{ExpertIndex, Hit};
use crate::model::Backbone;
use crate::store::{AdapterPair, ExpertRef, Store, StoreError};

/// Width of the retried stage-1 search when the first finds nothing the rule selects:
/// usearch widens its expansion to at least the number of results. A greedy HNSW
/// search can end among unrelated keys and never enter a small, dense cluster of facts
/// (measured: 3 of 160 facts among 1M random distractors were found only this way).
pub const RETRY_CANDIDATES: usize = 1024;

/// Of a retried search, only hits whose index score is above this go to the rule (a
/// rewording's key scores ≥ 0.6 against its stored prompt's; docs/BENCHMARKS.md), so
/// the retry costs one wider search and a handful of rule evaluations.
pub const RETRY_MIN_SCORE: f32 = 0.4;

/// Stored facts whose queries are kept in memory (each a few tens of KiB).
const FACT_CACHE: usize = 4096;

/// What the rule chose for one question.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Stage-1 hits (id, cosine of the pooled keys), best first.
    pub hits: Vec<Hit>,
    /// The chosen experts (stored first, then uncommitted), in the plan's columns.
    pub set: CandidateSet,
    /// Per column of `set`: where the chosen expert comes from, and its forward score.
    pub chosen: Vec<(Source, f32)>,
    /// Where each chosen expert is active.
    pub plan: RowPlan,
}

impl Selection {
    /// Nothing chosen, no candidates.
    pub fn empty() -> Self {
        Self {
            hits: Vec::new(),
            set: CandidateSet::default(),
            chosen: Vec::new(),
            plan: RowPlan::none(0),
        }
    }

    /// Whether nothing was chosen (the bare backbone answers).
    pub fn is_empty(&self) -> bool {
        self.chosen.is_empty()
    }
}

/// Where a chosen expert comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A stored expert (its id).
    Stored(u64),
    /// The uncommitted candidate at this index of the `owned` list given to
    /// [`Selector::choose`].
    Owned(usize),
}

impl Source {
    /// The stored id, if any.
    pub fn id(self) -> Option<u64> {
        match self {
            Source::Stored(id) => Some(id),
            Source::Owned(_) => None,
        }
    }
}

/// A stored candidate: its expert and its prompt's query.
pub type StoredFact = (ExpertRef, Arc<Query>);

/// An uncommitted candidate: its prompt's query and its weights.
pub type OwnedFact = (Arc<Query>, Arc<Vec<AdapterPair>>);

/// Stored facts' queries by expert id (`None`: the fact has none), and the ids in
/// insertion order for eviction.
type QueryCache = (HashMap<u64, Option<Arc<Query>>>, VecDeque<u64>);

/// Stage 1 + the rule, with a cache of stored facts' queries.
pub struct Selector {
    encoder: QueryEncoder,
    rule: RuleParams,
    k_candidates: usize,
    cache: Mutex<QueryCache>,
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selector")
            .field("rule", &self.rule)
            .field("k_candidates", &self.k_candidates)
            .finish_non_exhaustive()
    }
}

impl Selector {
    /// A selector with its query encoder, rule and K.
    pub fn new(encoder: QueryEncoder, rule: RuleParams, k_candidates: usize) -> Result<Self> {
        if k_candidates == 0 {
            return Err(Error::InvalidArgument {
                name: "k_candidates",
                reason: "K must be at least 1".into(),
            });
        }
        Ok(Self {
            encoder,
            rule,
            k_candidates,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    /// The query encoder.
    pub fn encoder(&self) -> &QueryEncoder {
        &self.encoder
    }

    /// The rule's thresholds.
    pub fn rule(&self) -> &RuleParams {
        &self.rule
    }

    /// Candidates retrieved per question (K).
    pub fn k_candidates(&self) -> usize {
        self.k_candidates
    }

    /// The query of stored expert `id`'s prompt, `None` for an expert without one
    /// (it can never be selected).
    pub fn fact_query(
        &self,
        backbone: &Backbone,
        store: &Store,
        id: u64,
    ) -> Result<Option<Arc<Query>>> {
        if let Some(q) = self.cache.lock().0.get(&id) {
            return Ok(q.clone());
        }
        let meta = store.meta(id)?;
        let q = match meta.provenance.prompt.as_deref() {
            Some(p) if !p.trim().is_empty() => {
                Some(Arc::new(self.encoder.encode(backbone, p)?.query))
            }
            _ => None,
        };
        let mut c = self.cache.lock();
        if c.0.len() >= FACT_CACHE {
            if let Some(old) = c.1.pop_front() {
                c.0.remove(&old);
            }
        }
        if c.0.insert(id, q.clone()).is_none() {
            c.1.push_back(id);
        }
        Ok(q)
    }

    /// Forgets a cached fact (after it was deleted or replaced).
    pub fn forget(&self, id: u64) {
        let mut c = self.cache.lock();
        if c.0.remove(&id).is_some() {
            c.1.retain(|&x| x != id);
        }
    }

    /// Stage 1: the K experts whose keys are nearest `key`.
    pub fn retrieve(&self, index: &ExpertIndex, key: &[f32]) -> Result<Vec<Hit>> {
        if index.store().is_empty() {
            return Ok(Vec::new());
        }
        Ok(index.search(key, self.k_candidates)?)
    }

    /// Resolves hits to stored facts from one snapshot (deleted ones and experts
    /// without a prompt are dropped).
    pub fn resolve(
        &self,
        backbone: &Backbone,
        index: &ExpertIndex,
        hits: &[Hit],
    ) -> Result<Vec<StoredFact>> {
        let store = index.store();
        let snap = store.snapshot();
        let mut out = Vec::with_capacity(hits.len());
        for h in hits {
            let e = match snap.get(h.id) {
                Ok(e) => e,
                Err(StoreError::UnknownExpert { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(q) = self.fact_query(backbone, store, h.id)? {
                out.push((e, q));
            }
        }
        Ok(out)
    }

    /// Both stages for an encoded question: retrieval (retried wider when the rule
    /// selects nothing among the first K), then the rule.
    pub fn select(
        &self,
        backbone: &Backbone,
        index: &ExpertIndex,
        enc: &Encoded,
    ) -> Result<Selection> {
        let key = enc.query.pooled_key();
        let hits = self.retrieve(index, &key)?;
        let stored = self.resolve(backbone, index, &hits)?;
        let sel = self.choose(enc, &stored, &[], hits.clone());
        if !sel.is_empty() || hits.len() < self.k_candidates {
            return Ok(sel);
        }
        let mut wide = index.search(&key, RETRY_CANDIDATES.max(self.k_candidates))?;
        wide.retain(|h| h.score > RETRY_MIN_SCORE && !hits.iter().any(|x| x.id == h.id));
        if wide.is_empty() {
            return Ok(sel);
        }
        let mut stored = stored;
        stored.extend(self.resolve(backbone, index, &wide)?);
        let mut all = hits;
        all.extend(wide);
        Ok(self.choose(enc, &stored, &[], all))
    }

    /// The rule over given candidates: stored facts and uncommitted ones.
    pub fn choose(
        &self,
        enc: &Encoded,
        stored: &[StoredFact],
        owned: &[OwnedFact],
        hits: Vec<Hit>,
    ) -> Selection {
        let facts: Vec<&Query> = stored
            .iter()
            .map(|(_, q)| q.as_ref())
            .chain(owned.iter().map(|(q, _)| q.as_ref()))
            .collect();
        let chosen = select_facts(&enc.query, &facts, &self.rule);
        build(enc, stored, owned, &chosen, hits)
    }
}

/// The candidate set (chosen experts only, stored first) and plan for `chosen`.
fn build(
    enc: &Encoded,
    stored: &[StoredFact],
    owned: &[OwnedFact],
    chosen: &[Chosen],
    hits: Vec<Hit>,
) -> Selection {
    let n_stored = stored.len();
    let mut order: Vec<&Chosen> = chosen.iter().collect();
    order.sort_by_key(|c| (c.fact >= n_stored, c.fact));
    let mut set = CandidateSet::from_stored(
        order
            .iter()
            .filter(|c| c.fact < n_stored)
            .map(|c| stored[c.fact].0.clone())
            .collect(),
    );
    let mut column = HashMap::new();
    let mut ids = Vec::new();
    for (col, c) in order.iter().enumerate() {
        if c.fact >= n_stored {
            set.push_owned(owned[c.fact - n_stored].1.clone());
            ids.push((Source::Owned(c.fact - n_stored), c.score));
        } else {
            ids.push((Source::Stored(stored[c.fact].0.id()), c.score));
        }
        column.insert(c.fact, col);
    }
    let plan = RowPlan::new(
        enc.offset,
        enc.query.len(),
        chosen,
        |f| column.get(&f).copied().unwrap_or(0),
        set.len(),
    );
    Selection {
        hits,
        set,
        chosen: ids,
        plan,
    }
}
