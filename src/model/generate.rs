//! Token generation: greedy or sampled (temperature, top-p, seed), stop
//! tokens, a token budget, and a streaming callback.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};

use super::error::{CandleContext, ModelError, ModelResult};
use super::llama::{argmax, KvCache, Llama};
use super::sites::Adapters;
use super::tokenizer::Tokenizer;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties go to the lowest id).
    Greedy,
    /// Nucleus sampling: softmax at `temperature`, keep the most likely tokens
    /// whose probabilities sum to `top_p`, draw from them with a generator
    /// seeded by `seed` (same seed, same model, same prompt → same output).
    TopP {
        /// Softmax temperature, > 0.
        temperature: f32,
        /// Probability mass kept, in (0, 1].
        top_p: f32,
        /// Seed of the random generator.
        seed: u64,
    },
}

/// Generation options.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Generation stops after any of these (it is included in the output
    /// tokens, not in the text).
    pub stop_tokens: Vec<u32>,
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_tokens`, stopping at `stop_tokens`.
    pub fn greedy(max_tokens: usize, stop_tokens: Vec<u32>) -> Self {
        Self {
            max_tokens,
            sampling: Sampling::Greedy,
            stop_tokens,
        }
    }

    fn validate(&self) -> ModelResult<()> {
        if let Sampling::TopP {
            temperature, top_p, ..
        } = self.sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(ModelError::InvalidOptions(format!(
                    "temperature must be a positive number, found {temperature}"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(ModelError::InvalidOptions(format!(
                    "top_p must be in (0, 1], found {top_p}"
                )));
            }
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was produced.
    StopToken(u32),
    /// `max_tokens` were produced.
    MaxTokens,
    /// The callback asked to stop.
    Callback,
    /// The context window is full.
    ContextFull,
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Generated {
    /// New tokens, the stop token included when there was one.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop: StopReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt (prefill, first token included).
    pub prefill_secs: f64,
    /// Seconds spent on the remaining tokens.
    pub decode_secs: f64,
}

/// Chooses tokens from logits.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    /// A sampler for `sampling`.
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// The next token from logits `[vocab]`.
    pub fn sample(&mut self, logits: &Tensor) -> ModelResult<u32> {
        let (temperature, top_p) = match self.sampling {
            Sampling::Greedy => return argmax(logits),
            Sampling::TopP {
                temperature, top_p, ..
            } => (temperature, top_p),
        };
        let logits: Vec<f32> = logits
            .to_dtype(DType::F32)
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1())
            .ctx(|| "reading logits".into())?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return Err(ModelError::InvalidInput(
                "logits are not finite; cannot sample".into(),
            ));
        }
        let mut probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) / temperature).exp()))
            .collect();
        let total: f32 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0usize;
        let mut mass = 0f32;
        for (_, p) in &probs {
            kept += 1;
            mass += p / total;
            if mass >= top_p {
                break;
            }
        }
        let nucleus = &probs[..kept.max(1)];
        let nucleus_mass: f32 = nucleus.iter().map(|p| p.1).sum();
        let mut draw = self.rng.random::<f32>() * nucleus_mass;
        for &(id, p) in nucleus {
            if draw < p {
                return Ok(id);
            }
            draw -= p;
        }
        // Rounding can leave `draw` just above the last weight.
        Ok(nucleus[nucleus.len() - 1].0)
    }
}

impl Llama {
    /// Generates after `prompt`, calling `on_token` with each new token; the
    /// callback may stop generation with `ControlFlow::Break`.
    ///
    /// With `adapters`, the hook acts at every step, the queries of new tokens
    /// coming from the query layer as in the prompt.
    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        adapters: Option<Adapters<'_>>,
        on_token: &mut dyn FnMut(u32) -> ControlFlow<()>,
    ) -> ModelResult<Generated> {
        options.validate()?;
        if prompt.is_empty() {
            return Err(ModelError::InvalidInput("empty prompt".into()));
        }
        let max = self.config().max_position_embeddings;
        if prompt.len() > max {
            return Err(ModelError::ContextOverflow {
                needed: prompt.len(),
                max,
            });
        }
        let mut sampler = Sampler::new(options.sampling);
        let mut cache = KvCache::new(self);
        let mut tokens = Vec::new();
        let start = Instant::now();
        let mut prefill_secs = 0.0;
        let mut input: Vec<u32> = prompt.to_vec();
        let stop = loop {
            if tokens.len() >= options.max_tokens {
                break StopReason::MaxTokens;
            }
            if cache.len() + input.len() > max {
                break StopReason::ContextFull;
            }
            let logits = self.forward(&input, &mut cache, adapters)?;
            let next = sampler.sample(&logits)?;
            if tokens.is_empty() {
                prefill_secs = start.elapsed().as_secs_f64();
            }
            tokens.push(next);
            if options.stop_tokens.contains(&next) {
                break StopReason::StopToken(next);
            }
            if on_token(next).is_break() {
                break StopReason::Callback;
            }
            input.clear();
            input.push(next);
        };
        Ok(Generated {
            tokens,
            stop,
            prompt_tokens: prompt.len(),
            prefill_secs,
            decode_secs: start.elapsed().as_secs_f64() - prefill_secs,
        })
    }
}

/// Streams text out of generated ids, holding back incomplete UTF-8 sequences.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStream<'a> {
    /// An empty stream.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> ModelResult<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        // Bytes decode lossily, and only the last U+FFFD can still change: it may be
        // the start of a multi-byte character whose other bytes are in tokens to
        // come. A U+FFFD before it stands for bytes that are invalid whatever comes
        // next, so a reply of invalid bytes still streams, and the pieces join to the
        // final text.
        let stable = text.strip_suffix('\u{FFFD}').unwrap_or(&text);
        if stable.len() <= self.emitted || !stable.is_char_boundary(self.emitted) {
            return Ok(String::new());
        }
        let new = stable[self.emitted..].to_string();
        self.emitted = stable.len();
        Ok(new)
    }

    /// The text still held back (an incomplete character at the end, shown as
    /// U+FFFD), once no more tokens will come.
    pub fn finish(&mut self) -> ModelResult<String> {
        let text = self.tokenizer.decode(&self.ids, true)?;
        let rest = text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = text.len();
        Ok(rest)
    }
}

/// Forwards the text of generated tokens to a callback as pieces: the one path for
/// [`Backbone::chat`](super::Backbone::chat) and the engine's answers (which join several
/// texts, one per answered fact, with line breaks). Only non-empty pieces are sent; a
/// decoding error or a stop request from the callback ends generation, and
/// [`Pieces::finish`] sends the held-back rest only when nobody asked to stop.
pub(crate) struct Pieces<'a> {
    tokenizer: &'a Tokenizer,
    stream: TextStream<'a>,
    /// Text to send before the next piece (the rest of the last text and its breaks).
    pending: String,
    failed: Option<ModelError>,
    stopped: bool,
}

impl<'a> Pieces<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer) -> Self {
        Pieces {
            tokenizer,
            stream: TextStream::new(tokenizer),
            pending: String::new(),
            failed: None,
            stopped: false,
        }
    }

    /// Adds a generated token and sends the text that became complete.
    pub(crate) fn push(
        &mut self,
        id: u32,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        match self.stream.push(id) {
            Ok(p) => self.pending.push_str(&p),
            Err(e) => {
                self.failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        if self.pending.is_empty() {
            return ControlFlow::Continue(());
        }
        let flow = on_text(&std::mem::take(&mut self.pending));
        self.stopped = flow.is_break();
        flow
    }

    /// Ends the current text and starts a new one, `breaks` line breaks after it (sent
    /// with the new text's first piece).
    pub(crate) fn next_text(&mut self, breaks: usize) -> ControlFlow<()> {
        match self.stream.finish() {
            Ok(rest) => self.pending.push_str(&rest),
            Err(e) => {
                self.failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        self.pending.extend(std::iter::repeat_n('\n', breaks));
        self.stream = TextStream::new(self.tokenizer);
        ControlFlow::Continue(())
    }

    /// Generation is over: fails with the decoding error that ended it, else sends the
    /// rest (with `breaks` line breaks after it) unless the callback asked to stop.
    pub(crate) fn finish(
        mut self,
        breaks: usize,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> ModelResult<()> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.stopped {
            return Ok(());
        }
        let mut rest = std::mem::take(&mut self.pending);
        rest.push_str(&self.stream.finish()?);
        rest.extend(std::iter::repeat_n('\n', breaks));
        if !rest.is_empty() {
            // A stop request here has nothing left to stop.
            let _ = on_text(&rest);
        }
        Ok(())
    }
}
