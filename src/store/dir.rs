//! The store directory: the one place that knows its layout and takes its lock.
//!
//! ```text
//! DIR/
//!   mome.lock     advisory lock (flock) held by the one writer
//!   meta/         RocksDB: the source of truth
//!   shards/       NNNNNNNN.shard: append-only weight records, memory-mapped
//!   index/        derived: the saved vector index (its files are the index's own)
//!   engine.json   the engine's selection parameters
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
