//! Errors of the index layer: searching, adding, saving, loading and checking an index.

use std::path::PathBuf;

use crate::fs::FsError;
use crate::store::StoreError;

/// Everything that can go wrong in the index layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The store the index follows failed (writes go store first, index second).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An I/O operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// usearch refused an operation.
    #[error("usearch {op} failed: {reason}")]
    Usearch {
        /// The operation (create, reserve, add, remove, search, save, load).
        op: &'static str,
        /// usearch's message.
        reason: String,
    },
    /// A saved index that cannot be used: a data file failing its checksum, metadata that
    /// does not parse or names a bad file, a key count that does not match.
    #[error("corrupt saved index: {what}")]
    Corrupt {
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
    /// A key or query of the wrong length.
    #[error("dimension mismatch for {what}: expected {expected}, found {found}")]
    DimMismatch {
        /// Which input.
        what: String,
        /// Expected dimension.
        expected: usize,
        /// Dimension found.
        found: usize,
    },
    /// NaN or infinity in a key or query.
    #[error("non-finite value in {what} at element {index}")]
    NonFinite {
        /// Which input.
        what: String,
        /// Position of the first bad element.
        index: usize,
    },
    /// An argument outside its valid range.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// Parameter name.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

impl IndexError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        IndexError::Corrupt { what: what.into() }
    }
}

impl From<FsError> for IndexError {
    fn from(e: FsError) -> Self {
        IndexError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Result of an index operation.
pub type IndexResult<T> = std::result::Result<T, IndexError>;
