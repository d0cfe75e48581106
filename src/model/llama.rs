//! The Llama-architecture decoder: RMSNorm, interleaved RoPE, grouped-query
//! attention with a KV cache, SwiGLU, with adapter sites built in.

use candle_core::{DType, Device, IndexOp, Tensor, D};

use super::config::LlamaConfig;
use super::error::{CandleContext, ModelError, ModelResult};
use super::linear::Linear;
use super::sites::{AdapterHook, AdapterSites, Adapters};

/// Which candle ops the forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Fused inference kernels (`rms_norm`, `softmax_last_dim`, `rope_i`). They
    /// have no backward: placed after a trainable tensor they silently drop its
    /// gradient, so they are for frozen inference only.
    #[default]
    Fast,
    /// Plain ops that all have a backward (`rms_norm_slow`, `softmax`,
    /// `rope_i_slow`), and frozen linear layers that return only the input
    /// gradient. Requires dense (dequantized) weights.
    Differentiable,
}

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Logits {
    /// Only the last position: `[batch, vocab]`.
    #[default]
    Last,
    /// Every position: `[batch, positions, vocab]` (training needs them).
    All,
}

/// How the weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Everything dequantized to f32: differentiable, and the faster path on CPU.
    #[default]
    F32,
    /// Linear layers kept in the checkpoint's quantized format and multiplied
    /// with candle's quantized matmul (inference only; GGUF only).
    Quantized,
}

/// Options of one pass through (part of) the layers.
#[derive(Clone, Copy, Default)]
pub struct Pass<'a> {
    /// Adapter sites: where queries are captured and, with a hook, adapters act.
    pub sites: Option<&'a AdapterSites>,
    /// Called at every adapted layer of `sites`.
    pub hook: Option<&'a dyn AdapterHook>,
    /// Ops to use.
    pub mode: Mode,
}

impl<'a> Pass<'a> {
    /// No adapters.
    pub fn bare(mode: Mode) -> Self {
        Self {
            sites: None,
            hook: None,
            mode,
        }
    }

    /// Adapters applied at their sites.
    pub fn adapted(adapters: Adapters<'a>, mode: Mode) -> Self {
        Self {
            sites: Some(adapters.sites),
            hook: Some(adapters.hook),
            mode,
        }
    }

    /// Queries captured at the sites' query layer, no adapters applied (e.g. the
    /// frozen prefix below the first adapted layer in memory tuning).
    pub fn queries_only(sites: &'a AdapterSites, mode: Mode) -> Self {
        Self {
            sites: Some(sites),
            hook: None,
            mode,
        }
    }

    fn from_adapters(adapters: Option<Adapters<'a>>, mode: Mode) -> Self {
        match adapters {
            Some(a) => Self::adapted(a, mode),
            None => Self::bare(mode),
        }
    }
}

impl std::fmt::Debug for Pass<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("sites", &self.sites)
            .field("hook", &self.hook.is_some())
            .field("mode", &self.mode)
            .finish()
    }
}

/// The residual stream part-way through the model.
///
/// Produced by [`Llama::embed`] and advanced by [`Llama::run_layers`]; memory
/// tuning keeps the one below the first adapted layer and reruns only the rest.
#[derive(Debug, Clone)]
pub struct Hidden {
    /// Residual stream `[batch, positions, d_model]`, input of layer `next_layer`.
    pub h: Tensor,
    /// Per-token queries `[batch, positions, d_model]`, once the query layer has run.
    pub queries: Option<Tensor>,
    /// The next layer to run (`num_layers` when all have run).
    pub next_layer: usize,
    /// Absolute position of the first of these tokens (the KV cache length before them).
    pub pos: usize,
}

impl Hidden {
    /// The same state cut from the autograd graph (for caching a frozen prefix).
    pub fn detach(&self) -> Self {
        Self {
            h: self.h.detach(),
            queries: self.queries.as_ref().map(Tensor::detach),
            next_layer: self.next_layer,
            pos: self.pos,
        }
    }
}

