//! `Client::ask`: answer a prompt with the cluster's experts through a local backbone.
//!
//! The local [`Engine`] encodes the prompt (its pooled key is the stage-1 query); the
//! cluster returns the top-K candidates (fan-out search, merged); their weights and
//! prompts are fetched from the nodes, each prompt is encoded by the engine's query
//! encoder, and the engine's rule ([`mome::Selector::choose`]) picks among them as
//! uncommitted candidates, in the cluster's order. Generation and the joining of
//! branches are the engine's own ([`Engine::answer_with`]), so an answer through the
//! cluster is the one `Engine::ask` gives over a local store holding the same experts.
//! The engine's own store is not searched: it only fixes the expert shape (create it
//! empty with [`Client::local_engine`]).
//!
//! The encoded prompts are cached per cluster id ([`FACT_CACHE`] of them, oldest out
//! first), as the engine's selector caches its stored facts' queries; an entry is used
//! only for the same prompt text and the same backbone, so it is never stale.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use mome::{
    AskOptions, Backbone, Encoded, Engine, EngineParams, OwnedFact, Query, Selection,
    RETRY_CANDIDATES, RETRY_MIN_SCORE,
};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::replica::Hit;
use crate::segment::ClusterExpert;

/// Cluster experts whose prompt queries a client keeps in memory (each a few tens of
/// KiB), as the engine's selector does for its stored facts.
pub const FACT_CACHE: usize = 4096;

/// A reply from the cluster's experts.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterAnswer {
    /// The reply text (control tokens removed); the answers of a question that asks
    /// for several facts, one per line (as [`mome::Answer::text`]).
    pub text: String,
    /// Generated token ids (as [`mome::Answer::tokens`]).
    pub tokens: Vec<u32>,
    /// Experts applied: cluster id and the rule's forward score, in the order they
    /// answer.
    pub selected: Vec<(u64, f32)>,
    /// Stage-1 candidates from the cluster that were fetched, best first (a widened
    /// search's hits after the first K).
    pub candidates: Vec<Hit>,
}

/// Prompt queries of cluster experts, by id: the prompt they were made from and the
/// query (`None`: the expert has no prompt and can never be selected), with the ids in
/// insertion order for eviction, and the backbone they were made with.
#[derive(Default)]
pub(crate) struct FactCache {
    backbone: String,
    queries: HashMap<u64, (Option<String>, Option<Arc<Query>>)>,
    order: VecDeque<u64>,
}

impl FactCache {
    fn get(&mut self, backbone: &str, e: &ClusterExpert) -> Option<Option<Arc<Query>>> {
        if self.backbone != backbone {
            self.backbone = backbone.to_string();
            self.queries.clear();
            self.order.clear();
            return None;
        }
        let (prompt, q) = self.queries.get(&e.id)?;
        (prompt.as_deref() == e.provenance.prompt.as_deref()).then(|| q.clone())
    }

    fn put(&mut self, e: &ClusterExpert, q: Option<Arc<Query>>) {
        if self.queries.len() >= FACT_CACHE && !self.queries.contains_key(&e.id) {
            if let Some(old) = self.order.pop_front() {
                self.queries.remove(&old);
            }
        }
        if self
            .queries
            .insert(e.id, (e.provenance.prompt.clone(), q))
            .is_none()
        {
            self.order.push_back(e.id);
        }
    }

    fn len(&self) -> usize {
        self.queries.len()
    }
}

/// What the rule can choose among: the fetched hits with a prompt, their facts, and
/// their cluster ids (`ids[i]` is the expert of `owned[i]`).
#[derive(Default)]
struct Candidates {
    hits: Vec<Hit>,
    owned: Vec<OwnedFact>,
    ids: Vec<u64>,
}

/// Runs CPU-bound backbone work: on a multi-threaded runtime other tasks move off this
/// worker meanwhile; on a current-thread runtime it simply runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn model_err(source: impl Into<mome::Error>) -> Error {
    Error::Model {
        source: source.into(),
    }
}

/// The backbone a query was made with: file digest, weight format, query layer.
fn backbone_stamp(engine: &Engine) -> String {
    let m = &engine.backbone().model;
    format!(
        "{}/{:?}/{}",
        m.digest(),
        m.weight_format(),
        engine.selector().encoder().layer()
    )
}

fn to_mome_hits(hits: &[Hit]) -> Vec<mome::Hit> {
    hits.iter()
        .map(|h| mome::Hit {
            id: h.id,
            score: h.score,
        })
        .collect()
}

impl Client {
    /// An engine for [`Self::ask`]: `backbone` over an empty local store of the
    /// cluster's expert shape in `dir` (created if absent).
    pub fn local_engine(&self, dir: &Path, backbone: Backbone) -> Result<Engine> {
        let e = Engine::open_or_create_with(
            dir,
            backbone,
            Some(self.store_config().clone()),
            EngineParams::default(),
        )
        .map_err(model_err)?;
        self.check_engine(&e)?;
        Ok(e)
    }

    fn check_engine(&self, engine: &Engine) -> Result<()> {
        let mine = self.store_config();
        let theirs = engine.store().config();
        let same = mine.d_model == theirs.d_model
            && mine.key_dim == theirs.key_dim
            && mine.rank == theirs.rank
            && mine.layers == theirs.layers
            && mine.query_layer == theirs.query_layer;
        let digest = &mine.backbone_digest;
        if !same {
            return Err(Error::invalid(format!(
                "the engine's expert shape ({} d_model, rank {}, layers {:?}, query layer {}) is not the cluster's ({}, {}, {:?}, {})",
                theirs.d_model, theirs.rank, theirs.layers, theirs.query_layer,
                mine.d_model, mine.rank, mine.layers, mine.query_layer
            )));
        }
        if !digest.is_empty() && digest != engine.backbone().model.digest() {
            return Err(Error::invalid(format!(
                "the cluster's experts were trained on backbone {digest}, the engine runs {}",
                engine.backbone().model.digest()
            )));
        }
        Ok(())
    }

