//! The backbone: a Llama-architecture decoder on candle with adapter sites,
//! GGUF / safetensors loading, the tokenizer and generation.
//!
//! The reference model is SmolLM2-135M-Instruct (`tools/fetch-model.sh`
//! fetches it; [`locate_model`] finds it). Memory experts act through an
//! [`AdapterHook`] called at the adapted layers; the query layer's normalised
//! input gives the per-token and pooled queries ([`Llama::queries`]).

mod config;
mod error;
mod generate;
mod linear;
mod llama;
mod load;
mod locate;
mod sha256;
mod sites;
pub mod tiny;
mod tokenizer;

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::Device;

pub use config::LlamaConfig;
pub use error::{ModelError, ModelResult};
pub(crate) use generate::Pieces;
pub use generate::{GenerateOptions, Generated, Sampler, Sampling, StopReason, TextStream};
pub use llama::{
    argmax, pooled_query, Hidden, KvCache, Llama, Logits, Mode, Pass, Queries, WeightFormat,
};
pub use locate::{
    data_dir, locate_model, model_path, DATA_DIR_ENV, MODEL_ENV, MODEL_FILE_NAME, MODEL_SHA256,
};
pub use sites::{AdapterHook, AdapterSites, Adapters, NoopHook};
pub use tokenizer::{byte_level_alphabet, ChatMessage, Tokenizer};

/// A model and its tokenizer.
#[derive(Debug, Clone)]
pub struct Backbone {
    /// The decoder.
    pub model: Llama,
    /// Its tokenizer and chat template.
    pub tokenizer: Tokenizer,
}

/// A chat reply.
#[derive(Debug, Clone)]
pub struct ChatReply {
    /// The reply text (control tokens removed).
    pub text: String,
    /// Generation details (tokens, stop reason, timings).
    pub generated: Generated,
}

impl Backbone {
    /// Loads a GGUF file: weights (see [`Llama::from_gguf`]) and the tokenizer
    /// from its metadata, reading the file once.
    pub fn from_gguf(path: &Path, format: WeightFormat, device: &Device) -> ModelResult<Self> {
        let file = load::GgufFile::read(path)?;
        let model = file.llama(format, device)?;
        let tokenizer = Tokenizer::from_gguf_metadata(file.metadata(), path)?;
        Self::checked(model, tokenizer)
    }

    /// Loads a Hugging Face checkpoint directory with its `tokenizer.json`.
    pub fn from_safetensors_dir(dir: &Path, device: &Device) -> ModelResult<Self> {
        let model = Llama::from_safetensors_dir(dir, device)?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?
            .with_default_eos(model.config().eos_token_id);
        Self::checked(model, tokenizer)
    }

    /// The reference model found by [`locate_model`] (`explicit` is `--model`).
    pub fn locate_and_load(
        explicit: Option<&Path>,
        format: WeightFormat,
        device: &Device,
    ) -> ModelResult<Self> {
        Self::from_gguf(&locate_model(explicit)?, format, device)
    }

    fn checked(model: Llama, tokenizer: Tokenizer) -> ModelResult<Self> {
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(ModelError::InvalidConfig(format!(
                "the tokenizer has {} ids but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        Ok(Self { model, tokenizer })
    }

    /// Default options for a chat reply: greedy, stopping at EOS / `<|im_end|>`.
    pub fn greedy_options(&self, max_tokens: usize) -> GenerateOptions {
        GenerateOptions::greedy(max_tokens, self.tokenizer.stop_tokens())
    }

    /// Answers a conversation (ChatML with the model's default system prompt),
    /// streaming text pieces to `on_text`, which may stop generation.
    pub fn chat(
        &self,
        messages: &[ChatMessage],
        options: &GenerateOptions,
        adapters: Option<Adapters<'_>>,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> ModelResult<ChatReply> {
        let prompt = self.tokenizer.encode_chat(messages, true)?;
        let mut pieces = Pieces::new(&self.tokenizer);
        let generated = self.model.generate(&prompt, options, adapters, &mut |id| {
            pieces.push(id, on_text)
        })?;
        pieces.finish(0, on_text)?;
        let text = self.tokenizer.decode(&generated.tokens, true)?;
        Ok(ChatReply { text, generated })
    }

    /// Answers one user message; see [`Backbone::chat`].
    pub fn ask(
        &self,
        user: &str,
        options: &GenerateOptions,
        adapters: Option<Adapters<'_>>,
    ) -> ModelResult<ChatReply> {
        self.chat(&[ChatMessage::user(user)], options, adapters, &mut |_| {
            ControlFlow::Continue(())
        })
    }
}
