//! A [`FileIo`] that injects faults, for the fault-injection tests (feature
//! `test-support`): a full disk after N bytes, EIO on write or read after N bytes, fsync
//! failures from the n-th sync on, and short writes.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::FileIo;

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Once this many bytes were written, writes fail with ENOSPC (the write that
    /// crosses the limit is cut short at it, as a filling disk does).
    NoSpaceAfter(u64),
    /// Once this many bytes were written, writes fail with EIO.
    WriteErrorAfter(u64),
    /// Once this many bytes were read, reads fail with EIO.
    ReadErrorAfter(u64),
    /// The sync with this number (0-based) and every later one fail with EIO.
    SyncFailsFrom(u64),
    /// No error, but every write writes at most this many bytes (at least one).
    ShortWrites(usize),
}

/// The operating system's I/O with one [`Fault`], on the files whose path contains
/// `only` (all files when `None`).
#[derive(Debug)]
pub struct FaultyIo {
    fault: Fault,
    only: Option<String>,
    written: AtomicU64,
    read: AtomicU64,
    syncs: AtomicU64,
    injected: AtomicU64,
}

impl FaultyIo {
    /// A faulting I/O on files whose path contains `only` (every file when `None`).
    pub fn new(fault: Fault, only: Option<&str>) -> Self {
        FaultyIo {
            fault,
            only: only.map(str::to_owned),
            written: AtomicU64::new(0),
            read: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// How many operations failed or were cut short by the fault so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn applies(&self, path: &Path) -> bool {
        self.only
            .as_deref()
            .is_none_or(|s| path.to_string_lossy().contains(s))
    }

    fn fail(&self, errno: i32) -> io::Error {
        self.injected.fetch_add(1, Ordering::Relaxed);
        io::Error::from_raw_os_error(errno)
    }

    /// How many bytes of a `len`-byte write may go through (`Err`: none, fail).
    fn allow_write(&self, path: &Path, len: usize) -> io::Result<usize> {
        if !self.applies(path) || len == 0 {
            return Ok(len);
        }
        let (limit, errno) = match self.fault {
            Fault::NoSpaceAfter(n) => (n, libc_enospc()),
            Fault::WriteErrorAfter(n) => (n, libc_eio()),
            Fault::ShortWrites(max) => {
                let n = len.min(max.max(1));
                if n < len {
                    self.injected.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(n);
            }
            _ => return Ok(len),
        };
        let done = self.written.load(Ordering::Relaxed);
        if done >= limit {
            return Err(self.fail(errno));
        }
        let n = (limit - done).min(len as u64) as usize;
        if n < len {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    }
}

// std exposes no errno constants; these are Linux's (the only platform the store
// supports, see ARCHITECTURE.md).
fn libc_enospc() -> i32 {
    28
}

fn libc_eio() -> i32 {
    5
}

impl FileIo for FaultyIo {
    fn write_at(&self, path: &Path, file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.allow_write(path, buf.len())?;
        let w = file.write_at(&buf[..n], offset)?;
        if self.applies(path) {
            self.written.fetch_add(w as u64, Ordering::Relaxed);
        }
        Ok(w)
    }

    fn write(&self, path: &Path, file: &mut File, buf: &[u8]) -> io::Result<usize> {
        use std::io::Write;
        let n = self.allow_write(path, buf.len())?;
        let w = file.write(&buf[..n])?;
        if self.applies(path) {
            self.written.fetch_add(w as u64, Ordering::Relaxed);
        }
        Ok(w)
    }

    fn read(&self, path: &Path, file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        if let (Fault::ReadErrorAfter(limit), true) = (self.fault, self.applies(path)) {
            let done = self.read.load(Ordering::Relaxed);
            if done >= limit && !buf.is_empty() {
                return Err(self.fail(libc_eio()));
            }
            let n = (limit - done).min(buf.len() as u64) as usize;
            let r = file.read(&mut buf[..n])?;
            self.read.fetch_add(r as u64, Ordering::Relaxed);
            return Ok(r);
        }
        file.read(buf)
    }

    fn sync(&self, path: &Path, file: &File, data_only: bool) -> io::Result<()> {
        if let (Fault::SyncFailsFrom(from), true) = (self.fault, self.applies(path)) {
            if self.syncs.fetch_add(1, Ordering::Relaxed) >= from {
                return Err(self.fail(libc_eio()));
            }
        }
        if data_only {
            file.sync_data()
        } else {
            file.sync_all()
        }
    }
}