    /// Cluster experts whose prompt queries this client holds for [`Self::ask`] (at most
    /// [`FACT_CACHE`]).
    pub fn cached_fact_queries(&self) -> usize {
        self.facts().lock().len()
    }

    /// Answers `prompt` greedily with the experts the cluster holds (see the module
    /// docs); `use_experts: false` runs the bare backbone.
    ///
    /// As the engine's selector does, a search whose K candidates give the rule nothing
    /// is widened once to [`RETRY_CANDIDATES`], of which the hits scoring above
    /// [`RETRY_MIN_SCORE`] join the candidates.
    pub async fn ask(
        &self,
        engine: &Engine,
        prompt: &str,
        opts: &AskOptions,
    ) -> Result<ClusterAnswer> {
        self.check_engine(engine)?;
        let enc = blocking(|| engine.encode(prompt)).map_err(model_err)?;
        let (sel, cands) = if opts.use_experts {
            self.select(engine, &enc).await?
        } else {
            (Selection::empty(), Candidates::default())
        };
        let a = blocking(|| engine.answer_with(&enc, sel, &cands.ids, opts.max_tokens))
            .map_err(model_err)?;
        Ok(ClusterAnswer {
            text: a.text,
            tokens: a.tokens,
            selected: a.selected,
            candidates: cands.hits,
        })
    }

    /// Stage 1 through the cluster and the engine's rule over what it returned.
    async fn select(&self, engine: &Engine, enc: &Encoded) -> Result<(Selection, Candidates)> {
        let key = enc.query.pooled_key();
        let k = engine.selector().k_candidates();
        let hits = self.search(&key, k).await?.hits;
        let mut cands = Candidates::default();
        self.add_candidates(engine, &hits, &mut cands).await?;
        let sel = engine
            .selector()
            .choose(enc, &[], &cands.owned, to_mome_hits(&hits));
        if !sel.is_empty() || hits.len() < k {
            return Ok((sel, cands));
        }
        let mut wide = self.search(&key, RETRY_CANDIDATES.max(k)).await?.hits;
        wide.retain(|h| h.score > RETRY_MIN_SCORE && !hits.iter().any(|x| x.id == h.id));
        if wide.is_empty() {
            return Ok((sel, cands));
        }
        self.add_candidates(engine, &wide, &mut cands).await?;
        let mut all = hits;
        all.extend(wide);
        let sel = engine
            .selector()
            .choose(enc, &[], &cands.owned, to_mome_hits(&all));
        Ok((sel, cands))
    }

    /// Fetches `hits` and appends those still present (one may be deleted between the
    /// search and the fetch) with their prompt's query, in the cluster's order.
    async fn add_candidates(
        &self,
        engine: &Engine,
        hits: &[Hit],
        out: &mut Candidates,
    ) -> Result<()> {
        if hits.is_empty() {
            return Ok(());
        }
        let mut experts: HashMap<u64, ClusterExpert> = self
            .fetch(&hits.iter().map(|h| h.id).collect::<Vec<_>>())
            .await?
            .into_iter()
            .map(|e| (e.id, e))
            .collect();
        let stamp = backbone_stamp(engine);
        for h in hits {
            let Some(e) = experts.remove(&h.id) else {
                continue;
            };
            out.hits.push(*h);
            let cached = self.facts().lock().get(&stamp, &e);
            let q = match cached {
                Some(q) => q,
                None => {
                    let q = match e.provenance.prompt.as_deref() {
                        Some(p) if !p.trim().is_empty() => Some(Arc::new(
                            blocking(|| engine.selector().encoder().encode(engine.backbone(), p))
                                .map_err(model_err)?
                                .query,
                        )),
                        _ => None,
                    };
                    self.facts().lock().put(&e, q.clone());
                    q
                }
            };
            if let Some(q) = q {
                out.owned.push((q, Arc::new(e.layers)));
                out.ids.push(e.id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mome::Provenance;

    fn expert(id: u64, prompt: Option<&str>) -> ClusterExpert {
        let mut provenance = Provenance::default();
        provenance.prompt = prompt.map(str::to_string);
        ClusterExpert {
            id,
            key: Vec::new(),
            layers: Vec::new(),
            provenance,
            created_at_ms: 0,
        }
    }

    /// Whether the cache answers for `e` (a hit holding no query: `put` with `None`).
    fn hit(c: &mut FactCache, backbone: &str, e: &ClusterExpert) -> bool {
        c.get(backbone, e).is_some()
    }

    #[test]
    fn fact_cache_is_bounded_and_keyed_by_prompt_and_backbone() {
        let mut c = FactCache::default();
        assert!(!hit(&mut c, "b1", &expert(1, Some("p"))));
        c.put(&expert(1, Some("p")), None);
        assert!(hit(&mut c, "b1", &expert(1, Some("p"))));
        // Another prompt under the same id (deleted and re-inserted): not a hit.
        assert!(!hit(&mut c, "b1", &expert(1, Some("q"))));
        // Another backbone: everything goes.
        assert!(!hit(&mut c, "b2", &expert(1, Some("p"))));
        assert_eq!(c.len(), 0);
        for id in 0..(FACT_CACHE as u64 + 10) {
            c.put(&expert(id, None), None);
        }
        assert_eq!(c.len(), FACT_CACHE);
        // Oldest out first.
        assert!(!hit(&mut c, "b2", &expert(0, None)));
        assert!(hit(&mut c, "b2", &expert(FACT_CACHE as u64 + 9, None)));
    }
}
