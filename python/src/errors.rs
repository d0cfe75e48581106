//! Rust errors → the Python hierarchy of `mome._errors`.
//!
//! Work runs without the GIL, so it returns a [`Fail`] (which is `Send`); the
//! conversion to a Python exception happens once the GIL is held again. The class is
//! chosen from the innermost typed error (an index or archive error that wraps a store
//! error is classified by the store error), and its attributes carry the fields the
//! Rust error names (expert id, shard, offset, config field).

use std::path::Path;

use mome::{ArchiveError, IndexError, ModelError, StoreError};
use pyo3::prelude::*;

/// A failure of work done without the GIL.
#[derive(Debug)]
pub enum Fail {
    /// An error of the Rust core.
    Mome(mome::Error),
    /// A Python exception (raised by a callback, or made before the work started).
    Py(PyErr),
    /// The engine was closed.
    Closed,
    /// The engine was used from its own memorize callback.
    Busy,
}

pub type Res<T> = std::result::Result<T, Fail>;

macro_rules! from_layer {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Mome(e.into())
            }
        }
    )*};
}
from_layer!(StoreError, IndexError, ArchiveError, ModelError);

impl From<mome::Error> for Fail {
    fn from(e: mome::Error) -> Self {
        Fail::Mome(e)
    }
}

impl From<PyErr> for Fail {
    fn from(e: PyErr) -> Self {
        Fail::Py(e)
    }
}

impl From<Fail> for PyErr {
    fn from(f: Fail) -> Self {
        Python::attach(|py| match f {
            Fail::Py(e) => e,
            Fail::Closed => raise(py, "ClosedError", "the engine is closed", &[]),
            Fail::Busy => raise(
                py,
                "BusyError",
                "the engine is memorizing: its progress callback cannot use it",
                &[],
            ),
            Fail::Mome(e) => {
                let (class, attrs) = classify(&e);
                raise(py, class, &e.to_string(), &attrs)
            }
        })
    }
}

/// An attribute value of an exception.
pub enum Attr {
    Int(u64),
    Str(String),
}

fn path_attr(p: &Path) -> Attr {
    Attr::Str(p.display().to_string())
}

