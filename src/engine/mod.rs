//! The engine façade: a store, its index and the backbone, answering prompts with the
//! experts the selection rule chooses and memorizing new facts.
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
//! // The same question about an entity that is not stored gets the bare model's answer.
//! let other = engine.ask("What is the secret code of Morvath?", &AskOptions::default())?;
//! assert!(other.selected.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! Selection is [`crate::select`]'s: the question's tokens against every candidate's
//! stored prompt (names word for word, content words up to inflection), per position
//! inside the fused operator; a question that names two stored facts is answered one
//! branch per fact, the answers joined by a line break.

mod eval;

pub use eval::{evaluate, EvalReport, EvalSet, MultiFact, Paraphrase, Probe, Tally};

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::tune::{Fact, MemorizeEvent, MemorizeReport, TuneOptions};

use crate::error::{Error, Result};
use crate::index::{ExpertIndex, Hit};
use crate::model::{AdapterSites, Backbone, Llama, Pieces, WeightFormat};
use crate::select::{
    generate_answers_streaming, Encoded, QueryEncoder, RuleParams, Selection, Selector, Source,
};
use crate::store::{Store, StoreConfig, StoreDir, UsageAccumulator};
use crate::tune::Memorizer;

/// File in the store directory recording the engine's selection parameters.
pub const ENGINE_FILE: &str = "engine.json";

/// Name of the selection rule recorded in [`ENGINE_FILE`].
pub const QUERY_RULE: &str = "token-match-names-v1";

/// The rule of stores written before [`QUERY_RULE`] (one pooled request query).
pub const LEGACY_QUERY_RULE: &str = "user-span-mean-minus-system-centre";

/// The engine's selection parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineParams {
    /// Candidates retrieved per request (stage 1, K).
    pub k_candidates: usize,
    /// Stage 2: the rule's thresholds.
    pub rule: RuleParams,
}

