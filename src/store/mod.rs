//! Durable expert store: RocksDB metadata plus append-only, memory-mapped shard files.
//!
//! One concern per file:
//!
//! * `mod.rs` — the [`Store`] handle and its public API;
//! * [`dir`](StoreDir) — the directory layout and the writer lock;
//! * `recovery.rs` — creating a store and opening one (recovery from a crash);
//! * `write.rs` — the write path: group commit, shard appends, roll-over, poisoning;
//! * `read.rs` — the read path: snapshots, zero-copy handles, key scans for the index;
//! * `verify.rs` — the full consistency check; `scrub.rs` — background verification;
//!   `inspect.rs` — operator views and stats;
//! * `compact.rs` — the compaction policy and runner;
//! * `shard.rs`, `layout.rs`, `mmap.rs`, `meta.rs`, `loc_table.rs` — the on-disk formats.
//!
//! Write path (one group commit): records are appended to the active shard with
//! `pwrite`, the touched shard files are fsynced, then one RocksDB write batch with a
//! synced WAL commits locations, keys, provenance and shard lengths. Only after that
//! batch is durable is the insert acknowledged and made visible to readers. A crash
//! before the batch leaves bytes past the committed shard length, which recovery
//! truncates; so metadata never points at missing or torn bytes.
//!
//! Read path: readers load the current [`Snapshot`] (an `Arc`, no lock) and resolve an
//! id to a zero-copy [`ExpertRef`] into the shard's mapping. Snapshots keep the shards
//! they reference alive, so deletes and compaction never pull bytes from under a reader.

mod commit;
mod compact;
mod config;
mod dir;
mod error;
mod expert;
mod inspect;
mod layout;
mod loc_table;
mod meta;
mod mmap;
mod read;
mod reader;
mod recovery;
mod scrub;
mod shard;
mod usage;
mod verify;
mod write;

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use rocksdb::{WriteBatch, DB};

pub use compact::{plan_compaction, CompactionPlan, CompactionPolicy, CompactionReport};
pub use config::{StoreConfig, WeightDtype, DEFAULT_SHARD_SIZE, MIN_SHARD_SIZE};
pub use dir::StoreDir;
pub use error::{DbError, StoreError, StoreResult};
pub use expert::{AdapterPair, ExpertMeta, ExpertRef, NewExpert, Provenance};
pub use inspect::{OrphanFile, RecordInfo, RecordState, ShardStats, StoreStats};
pub use layout::RecordLayout;
pub use loc_table::Loc;
pub use meta::{ImportProgress, ShardState, STORE_FORMAT_VERSION};
pub use read::Snapshot;
pub use scrub::{BackgroundVerify, BackgroundVerifyPolicy, BackgroundVerifyStatus};
pub use shard::{read_header, RecordHeader, ShardHeader, SHARD_FORMAT_VERSION};
pub use usage::UsageAccumulator;
pub use verify::{Problem, VerifyReport};

pub(crate) use commit::ImportBatch;
use commit::{GroupCommit, Op};
use dir::{CommitHint, DirLock};
use expert::StoredMeta;
use meta::*;
use read::State;
pub(crate) use write::hex;
use write::Writer;

use crate::progress::Progress;

use error::StoreResult as Result;

/// The durable expert store. `Send + Sync`; share it through an `Arc`.
pub struct Store {
    dir: StoreDir,
    config: StoreConfig,
    layout: RecordLayout,
    /// The metadata database. The writer's never changes; a reader's refresh opens a
    /// newer one (read-only) and swaps it in before the view it loaded from it.
    db: ArcSwap<DB>,
    state: ArcSwap<State>,
    writer: Mutex<Writer>,
    group: GroupCommit,
    orphans: Mutex<Vec<OrphanFile>>,
    /// One compaction at a time (it allocates shards and switches metadata in steps).
    compacting: Mutex<()>,
    /// Where long operations report progress (the caller's; silent by default).
    progress: RwLock<Arc<dyn Progress>>,
    /// Declared last so that the writer's lock is released after the database closed.
    access: Access,
}