/// A prompt's queries from the query layer (DESIGN.md §1).
#[derive(Debug, Clone)]
pub struct Queries {
    /// Per-token queries `[positions, d_model]`: the query layer's normalised input.
    pub per_token: Tensor,
    /// Mean of the per-token queries, L2-normalised: `[d_model]`. Retrieval
    /// searches the index with it; memory tuning uses it as an expert's key.
    pub pooled: Tensor,
}

/// Keys and values of the positions processed so far, per layer.
///
/// Held by the caller so that one model serves many sequences at once.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &Llama) -> Self {
        Self {
            layers: vec![None; model.config.num_hidden_layers],
        }
    }

    /// Positions cached at layer 0 (the length of the sequence so far).
    pub fn len(&self) -> usize {
        self.layer_len(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    fn layer_len(&self, layer: usize) -> usize {
        match self.layers.get(layer) {
            Some(Some((k, _))) => k.dims().get(2).copied().unwrap_or(0),
            _ => 0,
        }
    }
}

/// One decoder layer's weights.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) attn_norm: Tensor,
    pub(crate) q: Linear,
    pub(crate) k: Linear,
    pub(crate) v: Linear,
    pub(crate) o: Linear,
    pub(crate) ffn_norm: Tensor,
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

/// A Llama-architecture decoder with adapter sites.
///
/// The weights are frozen and shared (`&self` everywhere); per-sequence state
/// lives in a [`KvCache`]. q/k projections are stored in the interleaved
/// (GGUF) RoPE layout; safetensors checkpoints are permuted on load.
#[derive(Debug, Clone)]
pub struct Llama {
    pub(crate) config: LlamaConfig,
    pub(crate) embed: Tensor,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: Tensor,
    /// `None` when tied to `embed`.
    pub(crate) lm_head: Option<Linear>,
    pub(crate) format: WeightFormat,
    pub(crate) digest: String,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl Llama {
    /// Assembles a model from loaded weights; shapes were checked by the loader.
    pub(crate) fn assemble(
        config: LlamaConfig,
        embed: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
        lm_head: Option<Linear>,
        format: WeightFormat,
        digest: String,
    ) -> ModelResult<Self> {
        config.validate()?;
        if blocks.len() != config.num_hidden_layers {
            return Err(ModelError::InvalidConfig(format!(
                "{} layers loaded for a {}-layer configuration",
                blocks.len(),
                config.num_hidden_layers
            )));
        }
        let device = embed.device().clone();
        let (cos, sin) = rope_tables(&config, &device).ctx(|| "building RoPE tables".into())?;
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            lm_head,
            format,
            digest,
            cos,
            sin,
            device,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// `d_model`, the width of the residual stream and of the queries.
    pub fn d_model(&self) -> usize {
        self.config.hidden_size
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.config.num_hidden_layers
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How the weights are held.
    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// A stable identifier of the weights, recorded by the store: `sha256:<hex>`
    /// of the GGUF file (what `sha256sum` prints), `sha256-safetensors:<hex>`
    /// over a checkpoint directory's config and shards, or
    /// `sha256-tensors:<hex>` over in-memory weights.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Checks that adapter sites (a store's configuration of width `d_model`)
    /// fit this model.
    pub fn check_sites(&self, sites: &AdapterSites, d_model: usize) -> ModelResult<()> {
        sites.check_fits(d_model, self.d_model(), self.num_layers())
    }

    /// Embeds a batch of equal-length token rows starting at absolute position `pos`.
    ///
    /// Rows of different lengths must be right-padded by the caller: with
    /// causal attention, padding after a row's real tokens cannot change them.
    pub fn embed(&self, rows: &[&[u32]], pos: usize) -> ModelResult<Hidden> {
        let Some(first) = rows.first() else {
            return Err(ModelError::InvalidInput("empty batch".into()));
        };
        let t = first.len();
        if t == 0 {
            return Err(ModelError::InvalidInput("no tokens".into()));
        }
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != t) {
            return Err(ModelError::InvalidInput(format!(
                "batch rows must have equal length: row 0 has {t} tokens, row {i} has {}",
                r.len()
            )));
        }
        let needed = pos + t;
        if needed > self.config.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed,
                max: self.config.max_position_embeddings,
            });
        }
        let vocab = self.config.vocab_size;
        let mut ids = Vec::with_capacity(rows.len() * t);
        for row in rows {
            for (position, &token) in row.iter().enumerate() {
                if token as usize >= vocab {
                    return Err(ModelError::TokenOutOfVocab {
                        token,
                        position,
                        vocab_size: vocab,
                    });
                }
                ids.push(token);
            }
        }
        let b = rows.len();
        let h = Tensor::from_vec(ids, b * t, &self.device)
            .and_then(|ids| self.embed.index_select(&ids, 0))
            .and_then(|h| h.reshape((b, t, self.d_model())))
            .ctx(|| "embedding lookup".into())?;
        Ok(Hidden {
            h,
            queries: None,
            next_layer: 0,
            pos,
        })
    }

    /// Runs layers `hidden.next_layer .. until`.
    ///
    /// With a cache, each layer's cache must hold exactly `hidden.pos`
    /// positions; the new keys/values are appended. Without one, attention
    /// sees only these positions (`hidden.pos` still sets their rotation).
    /// With `pass.sites`, the queries are captured at the query layer; with a
    /// hook too, it is called after each adapted layer's block.
    pub fn run_layers(
        &self,
        hidden: Hidden,
        until: usize,
        mut cache: Option<&mut KvCache>,
        pass: &Pass<'_>,
    ) -> ModelResult<Hidden> {
        let n = self.num_layers();
        if until > n || hidden.next_layer > until {
            return Err(ModelError::InvalidInput(format!(
                "cannot run layers {}..{until} of a {n}-layer model",
                hidden.next_layer
            )));
        }
        if pass.hook.is_some() && pass.sites.is_none() {
            return Err(ModelError::InvalidInput(
                "an adapter hook needs adapter sites".into(),
            ));
        }
        if let Some(sites) = pass.sites {
            self.check_sites(sites, self.d_model())?;
        }
        if pass.mode == Mode::Differentiable && self.format == WeightFormat::Quantized {
            return Err(ModelError::NotDifferentiable(
                "the model was loaded with quantized weights; load it as F32 to train through it"
                    .into(),
            ));
        }
        let (_, t, d) = hidden.h.dims3().ctx(|| "run_layers input".into())?;
        if t == 0 {
            return Err(ModelError::InvalidInput("no positions to run".into()));
        }
        if d != self.d_model() {
            return Err(ModelError::InvalidInput(format!(
                "hidden state width {d}, model d_model {}",
                self.d_model()
            )));
        }
        if hidden.pos + t > self.config.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed: hidden.pos + t,
                max: self.config.max_position_embeddings,
            });
        }
        if let Some(c) = cache.as_deref() {
            if c.layers.len() != n {
                return Err(ModelError::CacheMismatch {
                    layer: c.layers.len(),
                    expected: n,
                    found: c.layers.len(),
                });
            }
        }
        let Hidden {
            mut h,
            mut queries,
            next_layer,
            pos,
        } = hidden;
        let mask = if t > 1 {
            Some(causal_mask(t, pos, &self.device).ctx(|| "building the causal mask".into())?)
        } else {
            None
        };
        for layer in next_layer..until {
            let block = &self.blocks[layer];
            let layer_cache = match cache.as_deref_mut() {
                Some(c) => {
                    let found = c.layer_len(layer);
                    if found != pos {
                        return Err(ModelError::CacheMismatch {
                            layer,
                            expected: pos,
                            found,
                        });
                    }
                    c.layers.get_mut(layer)
                }
                None => None,
            };
            let h_norm = self
                .rms_norm(&h, &block.attn_norm, pass.mode)
                .ctx(|| format!("layer {layer} input_layernorm"))?;
            if pass.sites.map(AdapterSites::query_layer) == Some(layer) {
                queries = Some(h_norm.clone());
            }
            let out = self
                .block_forward(
                    block,
                    &h,
                    &h_norm,
                    pos,
                    mask.as_ref(),
                    layer_cache,
                    pass.mode,
                )
                .ctx(|| format!("layer {layer}"))?;
            h = match (pass.sites, pass.hook) {
                (Some(sites), Some(hook)) if sites.is_adapted(layer) => {
                    let q = queries.as_ref().ok_or_else(|| {
                        ModelError::InvalidInput(format!(
                            "adapted layer {layer} runs but the queries of layer {} were not captured",
                            sites.query_layer()
                        ))
                    })?;
                    hook.apply(layer, pos, &out, &h_norm, q)
                        .map_err(|source| ModelError::Hook { layer, source })?
                }
                _ => out,
            };
        }
        Ok(Hidden {
            h,
            queries,
            next_layer: until,
            pos,
        })
    }

    /// Final norm and LM head over a fully-run hidden state.
    pub fn logits(&self, hidden: &Hidden, which: Logits, mode: Mode) -> ModelResult<Tensor> {
        if hidden.next_layer != self.num_layers() {
            return Err(ModelError::InvalidInput(format!(
                "logits need all {} layers run, the hidden state is at layer {}",
                self.num_layers(),
                hidden.next_layer
            )));
        }
        let (_, t, _) = hidden.h.dims3().ctx(|| "logits input".into())?;
        if t == 0 {
            return Err(ModelError::InvalidInput(
                "no positions to compute logits for".into(),
            ));
        }
        let f = || -> candle_core::Result<Tensor> {
            let h = match which {
                // The norm is per row, so narrowing first computes the same values.
                Logits::Last => hidden.h.narrow(1, t - 1, 1)?,
                Logits::All => hidden.h.clone(),
            };
            let h = self.rms_norm(&h, &self.norm, mode)?;
            let logits = match (&self.lm_head, mode) {
                (Some(head), Mode::Fast) => head.forward(&h)?,
                (Some(head), Mode::Differentiable) => head.forward_grad(&h)?,
                (None, Mode::Fast) => super::linear::matmul_t(&h, &self.embed)?,
                (None, Mode::Differentiable) => {
                    Linear::Dense(self.embed.clone()).forward_grad(&h)?
                }
            };
            match which {
                Logits::Last => logits.squeeze(1),
                Logits::All => Ok(logits),
            }
        };
        f().ctx(|| "final norm and LM head".into())
    }

    /// One step for a single sequence: runs `tokens` after what `cache` holds
    /// and returns the last position's logits `[vocab]`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        adapters: Option<Adapters<'_>>,
    ) -> ModelResult<Tensor> {
        let pass = Pass::from_adapters(adapters, Mode::Fast);
        let hidden = self.embed(&[tokens], cache.len())?;
        let hidden = self.run_layers(hidden, self.num_layers(), Some(cache), &pass)?;
        self.logits(&hidden, Logits::Last, Mode::Fast)?
            .squeeze(0)
            .ctx(|| "logits".into())
    }

    /// A whole batch from position 0 without a cache: `[batch, vocab]` or
    /// `[batch, positions, vocab]` logits.
    pub fn forward_batch(
        &self,
        rows: &[&[u32]],
        logits: Logits,
        pass: &Pass<'_>,
    ) -> ModelResult<Tensor> {
        let hidden = self.embed(rows, 0)?;
        let hidden = self.run_layers(hidden, self.num_layers(), None, pass)?;
        self.logits(&hidden, logits, pass.mode)
    }

    /// Runs the prompt through layers `0..=query_layer` only and returns its
    /// per-token and pooled queries (retrieval needs them before the full forward).
    pub fn queries(&self, tokens: &[u32], query_layer: usize) -> ModelResult<Queries> {
        if query_layer >= self.num_layers() {
            return Err(ModelError::SitesMismatch(format!(
                "query layer {query_layer} but the model has layers 0..{}",
                self.num_layers()
            )));
        }
        let hidden = self.embed(&[tokens], 0)?;
        let hidden = self.run_layers(hidden, query_layer, None, &Pass::bare(Mode::Fast))?;
        let f = || -> candle_core::Result<Queries> {
            let per_token = self
                .rms_norm(&hidden.h, &self.blocks[query_layer].attn_norm, Mode::Fast)?
                .squeeze(0)?;
            let pooled = pooled_query(&per_token)?;
            Ok(Queries { per_token, pooled })
        };
        f().ctx(|| format!("queries of layer {query_layer}"))
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        match mode {
            Mode::Fast => candle_nn::ops::rms_norm(x, w, eps),
            Mode::Differentiable => candle_nn::ops::rms_norm_slow(x, w, eps),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        block: &Block,
        h: &Tensor,
        h_norm: &Tensor,
        pos: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        let lin = |l: &Linear, x: &Tensor| match mode {
            Mode::Fast => l.forward(x),
            Mode::Differentiable => l.forward_grad(x),
        };
        let attn = self.attention(block, h_norm, pos, mask, cache, mode, &lin)?;
        let h = (h + attn)?;
        let x = self.rms_norm(&h, &block.ffn_norm, mode)?;
        let gate = candle_nn::ops::silu(&lin(&block.gate, &x)?)?;
        let ff = lin(&block.down, &(gate * lin(&block.up, &x)?)?)?;
        h + ff
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        block: &Block,
        x: &Tensor,
        pos: usize,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mode: Mode,
        lin: &dyn Fn(&Linear, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t, d) = x.dims3()?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let rep = nh / nkv;
        let q = lin(&block.q, x)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = lin(&block.k, x)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let v = lin(&block.v, x)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let (q, k) = match mode {
            Mode::Fast => (
                candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
            ),
            Mode::Differentiable => (
                candle_nn::rotary_emb::rope_i_slow(&q, &cos, &sin)?,
                candle_nn::rotary_emb::rope_i_slow(&k, &cos, &sin)?,
            ),
        };
        let (k, v) = match cache {
            Some(slot) => {
                let kv = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some(kv.clone());
                kv
            }
            None => (k, v),
        };
        let s = k.dim(2)?;
        // Grouped-query attention without materialising repeated K/V: the `rep`
        // query heads sharing a KV head are folded into the row dimension.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = match mask {
            Some(mask) => att
                .reshape((b, nkv, rep, t, s))?
                .broadcast_add(mask)?
                .reshape((b, nkv, rep * t, s))?,
            None => att,
        };
        let att = match mode {
            Mode::Fast => candle_nn::ops::softmax_last_dim(&att)?,
            Mode::Differentiable => candle_nn::ops::softmax(&att, D::Minus1)?,
        };
        let y = att
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, d))?;
        lin(&block.o, &y)
    }
}

