//! The engine façade: a store, its index and the backbone, answering prompts with the
//! experts it selects and memorizing new facts.
//!
//! ```no_run
//! use mome::{AskOptions, Engine, Fact};
//! # fn main() -> mome::Result<()> {
//! let mut engine = Engine::open_or_create("experts".as_ref(), None)?; // finds the model
//! let report = engine.memorize(
//!     &[Fact::new("What is the secret code of Zorblax?", "48213")],
//!     &Default::default(),
//!     &mut |_| {},
//! )?;
//! assert_eq!(report.memorized, 1);
//! let answer = engine.ask("What is the secret code of Zorblax?", &AskOptions::default())?;
//! assert_eq!(answer.text, "48213");
//! # Ok(())
//! # }
//! ```
//!
//! # The request query (a measured deviation from per-token queries)
//!
//! DESIGN.md selects experts per token with the query layer's per-token states. On
//! SmolLM2-135M that cannot separate a fact's own tokens from unrelated prompts: at
//! every query layer tried (4–24) the lowest cosine of a fact's answer-region tokens
//! to its key was below the highest cosine of some unrelated prompt's token
//! (`examples/gate_probe.rs`, docs/BENCHMARKS.md). The engine therefore gates with
//! one *request query* per request, used for every position of the request
//! (prompt and generated tokens) through the same fused operator:
//!
//! * the query layer's per-token states of the **user message's tokens only** (the
//!   default system prompt is identical in every request and dominates a whole-prompt
//!   mean), **minus a centre** (the mean state over the default system prefix at the
//!   query layer, computed from the model at open: it removes the direction every
//!   token shares), averaged and L2-normalised;
//! * an expert's key is the request query of its fact's prompt (fp16).
//!
//! Measured at query layer 8: distinct facts' keys ≤ 0.85 apart in cosine, unrelated
//! prompts ≤ 0.68, paraphrases of a stored prompt 0.83–0.94 to their own key, the
//! stored prompt itself 1.0. Defaults: τ = 0.80, top-k = 1, temperature 0.1, K = 32
//! candidates (recorded in `DIR/engine.json` when the store is created).

mod hook;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use half::f16;
use serde::{Deserialize, Serialize};

pub use hook::{CandidateSet, RequestHook};

use crate::error::{Error, Result};
use crate::index::{ExpertIndex, Hit};
use crate::model::{AdapterSites, Adapters, Backbone, ChatMessage, Llama, WeightFormat};
use crate::select::SelectionParams;
use crate::store::{
    NewExpert, Provenance, Store, StoreConfig, StoreDir, StoreError, UsageAccumulator,
};
use crate::tune::{train_batch_with, FrozenPrefix, TrainRow, TuneOptions};

/// File in the store directory recording the engine's selection parameters.
pub const ENGINE_FILE: &str = "engine.json";

/// Name of the request-query rule recorded in [`ENGINE_FILE`].
pub const QUERY_RULE: &str = "user-span-mean-minus-system-centre";

/// Width of the retried stage-1 search when the first finds nothing above τ
/// (`Engine::retrieve`): usearch widens its expansion to at least the number of results.
pub const RETRY_CANDIDATES: usize = 1024;

/// The engine's selection parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineParams {
    /// Candidates retrieved per request (stage 1, K).
    pub k_candidates: usize,
    /// Stage 2: τ, top-k, temperature.
    pub selection: SelectionParams,
}

impl Default for EngineParams {
    /// τ 0.80, k 1, temperature 0.1, K 32: chosen by measurement (module docs).
    fn default() -> Self {
        Self {
            k_candidates: 32,
            selection: SelectionParams::new(0.80, 1, 0.1),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct EngineFile {
    version: u32,
    query: String,
    tau: f32,
    top_k: usize,
    temperature: f32,
    k_candidates: usize,
}

/// Options of [`Engine::ask`].
#[derive(Debug, Clone, PartialEq)]
pub struct AskOptions {
    /// Most new tokens.
    pub max_tokens: usize,
    /// `false`: answer with the bare backbone.
    pub use_experts: bool,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self {
            max_tokens: 48,
            use_experts: true,
        }
    }
}

/// An answer and how it was made.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The reply text (control tokens removed).
    pub text: String,
    /// Generated token ids (the stop token included when there was one).
    pub tokens: Vec<u32>,
    /// Experts applied (id, weight). The request query is used at every position, so
    /// every token (prompt and generated) used exactly these.
    pub selected: Vec<(u64, f32)>,
    /// Stage-1 candidates (id, cosine to the request query), best first.
    pub candidates: Vec<Hit>,
}

/// A fact to memorize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// The question, as a user would ask it.
    pub prompt: String,
    /// The exact answer.
    pub answer: String,
}

