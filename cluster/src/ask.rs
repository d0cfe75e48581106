//! `Client::ask`: answer a prompt with the cluster's experts through a local backbone.
//!
//! The local [`Engine`] computes the request query; the cluster returns the top-K
//! candidates (fan-out search, merged); their weights are fetched from the nodes and
//! handed to the engine's fused operator as owned candidates, in the cluster's order;
//! selection (τ, top-k) and generation run locally, exactly as `Engine::ask` does over a
//! local store. The engine's own store is not searched: it only fixes the expert shape
//! (create it empty with [`Client::local_engine`]).

use std::path::Path;
use std::sync::Arc;

use mome::engine::{AskOptions, CandidateSet, Engine, EngineParams};
use mome::model::Backbone;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::replica::Hit;

/// Results of a search widened when none of the first K passes τ (as the engine's
/// own retrieval does: a greedy HNSW search can miss a small, dense cluster).
const RETRY_CANDIDATES: usize = 1024;

/// A reply from the cluster's experts.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterAnswer {
    /// The reply text (control tokens removed).
    pub text: String,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Experts applied: cluster id and weight.
    pub selected: Vec<(u64, f32)>,
    /// Stage-1 candidates from the cluster, best first.
    pub candidates: Vec<Hit>,
}

/// Runs CPU-bound backbone work: on a multi-threaded runtime other tasks move off this
/// worker meanwhile; on a current-thread runtime it simply runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn model_err(source: mome::Error) -> Error {
    Error::Model { source }
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

    /// Answers `prompt` greedily with the experts the cluster holds (see the module
    /// docs); `use_experts: false` runs the bare backbone.
    pub async fn ask(
        &self,
        engine: &Engine,
        prompt: &str,
        opts: &AskOptions,
    ) -> Result<ClusterAnswer> {
        self.check_engine(engine)?;
        let tokens = engine.prompt_tokens(prompt).map_err(model_err)?;
        let (set, ids, hits, query) = if opts.use_experts {
            let query = blocking(|| engine.request_query(&tokens)).map_err(model_err)?;
            let p = engine.params();
            let k = p.k_candidates;
            let mut hits = self.search(&query, k).await?.hits;
            if hits.len() == k && hits.iter().all(|h| h.score <= p.selection.tau) {
                hits = self.search(&query, RETRY_CANDIDATES.max(k)).await?.hits;
                hits.truncate(k);
            }
            let experts = self
                .fetch(&hits.iter().map(|h| h.id).collect::<Vec<_>>())
                .await?;
            // In the cluster's order; an expert deleted between search and fetch drops out.
            let mut set = CandidateSet::default();
            let mut ids = Vec::with_capacity(hits.len());
            let mut kept = Vec::with_capacity(hits.len());
            for h in hits {
                if let Some(e) = experts.iter().find(|e| e.id == h.id) {
                    set.push_owned(e.key.clone(), Arc::new(e.layers.clone()));
                    ids.push(h.id);
                    kept.push(h);
                }
            }
            (set, ids, kept, query)
        } else {
            (CandidateSet::default(), Vec::new(), Vec::new(), Vec::new())
        };
        let (out, picked) = if opts.use_experts {
            blocking(|| engine.generate_with(&tokens, &query, set, opts.max_tokens))
                .map_err(model_err)?
        } else {
            let a = blocking(|| engine.ask(prompt, opts)).map_err(model_err)?;
            (a.tokens, Vec::new())
        };
        let text = engine
            .backbone()
            .tokenizer
            .decode(&out, true)
            .map_err(|e| model_err(e.into()))?;
        Ok(ClusterAnswer {
            text,
            tokens: out,
            selected: picked
                .iter()
                .filter_map(|&(j, w)| ids.get(j).map(|&id| (id, w)))
                .collect(),
            candidates: hits,
        })
    }
}
