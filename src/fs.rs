//! File-system primitives shared by every layer that writes files: the one
//! [`atomic_write`] (temp file → fsync → rename → fsync of the directory) used for
//! every file the engine replaces, and the one [`sync_dir`].
//!
//! This is the bottom layer: it imports nothing from the crate.

use std::fs::File;
use std::path::{Path, PathBuf};

/// An I/O failure on a path. Each layer's error type turns it into its own `Io`
/// variant (`From<FsError>`), so `?` works everywhere.
#[derive(Debug)]
pub(crate) struct FsError {
    pub(crate) path: PathBuf,
    pub(crate) source: std::io::Error,
}

impl FsError {
    pub(crate) fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FsError {
            path: path.into(),
            source,
        }
    }
}

/// fsyncs a directory, so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::new(dir, e))
}

/// The temporary name `atomic_write` writes `path` under: `<name>.partial`, beside it.
pub(crate) fn partial_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Replaces `path` atomically: `write` fills the temporary file it is given (its path,
/// beside `path`), which is then fsynced, renamed over `path`, and the directory fsynced.
/// A crash at any point leaves the old file or the new one, never a mix; a failed
/// `write` removes the temporary file and leaves `path` untouched.
pub(crate) fn atomic_write<E: From<FsError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = partial_path(path);
    let done = write(&tmp).and_then(|()| {
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| E::from(FsError::new(&tmp, e)))?;
        std::fs::rename(&tmp, path).map_err(|e| E::from(FsError::new(path, e)))
    });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(parent).map_err(E::from)
}

/// [`atomic_write`] of a byte string.
pub(crate) fn atomic_write_bytes<E: From<FsError>>(path: &Path, bytes: &[u8]) -> Result<(), E> {
    atomic_write(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| E::from(FsError::new(tmp, e)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.json");
        atomic_write_bytes::<FsError>(&p, b"one").expect("write");
        atomic_write_bytes::<FsError>(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert!(!partial_path(&p).exists());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f.json");
        atomic_write_bytes::<FsError>(&p, b"old").expect("write");
        let r = atomic_write::<FsError>(&p, |tmp| {
            std::fs::write(tmp, b"half").map_err(|e| FsError::new(tmp, e))?;
            Err(FsError::new(tmp, std::io::Error::other("writer failed")))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).expect("read"), b"old");
        assert!(!partial_path(&p).exists());
    }
}
