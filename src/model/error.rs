//! Errors of the backbone module.

use std::path::PathBuf;

/// Everything that can go wrong while locating, loading or running the backbone.
///
/// Messages name the file, tensor, layer or value that is wrong, with the
/// expected and found values where there are any.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// No model file at the path that was looked up.
    #[error(
        "model file not found at {path} (looked up via {source_of_path}); \
         run tools/fetch-model.sh to fetch it, or pass --model PATH / set MOME_MODEL"
    )]
    ModelNotFound {
        /// The path that was tried.
        path: PathBuf,
        /// Where that path came from (`--model`, `MOME_MODEL`, the data directory).
        source_of_path: &'static str,
    },
    /// Reading a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable GGUF file (bad magic, corrupt header, bad metadata).
    #[error("{path} is not a valid GGUF file: {message}")]
    InvalidGguf {
        /// The file involved.
        path: PathBuf,
        /// What the parser reported.
        message: String,
    },
    /// The file ends before the data that its header describes.
    #[error(
        "{path} is truncated: tensor {tensor} needs bytes up to {needed}, the file has {actual}"
    )]
    Truncated {
        /// The file involved.
        path: PathBuf,
        /// The first tensor whose data lies past the end.
        tensor: String,
        /// Bytes the file would need.
        needed: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// The checkpoint describes a model this engine does not run.
    #[error("{path}: unsupported architecture: {found} (expected a Llama-architecture decoder)")]
    UnsupportedArchitecture {
        /// The file involved.
        path: PathBuf,
        /// What was found instead.
        found: String,
    },
    /// A required metadata / config key is absent or has the wrong type.
    #[error("{path}: metadata key {key}: {problem}")]
    BadMetadata {
        /// The file involved.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A required tensor is absent from the checkpoint.
    #[error("{path}: missing tensor {name}")]
    MissingTensor {
        /// The file or directory involved.
        path: PathBuf,
        /// The tensor's name in the checkpoint.
        name: String,
    },
    /// A tensor's shape does not match the model configuration.
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The tensor's name in the checkpoint.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A tensor cannot be used (unsupported dtype, NaN weights, unreadable data).
    #[error("tensor {name}: {problem}")]
    BadTensor {
        /// The tensor's name in the checkpoint.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The model configuration is inconsistent (e.g. heads that do not divide `d_model`).
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// A safetensors checkpoint could not be read.
    #[error("{path}: invalid safetensors checkpoint: {message}")]
    InvalidSafetensors {
        /// The file or directory involved.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A token id outside the vocabulary.
    #[error(
        "token id {token} at position {position} is out of the vocabulary (size {vocab_size})"
    )]
    TokenOutOfVocab {
        /// The offending id.
        token: u32,
        /// Its position in the input.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The sequence would exceed the model's context window.
    #[error("context overflow: {needed} positions needed, the model's context holds {max}")]
    ContextOverflow {
        /// Positions the request needs (cached + new).
        needed: usize,
        /// The model's context length.
        max: usize,
    },
    /// An input that must not be empty was empty, or a batch had ragged rows.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The adapter sites (a store's configuration) do not fit this model.
    #[error("adapter sites do not fit the model: {0}")]
    SitesMismatch(String),
    /// A KV cache was used with a different model or at the wrong position.
    #[error(
        "KV cache mismatch at layer {layer}: expected {expected} cached positions, found {found}"
    )]
    CacheMismatch {
        /// The layer whose cache disagrees.
        layer: usize,
        /// Positions the call assumed were cached.
        expected: usize,
        /// Positions actually cached.
        found: usize,
    },
    /// A differentiable forward was asked of weights that have no backward.
    #[error("not differentiable: {0}")]
    NotDifferentiable(String),
    /// Invalid sampling or generation options.
    #[error("invalid generation options: {0}")]
    InvalidOptions(String),
    /// The adapter hook failed at an adapted layer.
    #[error("adapter hook failed at layer {layer}: {source}")]
    Hook {
        /// The adapted layer.
        layer: usize,
        /// The hook's error.
        #[source]
        source: candle_core::Error,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed in {context}: {source}")]
    Candle {
        /// Where it failed (layer, stage).
        context: String,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
}

/// Result alias for the backbone module.
pub type ModelResult<T> = std::result::Result<T, ModelError>;

/// Attaches a location to candle errors at the module's public boundaries.
pub(crate) trait CandleContext<T> {
    /// Wraps the error with a lazily built context string.
    fn ctx<F: FnOnce() -> String>(self, context: F) -> ModelResult<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, context: F) -> ModelResult<T> {
        self.map_err(|source| ModelError::Candle {
            context: context(),
            source,
        })
    }
}
