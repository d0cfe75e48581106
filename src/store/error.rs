//! Errors of the store: opening, reading, writing, verifying and compacting it.
//!
//! Every variant says *what* and *where*: expert id, shard, offset, expected versus
//! found. RocksDB's own error is wrapped ([`DbError`]), not exposed, so that the pinned
//! RocksDB crate is not part of mome's public API.

use std::path::PathBuf;

use crate::fs::FsError;

/// An error reported by the metadata database (RocksDB). Its text is RocksDB's message.
#[derive(Debug)]
pub struct DbError(rocksdb::Error);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DbError {}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The metadata database reported an error.
    #[error("RocksDB error while {context}: {source}")]
    Db {
        /// What the store was doing.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: DbError,
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
    /// A store or shard file written by a newer (or unknown) format version.
    #[error("{what} has format version {found}; this build supports up to {supported}")]
    UnsupportedVersion {
        /// What carries the version (store, shard file).
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
    /// No shard with this id is part of the store's committed metadata.
    #[error("unknown shard {shard} (not in the store's metadata)")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
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
    /// A value could not be encoded for writing (nothing was written).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded (config, provenance of expert N).
        what: String,
        /// The encoder's message.
        reason: String,
    },
    /// An earlier write failed part-way; the store refuses further writes until reopened.
    #[error("store is read-only after a failed write ({reason}); reopen it to recover")]
    Poisoned {
        /// The failure that poisoned the writer.
        reason: String,
    },
    /// A write (insert, delete, compaction, usage counts) through a store opened with
    /// [`Store::open_read_only`](super::Store::open_read_only).
    #[error(
        "store {path} is open read-only: {operation} needs the writer (open it with Store::open)"
    )]
    ReadOnly {
        /// The store directory.
        path: PathBuf,
        /// The refused operation.
        operation: &'static str,
    },
    /// A reader could not load a consistent view: the writer kept changing the files
    /// the metadata named (compaction removing shards) through every retry.
    #[error(
        "store {path}: no consistent view after {tries} tries while the writer changed it: {last}"
    )]
    NoConsistentView {
        /// The store directory.
        path: PathBuf,
        /// How many times the reader caught up and tried.
        tries: u32,
        /// The last failure.
        last: Box<StoreError>,
    },
    /// An argument outside its valid range (compaction policy, plan).
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Parameter name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// An import batch that does not continue where the archive's committed import
    /// stands (another import of the same archive committed first). Nothing was written.
    #[error(
        "import of archive {archive} is at record {found}, but this batch starts at record {expected}; \
         another import of the same archive ran concurrently — rerun the import to finish it"
    )]
    ImportConflict {
        /// The archive's id (hex).
        archive: String,
        /// Where the batch starts.
        expected: u64,
        /// Records the store has committed for this archive.
        found: u64,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn db(context: &'static str, source: rocksdb::Error) -> Self {
        StoreError::Db {
            context,
            source: DbError(source),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        StoreError::CorruptMetadata { what: what.into() }
    }

    pub(crate) fn encode(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        StoreError::Encode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<FsError> for StoreError {
    fn from(e: FsError) -> Self {
        StoreError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Result of a store operation.
pub type StoreResult<T> = std::result::Result<T, StoreError>;