/// Mean of per-token queries `[positions, d]`, L2-normalised to `[d]`.
pub fn pooled_query(per_token: &Tensor) -> candle_core::Result<Tensor> {
    let mean = per_token.mean(0)?;
    let norm = mean.sqr()?.sum_all()?.sqrt()?;
    // A zero mean has no direction; leave it zero instead of dividing by zero.
    let norm = norm.maximum(1e-12)?;
    mean.broadcast_div(&norm)
}

/// Additive causal mask `[t, pos + t]` for `t` new tokens after `pos` cached ones.
fn causal_mask(t: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let s = pos + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (t, s), device)
}

/// Rotary tables `[max_positions, head_dim / 2]`, computed as llama.cpp and
/// candle-transformers do (f32 powers, positions × inverse frequencies).
fn rope_tables(c: &LlamaConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let hd = c.head_dim();
    let inv: Vec<f32> = (0..hd)
        .step_by(2)
        .map(|i| 1f32 / c.rope_theta.powf(i as f32 / hd as f32))
        .collect();
    let n = inv.len();
    let inv = Tensor::from_vec(inv, (1, n), device)?;
    let positions = Tensor::arange(0u32, c.max_position_embeddings as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((c.max_position_embeddings, 1))?;
    let angles = positions.matmul(&inv)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Index of the largest logit (greedy decoding).
pub fn argmax(logits: &Tensor) -> ModelResult<u32> {
    logits
        .argmax(D::Minus1)
        .and_then(|t| t.to_dtype(DType::U32))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.i(0))
        .and_then(|t| t.to_scalar::<u32>())
        .ctx(|| "argmax of logits".into())
}
