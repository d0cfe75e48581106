//! The crate's umbrella error.
//!
//! Each layer has its own error type (redb style): [`StoreError`] for the store,
//! [`IndexError`] for the index, [`ArchiveError`] for archives, [`KernelError`] for the
//! fused operator, [`SelectError`] for selection, [`ModelError`] for the backbone. The
//! functions of a layer return its type; [`Error`] wraps them all (`From`), so that the
//! engine — and a caller who does not care which layer failed — uses one type with `?`.
//! Every variant says *what* and *where*: expert id, shard, offset, expected versus
//! found dimensions.

use std::path::PathBuf;

use crate::archive::ArchiveError;
use crate::index::IndexError;
use crate::kernels::KernelError;
use crate::model::ModelError;
use crate::select::SelectError;
use crate::store::StoreError;

/// Result alias used by the engine, selection and tuning.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mome: a layer's error, or one of the engine's own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed (open, read, write, verify, compact).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The index failed (search, add, save, load).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Exporting, checking or importing an archive failed.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The fused apply operator refused its inputs or failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// Stage-2 selection refused its parameters or inputs.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// The backbone failed (loading, tokenizing, forward, generation).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// An I/O operation on one of the engine's own files failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// One of the engine's own files (`engine.json`) cannot be decoded or contradicts
    /// the build.
    #[error("corrupt store metadata: {what}")]
    CorruptMetadata {
        /// What is wrong, with the file involved.
        what: String,
    },
    /// A value could not be encoded for writing (nothing was written).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's message.
        reason: String,
    },
    /// A store config the engine cannot serve.
    #[error("invalid store config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// An input vector or matrix has the wrong length.
    #[error("dimension mismatch for {what}: expected {expected}, found {found}")]
    DimMismatch {
        /// Which input.
        what: String,
        /// Expected number of elements (or dimension).
        expected: usize,
        /// Number found.
        found: usize,
    },
    /// NaN or infinity in an input.
    #[error("non-finite value in {what} at element {index}")]
    NonFinite {
        /// Which input.
        what: String,
        /// Position of the first bad element.
        index: usize,
    },
    /// A batch operation was given nothing to do.
    #[error("empty batch: {what} needs at least one item")]
    EmptyBatch {
        /// The operation.
        what: &'static str,
    },
    /// Memory tuning failed (not a fact that did not converge: that is reported, not
    /// an error).
    #[error("memory tuning failed: {reason}")]
    Training {
        /// What went wrong.
        reason: String,
    },
    /// A store created for a different backbone than the one given.
    #[error("store {path} was built for backbone {stored}, but the model given is {given}")]
    BackboneMismatch {
        /// The store directory.
        path: PathBuf,
        /// Digest recorded in the store.
        stored: String,
        /// Digest of the model given.
        given: String,
    },
    /// A request parameter outside its valid range.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Parameter name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A fact that cannot be memorized (nothing of the call was stored).
    #[error("fact {index} ({prompt:?}): {reason}")]
    InvalidFact {
        /// Position of the fact in the call (0-based).
        index: usize,
        /// Its prompt.
        prompt: String,
        /// What is wrong.
        reason: String,
    },
    /// A store written for another selection rule.
    #[error("{path} was written with the selection rule `{found}`; this build uses `{expected}`: run `mome migrate --db {path} --out NEW_DIR` to re-key its facts for the new rule")]
    RuleMismatch {
        /// The store directory.
        path: PathBuf,
        /// The rule recorded in the store.
        found: String,
        /// The rule of this build.
        expected: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<crate::fs::FsError> for Error {
    fn from(e: crate::fs::FsError) -> Self {
        Error::io(e.path, e.source)
    }
}
