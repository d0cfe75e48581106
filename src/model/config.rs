//! Hyper-parameters of a Llama-architecture decoder.

use super::error::{ModelError, ModelResult};

/// Shape and numerics of a Llama-architecture decoder.
///
/// Field names follow Hugging Face's `LlamaConfig` so that `config.json` maps
/// one to one; [`LlamaConfig::smollm2_135m`] gives the reference model's values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream, `d_model`.
    pub hidden_size: usize,
    /// Inner width of the SwiGLU feed-forward block.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency θ.
    pub rope_theta: f32,
    /// Context length: positions the rotary tables and KV cache may hold.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token, if the model has one.
    pub eos_token_id: Option<u32>,
}

/// Longest context a model may declare (2^20 positions: far past the Llama-family
/// models the engine runs; SmolLM2's is 8192).
pub(crate) const MAX_CONTEXT: usize = 1 << 20;

impl LlamaConfig {
    /// The reference model, SmolLM2-135M-Instruct.
    pub fn smollm2_135m() -> Self {
        Self {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    /// A tiny configuration of the same architecture, for fast tests.
    ///
    /// Keeps the reference model's head grouping (3 query heads per KV head)
    /// so grouped-query attention is exercised.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 48,
            intermediate_size: 96,
            num_hidden_layers: 4,
            num_attention_heads: 6,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks that the shape is one the forward pass can run.
    pub fn validate(&self) -> ModelResult<()> {
        let bad = |m: String| Err(ModelError::InvalidConfig(m));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || self.max_position_embeddings == 0
        {
            return bad(format!("every size must be positive: {self:?}"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return bad(format!(
                "rms_norm_eps must be positive, found {}",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(format!("rope_theta must be > 1, found {}", self.rope_theta));
        }
        // The RoPE tables hold a row per position: the context length is the file's
        // claim, so it is bounded before they are allocated.
        if self.max_position_embeddings > MAX_CONTEXT {
            return bad(format!(
                "context length {} exceeds {MAX_CONTEXT} positions",
                self.max_position_embeddings
            ));
        }
        // u32 token ids: a larger vocabulary could not be indexed.
        if self.vocab_size > u32::MAX as usize {
            return bad(format!("vocab_size {} exceeds u32 ids", self.vocab_size));
        }
        for (what, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if let Some(id) = id {
                if id as usize >= self.vocab_size {
                    return bad(format!(
                        "{what} {id} is outside the vocabulary ({})",
                        self.vocab_size
                    ));
                }
            }
        }
        Ok(())
    }
}