impl Default for EngineParams {
    /// K 32 and the rule's defaults (docs/BENCHMARKS.md §Selection).
    fn default() -> Self {
        Self {
            k_candidates: 32,
            rule: RuleParams::default(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct EngineFile {
    version: u32,
    query: String,
    #[serde(default)]
    match_threshold: Option<f32>,
    #[serde(default)]
    coverage_threshold: Option<f32>,
    k_candidates: usize,
}

/// Options of [`Engine::ask`].
#[derive(Debug, Clone, PartialEq)]
pub struct AskOptions {
    /// Most new tokens (per answered fact).
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
    /// The reply text (control tokens removed); the answers of a question that asks
    /// for several stored facts, one per line.
    pub text: String,
    /// Generated token ids (the stop token included when there was one); for several
    /// facts, each answer's tokens without its stop token, separated by a line break.
    pub tokens: Vec<u32>,
    /// Experts applied (id, forward score of the rule), in the order they answer.
    pub selected: Vec<(u64, f32)>,
    /// Stage-1 candidates (id, cosine of the pooled keys), best first.
    pub candidates: Vec<Hit>,
}

/// A receiver of streamed text pieces ([`Engine::ask_streaming`]).
type OnText<'a> = &'a mut dyn FnMut(&str) -> ControlFlow<()>;

/// The engine: store + index + backbone + selection.
pub struct Engine {
    store: Arc<Store>,
    index: ExpertIndex,
    backbone: Backbone,
    sites: AdapterSites,
    params: EngineParams,
    selector: Selector,
    usage: UsageAccumulator,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store.dir())
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The query layer for a model of `n` layers: layer 2 of 30 on SmolLM2 (scaled),
/// never after the first adapted layer. Early layers keep each token close to its
/// identity with a little context — what late interaction needs (docs/BENCHMARKS.md
/// §Selection: layers 2–4 separated near-misses best, layer 8 worst).
fn query_layer_for(n: usize, first_adapted: u32) -> u32 {
    (((n * 2) / 30).max(1) as u32).min(first_adapted)
}

/// The store configuration the engine creates for a model: `key_dim = d_model`,
/// rank 8, adapters on the last two layers (30-layer SmolLM2: 28, 29), query layer 2
/// (scaled for other depths), and the model's digest.
///
/// Each training step reruns the layers from the first adapted one up, forward and
/// backward, so late sites make memorizing cheap: on SmolLM2 with 20 random facts,
/// sites 28, 29 memorized at 53 facts/min, 27, 28, 29 at 48 and 23, 26, 29 at 40 (same
/// exact recall and locality; docs/BENCHMARKS.md), and two layers keep a record at
/// 38 KB, so a million experts fit a 64 GB disk.
pub fn default_store_config(model: &Llama) -> StoreConfig {
    let n = model.num_layers();
    let layers: Vec<u32> = if n >= 8 {
        vec![(n - 2) as u32, (n - 1) as u32]
    } else {
        vec![(n.max(1) - 1) as u32]
    };
    let query = query_layer_for(n, layers[0]);
    let d = model.d_model() as u32;
    StoreConfig::new(d, d, 8, layers)
        .with_query_layer(query)
        .with_backbone_digest(model.digest())
}

impl Engine {
    /// Opens an existing store with the model found by `--model`/`$MOME_MODEL`/the
    /// data directory. Refuses a store built for a different backbone.
    pub fn open(dir: &Path, model: Option<&Path>) -> Result<Self> {
        let backbone = Backbone::locate_and_load(model, WeightFormat::F32, &Device::Cpu)?;
        let store = Arc::new(Store::open(dir)?);
        Self::from_parts(store, backbone)
    }

    /// Opens a store for reading while another process may be writing it (serving
    /// processes, `mome ask/stats/inspect/search/verify/export` during an ingest): no
    /// lock is taken, the index is built or loaded in memory and never saved, and usage
    /// counts are not recorded. The engine sees the store as of its last
    /// [`Engine::refresh`]; writes ([`Engine::memorize`], [`Engine::forget`]) fail with
    /// [`StoreError::ReadOnly`](crate::StoreError::ReadOnly).
    pub fn open_read_only(dir: &Path, model: Option<&Path>) -> Result<Self> {
        let backbone = Backbone::locate_and_load(model, WeightFormat::F32, &Device::Cpu)?;
        let store = Arc::new(Store::open_read_only(dir)?);
        Self::from_parts(store, backbone)
    }

    /// Follows the writer (a read-only engine): catches the store and the index up with
    /// every commit made since the last refresh. Returns whether anything changed;
    /// always `false` for the writer's own engine, which is always current. Questions
    /// asked during a refresh see the view before it or after it, never a mix.
    pub fn refresh(&self) -> Result<bool> {
        if !self.store.refresh()? {
            return Ok(false);
        }
        self.index.catch_up()?;
        Ok(true)
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
        let encoder = QueryEncoder::new(&backbone, cfg.query_layer as usize)?;
        let selector = Selector::new(encoder, params.rule, params.k_candidates)?;
        let index = ExpertIndex::open(store.clone())?;
        Ok(Self {
            store,
            index,
            backbone,
            sites,
            params,
            selector,
            usage: UsageAccumulator::new(),
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

    /// Where the adapters sit.
    pub fn sites(&self) -> &AdapterSites {
        &self.sites
    }

    /// Selection parameters in force.
    pub fn params(&self) -> &EngineParams {
        &self.params
    }

    /// The selection path (stage 1 + the rule).
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// Replaces the selection parameters for this handle (not persisted).
    pub fn set_params(&mut self, params: EngineParams) -> Result<()> {
        let encoder = self.selector.encoder().clone();
        self.selector = Selector::new(encoder, params.rule, params.k_candidates)?;
        self.params = params;
        Ok(())
    }

    /// Token ids of a prompt as `ask` feeds it to the model (ChatML, default system
    /// prompt, generation prompt).
    pub fn prompt_tokens(&self, prompt: &str) -> Result<Vec<u32>> {
        self.selector.encoder().chat_tokens(&self.backbone, prompt)
    }

    /// The prompt encoded as the engine's one query (tokens, user message, states).
    pub fn encode(&self, prompt: &str) -> Result<Encoded> {
        self.selector.encoder().encode(&self.backbone, prompt)
    }

    /// Stage 1 and the rule for a prompt: the candidates and what the rule chose.
    pub fn select(&self, enc: &Encoded) -> Result<Selection> {
        self.selector.select(&self.backbone, &self.index, enc)
    }

    /// Stage 1 only: the K experts nearest a pooled key (`mome search`, audits).
    pub fn retrieve(&self, key: &[f32]) -> Result<Vec<Hit>> {
        self.selector.retrieve(&self.index, key)
    }

    /// Answers a prompt greedily with the experts the rule selects (or the bare
    /// backbone with `use_experts: false`, or when the rule selects nothing).
    pub fn ask(&self, prompt: &str, opts: &AskOptions) -> Result<Answer> {
        self.ask_inner(prompt, opts, None)
    }

    /// [`Engine::ask`], passing the reply's text to `on_text` piece by piece as it is
    /// generated (a piece is never a partial UTF-8 character; the answers of several
    /// facts are separated by a `"\n"` piece). The pieces join to [`Answer::text`].
    /// `ControlFlow::Break` stops generation; the answer then holds what was made
    /// (its text may end in a U+FFFD that was held back as a possible partial character).
    pub fn ask_streaming(
        &self,
        prompt: &str,
        opts: &AskOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Answer> {
        self.ask_inner(prompt, opts, Some(on_text))
    }

    fn ask_inner(
        &self,
        prompt: &str,
        opts: &AskOptions,
        on_text: Option<OnText<'_>>,
    ) -> Result<Answer> {
        let enc = self.encode(prompt)?;
        let sel = if opts.use_experts {
            self.select(&enc)?
        } else {
            Selection::empty()
        };
        self.answer_inner(&enc, sel, &[], opts.max_tokens, on_text)
    }

    /// The second half of [`Engine::ask`] for a selection made elsewhere (by
    /// [`Engine::select`], or by [`Selector::choose`] over candidates from another
    /// source such as a cluster): generates one branch per answered fact and joins them.
    ///
    /// `owned_ids[i]` names the uncommitted candidate `Source::Owned(i)` in
    /// [`Answer::selected`]; an owned candidate without one is applied but not listed.
    /// Only stored experts count towards the store's usage.
    pub fn answer_with(
        &self,
        enc: &Encoded,
        sel: Selection,
        owned_ids: &[u64],
        max_tokens: usize,
    ) -> Result<Answer> {
        self.answer_inner(enc, sel, owned_ids, max_tokens, None)
    }

    /// [`Engine::answer_with`], streaming the text as [`Engine::ask_streaming`] does.
    pub fn answer_streaming(
        &self,
        enc: &Encoded,
        sel: Selection,
        owned_ids: &[u64],
        max_tokens: usize,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Answer> {
        self.answer_inner(enc, sel, owned_ids, max_tokens, Some(on_text))
    }

    /// The one answer path; `on_text: None` decodes no pieces (a `TextStream` decodes
    /// the whole branch again per token).
    fn answer_inner(
        &self,
        enc: &Encoded,
        sel: Selection,
        owned_ids: &[u64],
        max_tokens: usize,
        mut on_text: Option<OnText<'_>>,
    ) -> Result<Answer> {
        let mut pieces = Pieces::new(&self.backbone.tokenizer);
        let mut branch = 0;
        let mut on_token = |b: usize, id: u32| -> ControlFlow<()> {
            let Some(on_text) = on_text.as_mut() else {
                return ControlFlow::Continue(());
            };
            if b != branch {
                // A new fact's answer: the rest of the last one, then one line break
                // per fact passed (one that answered nothing still has its line), as
                // they are joined in `Answer::text`.
                if pieces.next_text(b.saturating_sub(branch)).is_break() {
                    return ControlFlow::Break(());
                }
                branch = b;
            }
            pieces.push(id, &mut **on_text)
        };
        let branches = generate_answers_streaming(
            &self.backbone,
            &self.sites,
            self.store.config().rank as usize,
            enc,
            &sel,
            max_tokens,
            &mut on_token,
        )?;
        if let Some(on_text) = on_text.as_mut() {
            pieces.finish(branches.len().saturating_sub(branch + 1), &mut **on_text)?;
        }
        // Per active column: (id, score, whether it is a stored expert).
        let mut active = Vec::new();
        for &(col, _) in &sel.plan.active {
            let Some(&(source, score)) = sel.chosen.get(col) else {
                continue;
            };
            let id = match source {
                Source::Stored(id) => Some((id, true)),
                Source::Owned(i) => owned_ids.get(i).map(|&id| (id, false)),
            };
            if let Some((id, stored)) = id {
                active.push((id, score, stored));
            }
        }
        let (text, tokens) = self.join_branches(&branches)?;
        let counted: Vec<u64> = active
            .iter()
            .zip(&branches)
            .filter(|((_, _, stored), _)| *stored)
            .flat_map(|(&(id, _, _), b)| std::iter::repeat_n(id, b.len().max(1)))
            .collect();
        self.usage.record(&counted);
        Ok(Answer {
            text,
            tokens,
            selected: active.iter().map(|&(id, score, _)| (id, score)).collect(),
            candidates: sel.hits,
        })
    }

    /// One answer's text and tokens from the branches' tokens (one line per branch).
    fn join_branches(&self, branches: &[Vec<u32>]) -> Result<(String, Vec<u32>)> {
        let tok = &self.backbone.tokenizer;
        if branches.len() == 1 {
            return Ok((tok.decode(&branches[0], true)?, branches[0].clone()));
        }
        let stops = tok.stop_tokens();
        let newline = tok.encode("\n")?;
        let mut texts = Vec::with_capacity(branches.len());
        let mut tokens = Vec::new();
        for (i, b) in branches.iter().enumerate() {
            let body: Vec<u32> = b.iter().copied().filter(|t| !stops.contains(t)).collect();
            texts.push(tok.decode(&body, true)?);
            if i > 0 {
                tokens.extend(&newline);
            }
            tokens.extend(body);
        }
        Ok((texts.join("\n"), tokens))
    }

    /// Memorizes facts (the pipeline is [`crate::tune::Memorizer`]'s): validates them
    /// all, trains one expert per fact in batches, verifies each through the inference
    /// path, commits the exact ones — replacing in the same commit a stored fact of the
    /// same prompt with another answer — and reports a fact already stored with the
    /// same answer as unchanged.
    pub fn memorize(
        &mut self,
        facts: &[Fact],
        opts: &TuneOptions,
        progress: &mut dyn FnMut(MemorizeEvent),
    ) -> Result<MemorizeReport> {
        self.memorize_until(facts, opts, progress, &mut || false)
    }

    /// [`Engine::memorize`] that `stop` can end between batches (an interrupt, a
    /// deadline): it is asked after a batch is committed and audited, before the next;
    /// `true` ends the call there with [`MemorizeReport::stopped`] set. Every commit is
    /// whole.
    pub fn memorize_until(
        &mut self,
        facts: &[Fact],
        opts: &TuneOptions,
        progress: &mut dyn FnMut(MemorizeEvent),
        stop: &mut dyn FnMut() -> bool,
    ) -> Result<MemorizeReport> {
        // Refused before any training, not after it at the commit.
        self.check_writable("memorize")?;
        Memorizer {
            backbone: &self.backbone,
            sites: &self.sites,
            index: &self.index,
            selector: &self.selector,
        }
        .memorize_until(facts, opts, progress, stop)
    }

    /// Forgets the fact stored for `prompt` (every expert whose stored prompt is this
    /// prompt, in one commit); returns their ids (empty: nothing was stored for it).
    pub fn forget(&self, prompt: &str) -> Result<Vec<u64>> {
        self.check_writable("forget")?;
        let enc = self.encode(prompt)?;
        let mut hits = self.retrieve(&enc.query.pooled_key())?;
        hits.retain(|h| h.score > 0.999);
        let mut ids = Vec::new();
        for h in hits {
            let meta = self.store.meta(h.id)?;
            if meta.provenance.prompt.as_deref().map(str::trim) == Some(prompt.trim()) {
                ids.push(h.id);
            }
        }
        if !ids.is_empty() {
            self.index.delete_batch(&ids)?;
            for &id in &ids {
                self.selector.forget(id);
            }
            self.index.save()?;
        }
        Ok(ids)
    }

    /// Flushes usage counters and saves the index (nothing for a read-only engine).
    pub fn flush(&self) -> Result<()> {
        if self.store.is_read_only() {
            return Ok(());
        }
        self.usage.flush(&self.store)?;
        Ok(self.index.save()?)
    }

    fn check_writable(&self, operation: &'static str) -> Result<()> {
        Ok(self.store.check_writable(operation)?)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Readers count no usage: the counters live in the writer's database.
        if self.store.is_read_only() {
            return;
        }
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
        version: 2,
        query: QUERY_RULE.into(),
        match_threshold: Some(p.rule.match_threshold),
        coverage_threshold: Some(p.rule.coverage_threshold),
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
        return Err(Error::RuleMismatch {
            path: dir.to_path_buf(),
            found: f.query,
            expected: QUERY_RULE.into(),
        });
    }
    let d = RuleParams::default();
    let p = EngineParams {
        k_candidates: f.k_candidates,
        rule: RuleParams {
            match_threshold: f.match_threshold.unwrap_or(d.match_threshold),
            coverage_threshold: f.coverage_threshold.unwrap_or(d.coverage_threshold),
        },
    };
    for (name, v) in [
        ("match_threshold", p.rule.match_threshold),
        ("coverage_threshold", p.rule.coverage_threshold),
    ] {
        if !(v.is_finite() && (-1.0..=1.0).contains(&v)) {
            return Err(Error::InvalidArgument {
                name,
                reason: format!("{} says {v}; it must lie in [-1, 1]", path.display()),
            });
        }
    }
    if p.k_candidates == 0 {
        return Err(Error::InvalidArgument {
            name: "k_candidates",
            reason: format!("{} says K = 0", path.display()),
        });
    }
    Ok(p)
}

/// Whether the engine file of `dir` records the legacy rule (for `mome migrate`).
pub fn legacy_rule(dir: &Path) -> Result<bool> {
    match read_engine_file(dir) {
        Ok(_) => Ok(false),
        Err(Error::RuleMismatch { found, .. }) if found == LEGACY_QUERY_RULE => Ok(true),
        Err(e) => Err(e),
    }
}