/// How a [`Store`] handle reaches its directory.
enum Access {
    /// The one writer: the advisory lock that keeps a second writer out, held for the
    /// lifetime of the store.
    Writer {
        _lock: DirLock,
        /// `commit.hint`, rewritten after every commit for readers.
        hint: std::fs::File,
    },
    /// A reader ([`Store::open_read_only`]): RocksDB opened read-only, a newer one on
    /// each refresh that finds the writer moved.
    Reader {
        /// One refresh at a time.
        refreshing: Mutex<()>,
    },
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir.root())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Creates a new store in `dir` (which must not exist or be empty).
    pub fn create(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        recovery::create_store(dir.as_ref(), config)
    }

    /// Opens an existing store with its persisted config.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        recovery::open_store(dir.as_ref(), None, None)
    }

    /// Opens an existing store, checking that its config equals `expected`.
    pub fn open_with(dir: impl AsRef<Path>, expected: &StoreConfig) -> Result<Store> {
        recovery::open_store(dir.as_ref(), Some(expected), None)
    }

    /// Opens an existing store for reading while another process (or none) writes it.
    ///
    /// Any number of readers may open a store the writer holds: no lock is taken, the
    /// writer's files are never modified, and the reader sees the store as of its last
    /// [`Store::refresh`] (a consistent commit: a group commit is one RocksDB batch).
    /// Writes fail with [`StoreError::ReadOnly`]. Usage counts are not recorded.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Store> {
        reader::open_read_only(dir.as_ref())
    }

    /// Whether this handle was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        matches!(self.access, Access::Reader { .. })
    }

    /// Follows the writer: a read-only store loads the writer's latest commit (and the
    /// result of any compaction since) and publishes it as the current snapshot; older
    /// snapshots stay valid. Returns whether the view moved. Cheap when nothing changed
    /// (one small file read); a change reopens the metadata read-only and reloads the
    /// location table, O(live experts). A writer's handle is always current: `Ok(false)`.
    pub fn refresh(&self) -> Result<bool> {
        match &self.access {
            Access::Writer { .. } => Ok(false),
            Access::Reader { refreshing, .. } => {
                let _one = refreshing.lock();
                reader::refresh(self)
            }
        }
    }

    /// Tells readers in other processes that the writer has moved to (`seq`,
    /// `next_shard`); before the commit is acknowledged, so that no acknowledged commit
    /// hides behind a stale hint.
    pub(crate) fn publish_hint(&self, seq: u64, next_shard: u32) {
        if let Access::Writer { hint, .. } = &self.access {
            CommitHint { seq, next_shard }.write(hint);
        }
    }

    /// The current metadata database.
    fn db(&self) -> Arc<DB> {
        self.db.load_full()
    }

    /// Refuses `operation` on a read-only handle (the engine asks it too, before work
    /// that ends in a write, such as training).
    pub(crate) fn check_writable(&self, operation: &'static str) -> Result<()> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly {
                path: self.dir.root().to_path_buf(),
                operation,
            });
        }
        Ok(())
    }

    /// Opens the store at `dir`, creating it with `config` if the directory does not
    /// hold a store yet; an existing store must match `config`.
    pub fn open_or_create(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref();
        if StoreDir::new(dir).holds_store() {
            Store::open_with(dir, &config)
        } else {
            Store::create(dir, config)
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        self.dir.root()
    }

    /// The layout of the store directory.
    pub fn store_dir(&self) -> &StoreDir {
        &self.dir
    }

    /// Hands in the receiver of progress of this store's long operations (verify,
    /// compaction) and of those of the layers above (index rebuild, archive export and
    /// import). Silent ([`NoProgress`](crate::progress::NoProgress)) until set.
    pub fn set_progress(&self, progress: Arc<dyn Progress>) {
        *self.progress.write() = progress;
    }

    /// The receiver of progress handed in with [`Store::set_progress`].
    pub fn progress(&self) -> Arc<dyn Progress> {
        self.progress.read().clone()
    }

    /// The persisted config.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The record layout.
    pub fn layout(&self) -> RecordLayout {
        self.layout
    }

    /// A consistent read view of the current state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state.load_full(),
        }
    }

    /// Number of live experts.
    pub fn len(&self) -> u64 {
        self.state.load().locs.len()
    }

    /// Whether the store holds no live expert.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Latest committed sequence number (one per group commit).
    pub fn seq(&self) -> u64 {
        self.state.load().seq
    }

    /// The id the next inserted expert will get; every id ever assigned is below it.
    pub fn next_id(&self) -> u64 {
        self.writer.lock().next_id
    }

    /// The live expert with this id, checksum-verified, as a zero-copy handle.
    pub fn get(&self, id: u64) -> Result<ExpertRef> {
        self.state.load().resolve(id)
    }

    /// Several experts from one consistent view; fails on the first unknown or corrupt one.
    pub fn get_many(&self, ids: &[u64]) -> Result<Vec<ExpertRef>> {
        let state = self.state.load();
        ids.iter().map(|&id| state.resolve(id)).collect()
    }

    /// Metadata (provenance, creation time, usage) of a live expert.
    pub fn meta(&self, id: u64) -> Result<ExpertMeta> {
        let db = self.db();
        if self.state.load().locs.get(id).is_none() {
            return Err(StoreError::UnknownExpert { id });
        }
        let raw = db
            .get_pinned_cf(cf(&db, CF_PROV)?, id_key(id))
            .map_err(|e| StoreError::db("reading provenance", e))?
            .ok_or_else(|| StoreError::CorruptMetadata {
                what: format!("expert {id} has no provenance record"),
            })?;
        let stored: StoredMeta = serde_json::from_slice(&raw)
            .map_err(|e| StoreError::corrupt(format!("provenance of expert {id}: {e}")))?;
        Ok(ExpertMeta {
            id,
            provenance: stored.provenance,
            created_at_ms: stored.created_at_ms,
            usage: self.usage(id)?,
        })
    }

    /// Persisted selection count of an expert (0 if never selected).
    pub fn usage(&self, id: u64) -> Result<u64> {
        let db = self.db();
        let count = db
            .get_pinned_cf(cf(&db, CF_USAGE)?, id_key(id))
            .map_err(|e| StoreError::db("reading usage", e))?
            .and_then(|v| decode_u64(&v))
            .unwrap_or(0);
        Ok(count)
    }

    /// Adds selection counts (not synced: counters are statistics, and losing the last
    /// few after a crash is acceptable where an fsync per lookup is not).
    pub fn add_usage(&self, counts: &[(u64, u64)]) -> Result<()> {
        self.check_writable("adding usage counts")?;
        let db = self.db();
        let cf = cf(&db, CF_USAGE)?;
        let mut batch = WriteBatch::default();
        for &(id, n) in counts {
            if n > 0 {
                batch.merge_cf(cf, id_key(id), n.to_le_bytes());
            }
        }
        db.write(batch)
            .map_err(|e| StoreError::db("adding usage counts", e))
    }

    /// Inserts one expert durably; returns its id.
    pub fn insert(&self, expert: NewExpert) -> Result<u64> {
        let ids = self.insert_batch(vec![expert])?;
        ids.first()
            .copied()
            .ok_or(StoreError::EmptyBatch { what: "insert" })
    }

    /// Inserts experts durably in one commit; returns their ids in order. All or none.
    pub fn insert_batch(&self, experts: Vec<NewExpert>) -> Result<Vec<u64>> {
        self.check_new("insert", "insert_batch", &experts)?;
        self.group
            .submit(Op::Insert(experts), |group| self.commit_group(group))
    }

    /// Inserts `experts` and deletes `delete` in one commit (all or none): a reader
    /// sees either the old experts or the new ones, never both or neither. Returns the
    /// new ids in order.
    pub fn replace_batch(&self, experts: Vec<NewExpert>, delete: &[u64]) -> Result<Vec<u64>> {
        self.check_new("replace", "replace_batch", &experts)?;
        self.group.submit(
            Op::Replace {
                insert: experts,
                delete: delete.to_vec(),
            },
            |group| self.commit_group(group),
        )
    }

    /// Inserts one batch of an archive import in one commit, together with the archive's
    /// progress marker: `batch.experts` are records `start..start + len` of the archive
    /// `batch.archive` (of `total` records), inserted with their original creation times
    /// and usage counts. Refused with [`StoreError::ImportConflict`] unless the marker
    /// stands at `start`, so a batch is never committed twice.
    pub(crate) fn import_batch(&self, batch: ImportBatch) -> Result<Vec<u64>> {
        self.check_new("import", "import_batch", &batch.experts)?;
        self.group
            .submit(Op::Import(batch), |group| self.commit_group(group))
    }

    /// What every write of new experts checks first: a writable handle (not a
    /// reader), a batch that is not empty, and each expert's shape.
    fn check_new(
        &self,
        operation: &'static str,
        what: &'static str,
        experts: &[NewExpert],
    ) -> Result<()> {
        self.check_writable(operation)?;
        if experts.is_empty() {
            return Err(StoreError::EmptyBatch { what });
        }
        for (i, e) in experts.iter().enumerate() {
            e.validate(&self.layout, i)?;
        }
        Ok(())
    }

    /// How far the import of the archive with this id got (`None`: never imported here).
    pub fn import_progress(&self, archive: &[u8; 16]) -> Result<Option<ImportProgress>> {
        self.import_mark(&self.db(), archive)
    }

    /// Deletes an expert (a tombstone; its bytes are reclaimed by compaction).
    pub fn delete(&self, id: u64) -> Result<()> {
        self.delete_batch(&[id]).map(|_| ())
    }

    /// Deletes several experts in one commit. All or none: an unknown id fails the call.
    pub fn delete_batch(&self, ids: &[u64]) -> Result<()> {
        self.check_writable("delete")?;
        if ids.is_empty() {
            return Err(StoreError::EmptyBatch {
                what: "delete_batch",
            });
        }
        self.group
            .submit(Op::Delete(ids.to_vec()), |group| self.commit_group(group))
            .map(|_| ())
    }

    /// Flushes RocksDB memtables so reopening replays little WAL. Acknowledged writes are
    /// already durable without this.
    pub fn flush(&self) -> Result<()> {
        let db = self.db();
        if self.is_read_only() {
            // A reader has nothing of its own to flush.
            return Ok(());
        }
        for name in ALL_CFS {
            db.flush_cf(cf(&db, name)?)
                .map_err(|e| StoreError::db("flushing", e))?;
        }
        Ok(())
    }

    fn shard_path(&self, id: u32) -> std::path::PathBuf {
        self.dir.shard_file(id)
    }
}
