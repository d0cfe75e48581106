//! File-system primitives shared by every layer that writes files: the one
//! [`atomic_write`] (temp file → fsync → rename → fsync of the directory) used for
//! every file the engine replaces, the one [`sync_dir`], and the one place the engine's
//! own file writes, reads and syncs go through ([`FileIo`]), so that tests can inject
//! faults under all of them.
//!
//! This is the bottom layer: it imports nothing from the crate.

#[cfg(feature = "test-support")]
mod faulty;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[cfg(feature = "test-support")]
pub use faulty::{Fault, FaultyIo};

/// The engine's own file I/O: positional and streaming writes, streaming reads and
/// syncs of shard files, index files, archives and every atomic write. Everything that
/// writes those files calls [`write_all_at`], [`sync`] or an [`IoFile`], which go
/// through the process's `FileIo` — the operating system's, unless a test installed a
/// faulting one ([`FaultyIo`], feature `test-support`). RocksDB's files, usearch's own
/// index writes and memory-mapped reads do not pass through it.
pub trait FileIo: Send + Sync {
    /// One positional write; may write less than `buf` (the caller continues).
    fn write_at(&self, path: &Path, file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
        let _ = path;
        file.write_at(buf, offset)
    }

    /// One streaming write; may write less than `buf`.
    fn write(&self, path: &Path, file: &mut File, buf: &[u8]) -> io::Result<usize> {
        let _ = path;
        file.write(buf)
    }

    /// One streaming read.
    fn read(&self, path: &Path, file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        let _ = path;
        file.read(buf)
    }

    /// `fdatasync` (`data_only`) or `fsync` of a file or directory.
    fn sync(&self, path: &Path, file: &File, data_only: bool) -> io::Result<()> {
        let _ = path;
        if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }
}

/// The operating system's file I/O.
struct OsIo;

impl FileIo for OsIo {}

/// The installed `FileIo`; `None` is the operating system's.
static IO: RwLock<Option<Arc<dyn FileIo>>> = RwLock::new(None);

fn with_io<T>(f: impl FnOnce(&dyn FileIo) -> T) -> T {
    // A poisoned lock still holds a valid value: the guarded data is a pointer.
    let g = IO.read().unwrap_or_else(|e| e.into_inner());
    match g.as_deref() {
        Some(io) => f(io),
        None => f(&OsIo),
    }
}

/// Installs `io` for every file operation of the engine in this process (`None`: the
/// operating system's again). For fault-injection tests; it is process-wide, so tests
/// that use it must not run beside others that write files.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub fn set_file_io(io: Option<Arc<dyn FileIo>>) {
    *IO.write().unwrap_or_else(|e| e.into_inner()) = io;
}

/// Writes all of `buf` at `offset` (continuing after short writes).
pub(crate) fn write_all_at(
    path: &Path,
    file: &File,
    mut buf: &[u8],
    mut offset: u64,
) -> io::Result<()> {
    with_io(|io| {
        while !buf.is_empty() {
            match io.write_at(path, file, buf, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

/// `fdatasync` (`data_only`) or `fsync` of an open file.
pub(crate) fn sync(path: &Path, file: &File, data_only: bool) -> io::Result<()> {
    with_io(|io| io.sync(path, file, data_only))
}

/// A file whose reads and writes go through the installed [`FileIo`] (for the buffered
/// streams of archives and the atomic writes).
pub(crate) struct IoFile {
    file: File,
    path: PathBuf,
}

impl IoFile {
    /// Creates (or truncates) `path` for writing.
    pub(crate) fn create(path: &Path) -> io::Result<IoFile> {
        Ok(IoFile {
            file: File::create(path)?,
            path: path.to_path_buf(),
        })
    }

    /// Opens `path` for reading.
    pub(crate) fn open(path: &Path) -> io::Result<IoFile> {
        Ok(IoFile {
            file: File::open(path)?,
            path: path.to_path_buf(),
        })
    }
}

impl Write for IoFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (path, file) = (&self.path, &mut self.file);
        with_io(|io| io.write(path, file, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for IoFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (path, file) = (&self.path, &mut self.file);
        with_io(|io| io.read(path, file, buf))
    }
}

/// Writes `bytes` as the whole content of `path` (created or truncated), unsynced.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    IoFile::create(path)?.write_all(bytes)
}

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
        .and_then(|d| sync(dir, &d, false))
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
            .and_then(|f| sync(&tmp, &f, false))
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
        write_file(tmp, bytes).map_err(|e| E::from(FsError::new(tmp, e)))
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