type Attrs = Vec<(&'static str, Attr)>;

/// The exception class (a name in `mome._errors`) and attributes for an error.
fn classify(e: &mome::Error) -> (&'static str, Attrs) {
    use mome::Error as E;
    match e {
        E::Store(s) => store(s),
        E::Index(i) => index(i),
        E::Archive(a) => archive(a),
        E::Model(_) => ("ModelError", vec![]),
        E::Io { path, .. } => ("StoreIOError", vec![("path", path_attr(path))]),
        E::CorruptMetadata { .. } => ("CorruptionError", vec![]),
        E::BackboneMismatch {
            path,
            stored,
            given,
        } => (
            "ConfigMismatchError",
            vec![
                ("field", Attr::Str("backbone_digest".into())),
                ("stored", Attr::Str(stored.clone())),
                ("given", Attr::Str(given.clone())),
                ("path", path_attr(path)),
            ],
        ),
        E::RuleMismatch {
            path,
            found,
            expected,
        } => (
            "ConfigMismatchError",
            vec![
                ("field", Attr::Str("query".into())),
                ("stored", Attr::Str(found.clone())),
                ("given", Attr::Str(expected.clone())),
                ("path", path_attr(path)),
            ],
        ),
        E::InvalidConfig { .. }
        | E::DimMismatch { .. }
        | E::NonFinite { .. }
        | E::EmptyBatch { .. }
        | E::InvalidArgument { .. }
        | E::InvalidFact { .. } => ("InvalidInputError", vec![]),
        _ => ("Error", vec![]),
    }
}

fn store(e: &StoreError) -> (&'static str, Attrs) {
    use StoreError as S;
    match e {
        S::Locked { path } => ("LockedError", vec![("path", path_attr(path))]),
        S::CorruptRecord {
            id, shard, offset, ..
        } => (
            "CorruptionError",
            vec![
                ("expert_id", Attr::Int(*id)),
                ("shard", Attr::Int(u64::from(*shard))),
                ("offset", Attr::Int(*offset)),
            ],
        ),
        S::TruncatedShard { shard, path, .. } => (
            "CorruptionError",
            vec![
                ("shard", Attr::Int(u64::from(*shard))),
                ("path", path_attr(path)),
            ],
        ),
        S::NotAShard { path, .. } => ("CorruptionError", vec![("path", path_attr(path))]),
        S::CorruptMetadata { .. } => ("CorruptionError", vec![]),
        S::ConfigMismatch {
            field,
            stored,
            given,
        } => (
            "ConfigMismatchError",
            vec![
                ("field", Attr::Str((*field).into())),
                ("stored", Attr::Str(stored.clone())),
                ("given", Attr::Str(given.clone())),
            ],
        ),
        S::UnknownExpert { id } => ("NotFoundError", vec![("expert_id", Attr::Int(*id))]),
        S::UnknownShard { .. } => ("NotFoundError", vec![]),
        S::NotAStore { path, .. } => ("NotAStoreError", vec![("path", path_attr(path))]),
        S::AlreadyExists { path } => ("AlreadyExistsError", vec![("path", path_attr(path))]),
        S::Io { path, .. } => ("StoreIOError", vec![("path", path_attr(path))]),
        S::Poisoned { .. } => ("PoisonedError", vec![]),
        S::ReadOnly { path, operation } => (
            "ReadOnlyError",
            vec![
                ("path", path_attr(path)),
                ("operation", Attr::Str((*operation).into())),
            ],
        ),
        S::InvalidConfig { .. }
        | S::DimMismatch { .. }
        | S::NonFinite { .. }
        | S::EmptyBatch { .. }
        | S::InvalidArgument { .. } => ("InvalidInputError", vec![]),
        S::UnsupportedVersion { .. } => ("ConfigMismatchError", vec![]),
        _ => ("Error", vec![]),
    }
}

fn index(e: &IndexError) -> (&'static str, Attrs) {
    use IndexError as I;
    match e {
        I::Store(s) => store(s),
        I::Io { path, .. } => ("StoreIOError", vec![("path", path_attr(path))]),
        I::Corrupt { .. } => ("CorruptionError", vec![]),
        I::DimMismatch { .. } | I::NonFinite { .. } | I::InvalidArgument { .. } => {
            ("InvalidInputError", vec![])
        }
        _ => ("Error", vec![]),
    }
}

fn archive(e: &ArchiveError) -> (&'static str, Attrs) {
    use ArchiveError as A;
    match e {
        A::Store(s) => store(s),
        A::Index(i) => index(i),
        A::Io { path, .. } => ("StoreIOError", vec![("path", path_attr(path))]),
        A::Corrupt { path, offset, .. } => (
            "CorruptionError",
            vec![("path", path_attr(path)), ("offset", Attr::Int(*offset))],
        ),
        A::Incompatible {
            path,
            field,
            archive,
            store,
        } => (
            "ConfigMismatchError",
            vec![
                ("field", Attr::Str((*field).into())),
                ("stored", Attr::Str(store.clone())),
                ("given", Attr::Str(archive.clone())),
                ("path", path_attr(path)),
            ],
        ),
        A::UnsupportedVersion { .. } => ("ConfigMismatchError", vec![]),
        _ => ("Error", vec![]),
    }
}

/// An instance of `mome._errors.<class>` with the message and attributes, as a PyErr.
pub fn raise(py: Python<'_>, class: &str, message: &str, attrs: &[(&'static str, Attr)]) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let cls = py.import("mome._errors")?.getattr(class)?;
        let exc = cls.call1((message,))?;
        for (name, value) in attrs {
            match value {
                Attr::Int(v) => exc.setattr(*name, *v)?,
                Attr::Str(v) => exc.setattr(*name, v.as_str())?,
            }
        }
        Ok(PyErr::from_value(exc))
    })();
    // The package's own module is missing only in a broken install: the message still
    // reaches the caller.
    made.unwrap_or_else(|e| e)
}

/// A `mome.InvalidInputError` naming the argument.
pub fn invalid(py: Python<'_>, arg: &str, reason: impl std::fmt::Display) -> PyErr {
    raise(
        py,
        "InvalidInputError",
        &format!("invalid argument `{arg}`: {reason}"),
        &[],
    )
}
