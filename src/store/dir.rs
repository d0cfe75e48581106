//! The store directory: the one place that knows its layout and takes its lock.
//!
//! ```text
//! DIR/
//!   mome.lock     advisory lock (flock) held by the one writer
//!   meta/         RocksDB: the source of truth
//!   shards/       NNNNNNNN.shard: append-only weight records, memory-mapped
//!   index/        derived: the saved vector index (its files are the index's own)
//!   engine.json   the engine's selection parameters
//!   commit.hint   the writer's last (seq, next shard): tells readers whether to reload
//! ```

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{StoreError, StoreResult};
use super::shard::shard_file_name;

const META_DIR: &str = "meta";
const SHARDS_DIR: &str = "shards";
const INDEX_DIR: &str = "index";
const LOCK_FILE: &str = "mome.lock";
const ENGINE_FILE: &str = "engine.json";
const HINT_FILE: &str = "commit.hint";

/// How long a busy store lock is retried before [`StoreError::Locked`] (see [`StoreDir::lock`]).
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Paths of one store directory. Nothing else in the crate joins these names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreDir {
    root: PathBuf,
}

/// The writer lock of a store directory, held until dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl StoreDir {
    /// The layout of the store directory `root` (nothing is created or checked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StoreDir { root: root.into() }
    }

    /// The store directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata database (RocksDB).
    pub fn meta(&self) -> PathBuf {
        self.root.join(META_DIR)
    }

    /// The directory of shard files.
    pub fn shards(&self) -> PathBuf {
        self.root.join(SHARDS_DIR)
    }

    /// The file of shard `id`.
    pub fn shard_file(&self, id: u32) -> PathBuf {
        self.shards().join(shard_file_name(id))
    }

    /// The saved index's directory (its contents belong to the index).
    pub fn index(&self) -> PathBuf {
        self.root.join(INDEX_DIR)
    }

    /// The engine's parameter file.
    pub fn engine_file(&self) -> PathBuf {
        self.root.join(ENGINE_FILE)
    }

    /// The writer's commit hint for readers ([`CommitHint`]).
    pub fn hint_file(&self) -> PathBuf {
        self.root.join(HINT_FILE)
    }

    /// The advisory lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }

    /// Whether the directory holds (the start of) a store: its metadata directory exists.
    pub fn holds_store(&self) -> bool {
        self.meta().exists()
    }

    /// Takes the writer lock. A lock this process just released can still be held for a
    /// moment by a child forked by another thread (it shares the lock until its exec
    /// closes the descriptor), so a busy lock is retried for 0.5 s before it counts as
    /// another writer's ([`StoreError::Locked`]).
    pub(crate) fn lock(&self) -> StoreResult<DirLock> {
        let path = self.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked {
                        path: self.root.clone(),
                    })
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
            }
        }
    }
}

/// The writer's last commit as readers compare it with their view: the commit sequence
/// and the next shard number (compaction moves the latter, not the former). Written
/// after every commit and compaction, before either is acknowledged, and on open; never
/// synced (a hint: RocksDB is the truth). A reader reloads when the hint differs from
/// its view or cannot be read, so a stale or torn hint costs a reload, never a missed
/// commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CommitHint {
    pub(crate) seq: u64,
    pub(crate) next_shard: u32,
}

const HINT_LEN: usize = 16;

impl CommitHint {
    fn encode(&self) -> [u8; HINT_LEN] {
        let mut b = [0u8; HINT_LEN];
        b[..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..12].copy_from_slice(&self.next_shard.to_le_bytes());
        let crc = crc32c::crc32c(&b[..12]);
        b[12..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Writes the hint over `file` (opened by the writer). On failure the file is
    /// emptied, so that readers reload on every refresh rather than trust it.
    pub(crate) fn write(&self, file: &File) {
        use std::os::unix::fs::FileExt;
        if let Err(e) = file.write_all_at(&self.encode(), 0) {
            tracing::warn!(error = %e, "could not write the commit hint; readers will reload on every refresh");
            let _ = file.set_len(0);
        }
    }

    /// The hint in `path`, or `None` when it is missing, short or fails its checksum.
    pub(crate) fn read(path: &Path) -> Option<CommitHint> {
        let b = std::fs::read(path).ok()?;
        if b.len() != HINT_LEN {
            return None;
        }
        let crc = u32::from_le_bytes(b[12..16].try_into().ok()?);
        if crc32c::crc32c(&b[..12]) != crc {
            return None;
        }
        Some(CommitHint {
            seq: u64::from_le_bytes(b[..8].try_into().ok()?),
            next_shard: u32::from_le_bytes(b[8..12].try_into().ok()?),
        })
    }

    /// Opens (creating) the hint file for the writer.
    pub(crate) fn open_for_writer(dir: &StoreDir) -> StoreResult<File> {
        let path = dir.hint_file();
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))
    }
}
