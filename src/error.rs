//! The crate's error type.
//!
//! One enum for the whole crate so that a caller of the engine can match on what went
//! wrong without knowing which layer found it. Every variant says *what* and *where*:
//! expert id, shard, offset, expected versus found dimensions.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// RocksDB reported an error.
    #[error("RocksDB error while {context}: {source}")]
    RocksDb {
        /// What the store was doing.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: rocksdb::Error,
    },
    /// Another process (or another handle in this process) holds the store open for writing.
    #[error("store {path} is locked by another writer (close the other process first)")]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// `Store::create` on a directory that already holds something.
    #[error("cannot create store: {path} already exists and is not empty")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// `Store::open` on a directory that is not a mome store.
    #[error("{path} is not a mome store: {reason}")]
    NotAStore {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A config passed to `open_with` differs from the one the store was created with.
    #[error("store config mismatch in `{field}`: the store has {stored}, the caller gave {given}")]
    ConfigMismatch {
        /// Name of the differing field.
        field: &'static str,
        /// The persisted value.
        stored: String,
        /// The value given by the caller.
        given: String,
    },
    /// A config that cannot describe a store.
    #[error("invalid store config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A file or store written by a newer (or unknown) format version.
    #[error("{what} has format version {found}; this build supports up to {supported}")]
    UnsupportedVersion {
        /// What carries the version (store, shard file, record).
        what: String,
        /// The version found on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An input vector or matrix has the wrong length.
    #[error("dimension mismatch for {what}: expected {expected}, found {found}")]
    DimMismatch {
        /// Which input (e.g. "expert 3 in batch: layer 1 A").
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
    /// No live expert has this id.
    #[error("unknown expert id {id}")]
    UnknownExpert {
        /// The id asked for.
        id: u64,
    },
    /// A file that is not a mome shard file.
    #[error("{path} is not a mome shard file: {reason}")]
    NotAShard {
        /// The file.
        path: PathBuf,
        /// What failed (magic, header checksum, geometry).
        reason: String,
    },
    /// A weight record failed its checksum or structural check.
    #[error("corrupt record for expert {id} in shard {shard} at offset {offset}: {reason}")]
    CorruptRecord {
        /// The expert the metadata says lives there.
        id: u64,
        /// Shard id.
        shard: u32,
        /// Byte offset of the record in the shard file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// A shard file is shorter than its committed metadata says.
    #[error(
        "shard {shard} ({path}) is truncated: metadata commits {expected} bytes, file has {found}"
    )]
    TruncatedShard {
        /// Shard id.
        shard: u32,
        /// The file.
        path: PathBuf,
        /// Committed length.
        expected: u64,
        /// Actual file length.
        found: u64,
    },
    /// Metadata that cannot be decoded or contradicts itself.
    #[error("corrupt store metadata: {what}")]
    CorruptMetadata {
        /// What is wrong, with the key involved.
        what: String,
    },
    /// An earlier write failed part-way; the store refuses further writes until reopened.
    #[error("store is read-only after a failed write ({reason}); reopen it to recover")]
    Poisoned {
        /// The failure that poisoned the writer.
        reason: String,
    },
    /// The fused apply operator refused its inputs or failed.
    #[error(transparent)]
    Kernel(#[from] crate::kernels::KernelError),
    /// Stage-2 selection refused its parameters or inputs.
    #[error(transparent)]
    Select(#[from] crate::select::SelectError),
    /// The backbone failed (loading, tokenizing, forward, generation).
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// No shard with this id is part of the store's committed metadata.
    #[error("unknown shard {shard} (not in the store's metadata)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
    },
    /// An expert archive that is truncated, malformed or fails a checksum. Nothing was
    /// written to the store.
    #[error("archive {path} is malformed at byte {offset}: {reason}")]
    CorruptArchive {
        /// The archive file.
        path: PathBuf,
        /// Byte offset where reading failed.
        offset: u64,
        /// What is wrong (record number, expected versus found).
        reason: String,
    },
    /// An archive whose experts do not fit the store (another shape or backbone).
    #[error(
        "archive {path} does not fit this store: `{field}` is {archive} in the archive but {store} in the store"
    )]
    IncompatibleArchive {
        /// The archive file.
        path: PathBuf,
        /// The differing config field.
        field: &'static str,
        /// Its value in the archive.
        archive: String,
        /// Its value in the store.
        store: String,
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

    pub(crate) fn rocks(context: &'static str, source: rocksdb::Error) -> Self {
        Error::RocksDb { context, source }
    }
}