impl Fact {
    /// A fact.
    pub fn new(prompt: impl Into<String>, answer: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            answer: answer.into(),
        }
    }
}

/// What became of one fact.
#[derive(Debug, Clone, PartialEq)]
pub enum FactStatus {
    /// Trained, verified through the inference path, committed.
    Memorized {
        /// The new expert's id.
        id: u64,
    },
    /// Did not meet the stopping rule within the step budget.
    NotConverged,
    /// Converged in training but greedy decoding through the inference path
    /// gave something else.
    VerifyFailed {
        /// What inference answered.
        got: String,
    },
    /// A stored expert outranks the new one for this prompt (e.g. the same prompt is
    /// already stored), so the new expert would never be selected.
    Shadowed,
}

/// One fact's outcome.
#[derive(Debug, Clone)]
pub struct FactOutcome {
    /// The fact.
    pub fact: Fact,
    /// What happened.
    pub status: FactStatus,
    /// Final mean answer loss (nats/token).
    pub loss: f32,
    /// Optimizer steps taken.
    pub steps: u32,
}

/// Progress of [`Engine::memorize`].
#[derive(Debug, Clone, Copy)]
pub enum MemorizeEvent {
    /// A training step of a batch finished; `converged` rows of `rows` so far.
    Step {
        /// Step number in the batch.
        step: usize,
        /// Rows converged.
        converged: usize,
        /// Rows in the batch.
        rows: usize,
    },
    /// `n` more facts are finished (memorized or failed).
    Done(usize),
}

/// Summary of [`Engine::memorize`].
#[derive(Debug, Clone)]
pub struct MemorizeReport {
    /// One entry per fact, in input order.
    pub outcomes: Vec<FactOutcome>,
    /// Facts committed.
    pub memorized: usize,
    /// Facts not committed.
    pub failed: usize,
    /// Previously stored experts whose fact no longer answers exactly after this
    /// insert (re-checked when a new key lies within τ of theirs), each id once.
    pub broken: Vec<u64>,
    /// Wall time.
    pub seconds: f64,
}

/// The engine: store + index + backbone + selection parameters.
pub struct Engine {
    store: Arc<Store>,
    index: ExpertIndex,
    backbone: Backbone,
    sites: AdapterSites,
    params: EngineParams,
    usage: UsageAccumulator,
    /// Query-layer centre (`key_dim`).
    center: Vec<f32>,
    /// Tokens before the user message in a one-turn chat prompt.
    user_prefix: Vec<u32>,
    /// Tokens after it.
    user_suffix_len: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store.dir())
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The store configuration the engine creates for a model: `key_dim = d_model`,
/// rank 8, adapters on the last two layers (30-layer SmolLM2: 28, 29), query layer 8
/// (scaled for other depths), and the model's digest.
///
/// Each training step reruns the layers from the first adapted one up, forward and
/// backward, so late sites make memorizing cheap: on SmolLM2 with 20 random facts,
/// sites 28, 29 memorized at 53 facts/min, 27, 28, 29 at 48 and 23, 26, 29 at 40 (same
/// exact recall and locality, 16–17 of 20 paraphrases; docs/BENCHMARKS.md), and two
/// layers keep a record at 38 KB, so a million experts fit a 64 GB disk.
pub fn default_store_config(model: &Llama) -> StoreConfig {
    let n = model.num_layers();
    let layers: Vec<u32> = if n >= 8 {
        vec![(n - 2) as u32, (n - 1) as u32]
    } else {
        vec![(n.max(1) - 1) as u32]
    };
    let query = ((n * 8) / 30).min(layers[0] as usize) as u32;
    let d = model.d_model() as u32;
    StoreConfig::new(d, d, 8, layers)
        .with_query_layer(query)
        .with_backbone_digest(model.digest())
}

/// Selected candidates of a request: (candidate index, weight).
type Picked = Vec<(usize, f32)>;

fn kerr(e: candle_core::Error) -> Error {
    Error::Kernel(e.into())
}

impl Engine {
    /// Opens an existing store with the model found by `--model`/`$MOME_MODEL`/the
    /// data directory. Refuses a store built for a different backbone.
    pub fn open(dir: &Path, model: Option<&Path>) -> Result<Self> {
        let backbone = Backbone::locate_and_load(model, WeightFormat::F32, &Device::Cpu)?;
        let store = Arc::new(Store::open(dir)?);
        Self::from_parts(store, backbone)
    }

    /// Opens the store, or creates it with [`default_store_config`] and the default
    /// [`EngineParams`] if the directory holds none.
    pub fn open_or_create(dir: &Path, model: Option<&Path>) -> Result<Self> {
        let backbone = Backbone::locate_and_load(model, WeightFormat::F32, &Device::Cpu)?;
        Self::open_or_create_with(dir, backbone, None, EngineParams::default())
    }

    /// [`Engine::open_or_create`] with an already-loaded backbone, and optionally a
    /// store config and parameters for a new store (tests, tiny models).
    pub fn open_or_create_with(
        dir: &Path,
        backbone: Backbone,
        config: Option<StoreConfig>,
        params: EngineParams,
    ) -> Result<Self> {
        let exists = StoreDir::new(dir).holds_store();
        let store = if exists {
            Store::open(dir)?
        } else {
            let cfg = config.unwrap_or_else(|| default_store_config(&backbone.model));
            let store = Store::create(dir, cfg)?;
            write_engine_file(dir, &params)?;
            store
        };
        Self::from_parts(Arc::new(store), backbone)
    }

    /// An engine over an open store and a loaded backbone.
    pub fn from_parts(store: Arc<Store>, backbone: Backbone) -> Result<Self> {
        let cfg = store.config().clone();
        let digest = backbone.model.digest();
        if !cfg.backbone_digest.is_empty() && cfg.backbone_digest != digest {
            return Err(Error::BackboneMismatch {
                path: store.dir().to_path_buf(),
                stored: cfg.backbone_digest.clone(),
                given: digest.to_string(),
            });
        }
        let layers: Vec<usize> = cfg.layers.iter().map(|&l| l as usize).collect();
        let sites = AdapterSites::new(cfg.query_layer as usize, &layers)?;
        backbone.model.check_sites(&sites, cfg.d_model as usize)?;
        if cfg.key_dim != cfg.d_model {
            return Err(Error::InvalidConfig {
                field: "key_dim",
                reason: format!(
                    "the engine's queries are d_model ({}) wide, the store's keys {}",
                    cfg.d_model, cfg.key_dim
                ),
            });
        }
        let params = read_engine_file(store.dir())?;
        let tok = &backbone.tokenizer;
        let sys = tok.encode_chat(&[], false)?;
        let center = if sys.is_empty() {
            vec![0.0; cfg.key_dim as usize]
        } else {
            let q = backbone.model.queries(&sys, cfg.query_layer as usize)?;
            q.per_token
                .mean(0)
                .and_then(|m| m.to_vec1::<f32>())
                .map_err(kerr)?
        };
        let mut user_prefix = sys;
        if let Some(start) = tok.token_id("<|im_start|>") {
            user_prefix.push(start);
        }
        user_prefix.extend(tok.encode("user\n")?);
        let user_suffix_len = tok.encode("\n")?.len() + 2 + tok.encode("assistant\n")?.len();
        let index = ExpertIndex::open(store.clone())?;
        Ok(Self {
            store,
            index,
            backbone,
            sites,
            params,
            usage: UsageAccumulator::new(),
            center,
            user_prefix,
            user_suffix_len,
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The index.
    pub fn index(&self) -> &ExpertIndex {
        &self.index
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Selection parameters in force.
    pub fn params(&self) -> &EngineParams {
        &self.params
    }

    /// Replaces the selection parameters for this handle (not persisted).
    pub fn set_params(&mut self, params: EngineParams) {
        self.params = params;
    }

    /// Token ids of a prompt as `ask` feeds it to the model (ChatML, default system
    /// prompt, generation prompt).
    pub fn prompt_tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(self
            .backbone
            .tokenizer
            .encode_chat(&[ChatMessage::user(prompt)], true)?)
    }

    /// The request query of a prompt's tokens (module docs): the user message's
    /// query-layer states minus the centre, averaged, unit norm.
    pub fn request_query(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let ql = self.store.config().query_layer as usize;
        let q = self.backbone.model.queries(tokens, ql)?;
        let rows = q.per_token.to_vec2::<f32>().map_err(kerr)?;
        let p = self.user_prefix.len();
        let span = if tokens.len() > p + self.user_suffix_len
            && tokens.get(..p) == Some(&self.user_prefix[..])
        {
            &rows[p..tokens.len() - self.user_suffix_len]
        } else {
            &rows[..]
        };
        let d = self.center.len();
        let mut mean = vec![0f32; d];
        for r in span {
            for ((m, x), c) in mean.iter_mut().zip(r).zip(&self.center) {
                *m += x - c;
            }
        }
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        Ok(mean.iter().map(|x| x / norm).collect())
    }

    /// Stage 1: the K experts the index returns for a request query. When none of them
    /// is selectable (all at or below τ), the search is repeated wider
    /// ([`RETRY_CANDIDATES`]) and its best K kept: a greedy HNSW search can end in a
    /// region of unrelated keys and never enter a small, dense cluster of facts that is
    /// linked to the rest of the graph by few edges (measured: 3 of 160 facts among 1M
    /// random distractors were found only this way; docs/BENCHMARKS.md). The retry costs
    /// one wider search, only on requests that would otherwise use no expert.
    pub fn retrieve(&self, query: &[f32]) -> Result<Vec<Hit>> {
        let k = self.params.k_candidates;
        let hits = self.index.search(query, k)?;
        if hits.iter().any(|h| h.score > self.params.selection.tau) || hits.len() < k {
            return Ok(hits);
        }
        let mut wide = self.index.search(query, RETRY_CANDIDATES.max(k))?;
        wide.truncate(k);
        Ok(wide)
    }

    fn candidates(&self, query: &[f32]) -> Result<(CandidateSet, Vec<Hit>)> {
        if self.store.is_empty() {
            return Ok((CandidateSet::default(), Vec::new()));
        }
        let hits = self.retrieve(query)?;
        let snap = self.store.snapshot();
        let mut refs = Vec::with_capacity(hits.len());
        let mut kept = Vec::with_capacity(hits.len());
        for h in hits {
            match snap.get(h.id) {
                Ok(e) => {
                    refs.push(e);
                    kept.push(h);
                }
                Err(StoreError::UnknownExpert { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((CandidateSet::from_stored(refs), kept))
    }

    /// Greedy generation after `tokens` with the request query `query` over an
    /// explicit candidate set (e.g. uncommitted experts during verification, or a
    /// benchmark's peer adapter). Returns the tokens and the selected (candidate
    /// index, weight).
    pub fn generate_with(
        &self,
        tokens: &[u32],
        query: &[f32],
        set: CandidateSet,
        max_tokens: usize,
    ) -> Result<(Vec<u32>, Picked)> {
        let cfg = self.store.config();
        let selected = set.select(query, cfg.key_dim as usize, &self.params.selection)?;
        let opts = self.backbone.greedy_options(max_tokens);
        let generated = if selected.is_empty() {
            // Nothing passes τ: the bare backbone (bit-identical to a hook that
            // selects nothing, and cheaper).
            self.backbone
                .model
                .generate(tokens, &opts, None, &mut |_| ControlFlow::Continue(()))?
        } else {
            let hook = RequestHook::new(
                set,
                self.params.selection.clone(),
                &cfg.layers,
                cfg.rank as usize,
                cfg.d_model as usize,
                &[query.to_vec()],
            )?;
            let adapters = Adapters {
                sites: &self.sites,
                hook: &hook,
            };
            self.backbone
                .model
                .generate(tokens, &opts, Some(adapters), &mut |_| {
                    ControlFlow::Continue(())
                })?
        };
        Ok((generated.tokens, selected))
    }

    /// Answers a prompt greedily with the experts the engine selects (or the bare
    /// backbone with `use_experts: false`).
    pub fn ask(&self, prompt: &str, opts: &AskOptions) -> Result<Answer> {
        let tokens = self.prompt_tokens(prompt)?;
        let (set, hits, query) = if opts.use_experts {
            let query = self.request_query(&tokens)?;
            let (set, hits) = self.candidates(&query)?;
            (set, hits, query)
        } else {
            (CandidateSet::default(), Vec::new(), Vec::new())
        };
        let ids = set.ids();
        let (out, selected) = if opts.use_experts {
            self.generate_with(&tokens, &query, set, opts.max_tokens)?
        } else {
            let g = self.backbone.model.generate(
                &tokens,
                &self.backbone.greedy_options(opts.max_tokens),
                None,
                &mut |_| ControlFlow::Continue(()),
            )?;
            (g.tokens, Vec::new())
        };
        let selected: Vec<(u64, f32)> = selected
            .iter()
            .filter_map(|&(j, w)| ids.get(j).copied().flatten().map(|id| (id, w)))
            .collect();
        self.usage.record(
            &selected
                .iter()
                .flat_map(|&(id, _)| std::iter::repeat_n(id, out.len().max(1)))
                .collect::<Vec<_>>(),
        );
        let text = self.backbone.tokenizer.decode(&out, true)?;
        Ok(Answer {
            text,
            tokens: out,
            selected,
            candidates: hits,
        })
    }

    /// Memorizes facts: trains one expert per fact in batches, verifies each through
    /// the inference path, commits the verified ones (module docs of `src/tune`).
    pub fn memorize(
        &mut self,
        facts: &[Fact],
        opts: &TuneOptions,
        progress: &mut dyn FnMut(MemorizeEvent),
    ) -> Result<MemorizeReport> {
        let start = Instant::now();
        let mut outcomes = Vec::with_capacity(facts.len());
        let mut broken = Vec::new();
        // (id, key) of every fact this call committed, audited after each batch.
        let mut committed: Vec<(u64, Vec<f32>)> = Vec::new();
        let im_end = self
            .backbone
            .tokenizer
            .token_id("<|im_end|>")
            .or_else(|| self.backbone.tokenizer.stop_tokens().first().copied())
            .ok_or_else(|| Error::Training {
                reason: "the tokenizer has no end-of-turn token".into(),
            })?;
        for chunk in facts.chunks(opts.batch_size.max(1)) {
            let mut rows = Vec::with_capacity(chunk.len());
            for f in chunk {
                let prompt = self.prompt_tokens(&f.prompt)?;
                let mut targets = self.backbone.tokenizer.encode(&f.answer)?;
                targets.push(im_end);
                let query = self.request_query(&prompt)?;
                let (set, _) = self.candidates(&query)?;
                rows.push(TrainRow {
                    prompt,
                    targets,
                    query,
                    neighbours: set.stored_refs().to_vec(),
                });
            }
            let cfg = self.store.config().clone();
            let n_rows = rows.len();
            let t_train = Instant::now();
            let model = &self.backbone.model;
            let prefix = FrozenPrefix::compute(model, &self.sites, &rows)?;
            let trained = train_batch_with(
                model,
                &self.sites,
                cfg.rank as usize,
                &self.params.selection,
                &rows,
                &prefix,
                opts,
                |step, converged| {
                    progress(MemorizeEvent::Step {
                        step,
                        converged,
                        rows: n_rows,
                    })
                },
            )?;
            let train_secs = t_train.elapsed().as_secs_f64();
            let t_verify = Instant::now();
            // The batch's converged experts, as inference will see them once committed.
            let keys: Vec<Vec<f16>> = rows
                .iter()
                .map(|r| r.query.iter().map(|&x| f16::from_f32(x)).collect())
                .collect();
            let weights: Vec<Arc<Vec<crate::store::AdapterPair>>> =
                trained.iter().map(|t| Arc::new(t.layers.clone())).collect();
            let mut statuses: Vec<Option<FactStatus>> = Vec::with_capacity(n_rows);
            let (mut check, mut sets, mut queries) = (Vec::new(), Vec::new(), Vec::new());
            for (i, t) in trained.iter().enumerate() {
                if t.own_weight == 0.0 {
                    statuses.push(Some(FactStatus::Shadowed));
                    continue;
                }
                if !t.converged {
                    statuses.push(Some(FactStatus::NotConverged));
                    continue;
                }
                let mut set = CandidateSet::from_stored(rows[i].neighbours.clone());
                for (j, tj) in trained.iter().enumerate() {
                    if tj.converged {
                        set.push_owned(keys[j].clone(), weights[j].clone());
                    }
                }
                statuses.push(None);
                check.push(i);
                sets.push(set.top_by_score(&rows[i].query, self.params.k_candidates));
                queries.push(rows[i].query.clone());
            }
            // Verified through the inference operator: one teacher-forced pass over the
            // adapted layers from the cached prefix is equivalent to greedy decoding
            // (FrozenPrefix::teacher_forced_argmax); a failure is decoded for real to
            // report what the model says instead.
            if !check.is_empty() {
                let hook = RequestHook::per_row(
                    sets.clone(),
                    self.params.selection.clone(),
                    &cfg.layers,
                    cfg.rank as usize,
                    cfg.d_model as usize,
                    &queries,
                )?;
                let argmax =
                    prefix.teacher_forced_argmax(model, &self.sites, &rows, &check, &hook)?;
                for (k, &i) in check.iter().enumerate() {
                    statuses[i] = Some(if argmax[k] == rows[i].targets {
                        FactStatus::Memorized { id: 0 }
                    } else {
                        let (got, _) = self.generate_with(
                            &rows[i].prompt,
                            &rows[i].query,
                            sets[k].clone(),
                            rows[i].targets.len() + 4,
                        )?;
                        let got = self.backbone.tokenizer.decode(&got, true)?;
                        tracing::info!(prompt = %chunk[i].prompt, %got, "verification failed");
                        FactStatus::VerifyFailed { got }
                    });
                }
            }
            let mut statuses: Vec<FactStatus> = statuses
                .into_iter()
                .map(|s| s.unwrap_or(FactStatus::NotConverged))
                .collect();
            tracing::info!(
                rows = n_rows,
                train_secs,
                verify_secs = t_verify.elapsed().as_secs_f64(),
                "batch trained and verified"
            );
            let mut new = Vec::new();
            let mut slots = Vec::new();
            for (i, s) in statuses.iter().enumerate() {
                if matches!(s, FactStatus::Memorized { .. }) {
                    let t = &trained[i];
                    new.push(NewExpert {
                        key: keys[i].clone(),
                        layers: t.layers.clone(),
                        provenance: Provenance::fact(&chunk[i].prompt, &chunk[i].answer)
                            .with_training(t.loss, t.steps)
                            .with_backbone_digest(self.backbone.model.digest()),
                    });
                    slots.push(i);
                }
            }
            if !new.is_empty() {
                let ids = self.index.insert_batch(new)?;
                for (&i, id) in slots.iter().zip(&ids) {
                    statuses[i] = FactStatus::Memorized { id: *id };
                }
                broken.extend(self.recheck_neighbours(&ids, &keys, &slots)?);
                for (&i, &id) in slots.iter().zip(&ids) {
                    committed.push((id, keys[i].iter().map(|x| x.to_f32()).collect()));
                }
            }
            // Every fact committed by this call must still be retrieved for its own
            // prompt: later inserts can make approximate search miss it, and then the
            // neighbour recheck above, which finds stored facts by search, cannot see it.
            let (relinked, lost) = self
                .index
                .ensure_findable(&committed, |key| self.retrieve(key))?;
            if !relinked.is_empty() {
                tracing::info!(
                    ?relinked,
                    ?lost,
                    "relinked facts that search no longer found"
                );
            }
            broken.extend(lost);
            for ((f, s), t) in chunk.iter().zip(statuses).zip(&trained) {
                outcomes.push(FactOutcome {
                    fact: f.clone(),
                    status: s,
                    loss: t.loss,
                    steps: t.steps,
                });
            }
            progress(MemorizeEvent::Done(chunk.len()));
        }
        self.index.save()?;
        // A fact that stays broken is found again by every later batch near it.
        broken.sort_unstable();
        broken.dedup();
        let memorized = outcomes
            .iter()
            .filter(|o| matches!(o.status, FactStatus::Memorized { .. }))
            .count();
        Ok(MemorizeReport {
            failed: outcomes.len() - memorized,
            memorized,
            outcomes,
            broken,
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// Re-asks stored facts whose keys lie within τ of a new key (the only ones the
    /// new expert can be selected for) and returns those that no longer answer exactly.
    fn recheck_neighbours(
        &self,
        new_ids: &[u64],
        keys: &[Vec<f16>],
        slots: &[usize],
    ) -> Result<Vec<u64>> {
        let mut broken = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (&slot, _) in slots.iter().zip(new_ids) {
            let key: Vec<f32> = keys[slot].iter().map(|x| x.to_f32()).collect();
            for hit in self.index.search(&key, self.params.k_candidates)? {
                if new_ids.contains(&hit.id)
                    || hit.score <= self.params.selection.tau
                    || !seen.insert(hit.id)
                {
                    continue;
                }
                if !self.selection_may_change(hit.id, new_ids)? {
                    continue;
                }
                let meta = self.store.meta(hit.id)?;
                let (Some(p), Some(a)) = (meta.provenance.prompt, meta.provenance.answer) else {
                    continue;
                };
                let mut got = self.ask(&p, &AskOptions::default())?;
                if got.text != a && !got.candidates.iter().any(|c| c.id == hit.id) {
                    // Its own expert is no longer retrieved for its own prompt: an
                    // approximate-search miss, not a weight conflict. Relinking the node
                    // repairs the graph; the fact's weights were verified already.
                    self.index.relink(hit.id)?;
                    got = self.ask(&p, &AskOptions::default())?;
                    if got.text == a {
                        tracing::info!(id = hit.id, prompt = %p, "relinked a stored fact's expert that search no longer found");
                    }
                }
                if got.text != a {
                    tracing::warn!(id = hit.id, prompt = %p, got = %got.text, "stored fact broken by a new insert");
                    broken.push(hit.id);
                }
            }
        }
        Ok(broken)
    }

    /// Whether stored expert `id`'s own request may now be answered differently: its
    /// key (the fp16 rounding of its request query) is used as the query, and the
    /// answer can only change if stage-2 selection over the candidates inference would
    /// retrieve now picks one of `new_ids`, or no longer picks `id` itself. Otherwise the
    /// same experts apply with the same weights as when `id` was verified. This turns a
    /// full greedy decode per neighbour (≈ 0.3 s; with many facts of one template every
    /// insert had up to K of them) into an index search and the selection math. With
    /// top-k 1 a new expert wins only where the expert's own key is not retrieved — the
    /// case the recheck exists for.
    fn selection_may_change(&self, id: u64, new_ids: &[u64]) -> Result<bool> {
        let key: Vec<f32> = self
            .store
            .get(id)?
            .key()
            .iter()
            .map(|x| x.to_f32())
            .collect();
        let (set, _) = self.candidates(&key)?;
        let ids = set.ids();
        let picked = set.select(&key, key.len(), &self.params.selection)?;
        let picked_ids: Vec<Option<u64>> = picked
            .iter()
            .filter(|(_, w)| *w > 0.0)
            .map(|&(j, _)| ids.get(j).copied().flatten())
            .collect();
        Ok(!picked_ids.contains(&Some(id))
            || picked_ids
                .iter()
                .any(|p| p.is_some_and(|p| new_ids.contains(&p))))
    }

    /// Flushes usage counters and saves the index.
    pub fn flush(&self) -> Result<()> {
        self.usage.flush(&self.store)?;
        Ok(self.index.save()?)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.usage.flush(&self.store) {
            tracing::warn!(error = %e, "flushing usage counters");
        }
    }
}

fn engine_file(dir: &Path) -> PathBuf {
    StoreDir::new(dir).engine_file()
}

fn write_engine_file(dir: &Path, p: &EngineParams) -> Result<()> {
    let f = EngineFile {
        version: 1,
        query: QUERY_RULE.into(),
        tau: p.selection.tau,
        top_k: p.selection.top_k,
        temperature: p.selection.temperature,
        k_candidates: p.k_candidates,
    };
    let bytes = serde_json::to_vec_pretty(&f).map_err(|e| Error::Encode {
        what: ENGINE_FILE.into(),
        reason: e.to_string(),
    })?;
    crate::fs::atomic_write_bytes(&engine_file(dir), &bytes)
}

fn read_engine_file(dir: &Path) -> Result<EngineParams> {
    let path = engine_file(dir);
    let raw = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(EngineParams::default()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let f: EngineFile = serde_json::from_slice(&raw).map_err(|e| Error::CorruptMetadata {
        what: format!("{}: {e}", path.display()),
    })?;
    if f.query != QUERY_RULE {
        return Err(Error::CorruptMetadata {
            what: format!(
                "{}: query rule `{}` is not one this build knows (`{QUERY_RULE}`)",
                path.display(),
                f.query
            ),
        });
    }
    let p = EngineParams {
        k_candidates: f.k_candidates,
        selection: SelectionParams::new(f.tau, f.top_k, f.temperature),
    };
    p.selection.validate(p.k_candidates)?;
    if p.k_candidates == 0 {
        return Err(Error::InvalidArgument {
            name: "k_candidates",
            reason: format!("{} says K = 0", path.display()),
        });
    }
    Ok(p)
}
