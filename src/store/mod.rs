//! Durable expert store: RocksDB metadata plus append-only, memory-mapped shard files.
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
mod expert;
mod inspect;
mod layout;
mod loc_table;
mod meta;
mod mmap;
mod shard;
mod usage;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use half::f16;
use parking_lot::Mutex;
use rocksdb::{WriteBatch, WriteOptions, DB};

pub use compact::{plan_compaction, CompactionPlan, CompactionPolicy, CompactionReport};
pub use config::{StoreConfig, WeightDtype, DEFAULT_SHARD_SIZE, MIN_SHARD_SIZE};
pub use expert::{AdapterPair, ExpertMeta, ExpertRef, NewExpert, Provenance};
pub use inspect::{RecordInfo, RecordState};
pub use layout::RecordLayout;
pub use loc_table::Loc;
pub use meta::{ShardState, STORE_FORMAT_VERSION};
pub use shard::{read_header, RecordHeader, ShardHeader, SHARD_FORMAT_VERSION};
pub use usage::UsageAccumulator;

use commit::{GroupCommit, Op, Slot};
use expert::StoredMeta;
use loc_table::LocTable;
use meta::*;
use shard::{create_shard_file, encode_record, parse_shard_file_name, shard_file_name, Shard};

use crate::error::{Error, Result};

const META_DIR: &str = "meta";
const SHARDS_DIR: &str = "shards";
const LOCK_FILE: &str = "mome.lock";

/// An immutable, consistent view of the store at one commit.
#[derive(Clone)]
struct State {
    locs: LocTable,
    shards: Arc<BTreeMap<u32, Arc<Shard>>>,
    seq: u64,
}

impl State {
    /// Where a live expert's record lies: its location and the open shard holding it.
    fn place(&self, id: u64) -> Result<(Loc, &Arc<Shard>)> {
        let loc = self.locs.get(id).ok_or(Error::UnknownExpert { id })?;
        let shard = self
            .shards
            .get(&loc.shard)
            .ok_or_else(|| Error::CorruptMetadata {
                what: format!(
                    "expert {id} points at shard {} which is not open",
                    loc.shard
                ),
            })?;
        Ok((loc, shard))
    }

    fn resolve(&self, id: u64) -> Result<ExpertRef> {
        let (loc, shard) = self.place(id)?;
        shard.verify_slot(loc.slot, id)?;
        Ok(ExpertRef {
            id,
            shard: shard.clone(),
            slot: loc.slot,
        })
    }
}

/// A consistent read view: the experts that were live at one commit. It keeps the shard
/// files it references mapped and on disk until dropped.
#[derive(Clone)]
pub struct Snapshot {
    state: Arc<State>,
}

impl Snapshot {
    /// The expert with this id as of the snapshot, checksum-verified.
    pub fn get(&self, id: u64) -> Result<ExpertRef> {
        self.state.resolve(id)
    }

    /// Several experts; fails on the first unknown or corrupt one.
    pub fn get_many(&self, ids: &[u64]) -> Result<Vec<ExpertRef>> {
        ids.iter().map(|&id| self.state.resolve(id)).collect()
    }

    /// Whether `id` is live in this snapshot.
    pub fn contains(&self, id: u64) -> bool {
        self.state.locs.get(id).is_some()
    }

    /// Location of a live expert's record.
    pub fn location(&self, id: u64) -> Option<Loc> {
        self.state.locs.get(id)
    }

    /// Number of live experts.
    pub fn len(&self) -> u64 {
        self.state.locs.len()
    }

    /// Whether there are no live experts.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commit sequence this snapshot reflects.
    pub fn seq(&self) -> u64 {
        self.state.seq
    }

    /// Live ids in ascending order.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.state.locs.iter().map(|(id, _)| id)
    }

    /// Live experts in ascending id order, each checksum-verified.
    pub fn iter(&self) -> impl Iterator<Item = Result<ExpertRef>> + '_ {
        self.state.locs.iter().map(|(id, _)| self.state.resolve(id))
    }
}

struct ActiveShard {
    id: u32,
    file: File,
    used: u32,
    capacity: u32,
}

struct Writer {
    active: Option<ActiveShard>,
    next_id: u64,
    seq: u64,
    next_shard: u32,
    buf: Vec<u8>,
    poisoned: Option<String>,
}

/// Per-shard figures for stats and the compaction policy.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ShardStats {
    /// Shard id.
    pub id: u32,
    /// Active or sealed.
    pub state: ShardState,
    /// Committed record slots.
    pub used_slots: u32,
    /// Slots the shard can hold.
    pub capacity_slots: u32,
    /// Slots holding live experts.
    pub live: u32,
    /// Slots holding deleted (tombstoned) experts.
    pub dead: u32,
    /// File bytes committed.
    pub bytes: u64,
}

impl ShardStats {
    /// Fraction of committed slots that are live (1.0 for an empty shard).
    pub fn live_fraction(&self) -> f64 {
        if self.used_slots == 0 {
            1.0
        } else {
            self.live as f64 / self.used_slots as f64
        }
    }
}

/// A shard file on disk that no committed metadata references (left by a crash during
/// roll-over, compaction or import); compaction deletes it.
#[derive(Clone, Debug, PartialEq)]
pub struct OrphanFile {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// Store-wide figures.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreStats {
    /// Live experts.
    pub live: u64,
    /// Deleted experts whose bytes are not reclaimed yet.
    pub deleted: u64,
    /// Tombstones whose bytes compaction already reclaimed, kept because a saved index
    /// may not have seen the delete yet.
    pub reclaimed_tombstones: u64,
    /// Bytes per record.
    pub record_size: usize,
    /// Each shard.
    pub shards: Vec<ShardStats>,
    /// Committed slots holding neither a live nor a deleted expert.
    pub orphan_slots: u64,
    /// Unreferenced shard files.
    pub orphan_files: Vec<OrphanFile>,
    /// Latest commit sequence.
    pub seq: u64,
}

/// What `verify` found wrong with one record or piece of metadata.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Problem {
    /// Expert concerned, when known.
    pub id: Option<u64>,
    /// Shard concerned.
    pub shard: Option<u32>,
    /// Byte offset in the shard.
    pub offset: Option<u64>,
    /// What is wrong.
    pub detail: String,
}

/// Result of a full verification pass.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Records whose checksum was computed.
    pub records_checked: u64,
    /// Everything found wrong.
    pub problems: Vec<Problem>,
}

/// The durable expert store. `Send + Sync`; share it through an `Arc`.
pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    layout: RecordLayout,
    db: DB,
    state: ArcSwap<State>,
    writer: Mutex<Writer>,
    group: GroupCommit,
    orphans: Mutex<Vec<OrphanFile>>,
    /// One compaction at a time (it allocates shards and switches metadata in steps).
    compacting: Mutex<()>,
    // Held for the lifetime of the store: the advisory lock that keeps a second writer out.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    // A lock this process just released can still be held for a moment by a child
    // forked by another thread (it shares the lock until its exec closes the
    // descriptor), so a busy lock is retried briefly before it counts as another
    // writer's.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
}

/// How long a busy store lock is retried before `Error::Locked` (see `take_lock`).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Store {
    /// Creates a new store in `dir` (which must not exist or be empty).
    pub fn create(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref();
        config.validate()?;
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            if entries.next().is_some() {
                return Err(Error::AlreadyExists {
                    path: dir.to_path_buf(),
                });
            }
        }
        std::fs::create_dir_all(dir.join(SHARDS_DIR)).map_err(|e| Error::io(dir, e))?;
        let lock = take_lock(dir)?;
        let db = DB::open_cf_descriptors(&db_options(), dir.join(META_DIR), cf_descriptors())
            .map_err(|e| Error::rocks("creating the metadata database", e))?;
        let cfg_json = serde_json::to_vec(&config).map_err(|e| Error::CorruptMetadata {
            what: format!("cannot encode config: {e}"),
        })?;
        let cf = cf(&db, CF_META)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, K_CONFIG, cfg_json);
        batch.put_cf(cf, K_NEXT_ID, 1u64.to_le_bytes());
        batch.put_cf(cf, K_SEQ, 0u64.to_le_bytes());
        batch.put_cf(cf, K_NEXT_SHARD, 1u32.to_le_bytes());
        // The format version goes last in the same atomic batch: a directory with a
        // version key is a complete store.
        batch.put_cf(cf, K_FORMAT, STORE_FORMAT_VERSION.to_le_bytes());
        db.write_opt(batch, &synced())
            .map_err(|e| Error::rocks("writing the initial metadata", e))?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent() {
            if !parent.as_os_str().is_empty() {
                sync_dir(parent)?;
            }
        }
        tracing::info!(dir = %dir.display(), ?config, "created store");
        drop(db);
        // The lock is handed on, not dropped and taken again: a fork by another thread
        // in between (spawning a child process) would hold a copy of it until that
        // child's exec, and the second take would fail with `Locked`.
        open_store(dir, None, Some(lock))
    }

    /// Opens an existing store with its persisted config.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        open_store(dir.as_ref(), None, None)
    }

    /// Opens an existing store, checking that its config equals `expected`.
    pub fn open_with(dir: impl AsRef<Path>, expected: &StoreConfig) -> Result<Store> {
        open_store(dir.as_ref(), Some(expected), None)
    }

    /// Opens the store at `dir`, creating it with `config` if the directory does not
    /// hold a store yet; an existing store must match `config`.
    pub fn open_or_create(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref();
        if dir.join(META_DIR).exists() {
            Store::open_with(dir, &config)
        } else {
            Store::create(dir, config)
        }
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        if self.state.load().locs.get(id).is_none() {
            return Err(Error::UnknownExpert { id });
        }
        let raw = self
            .db
            .get_pinned_cf(cf(&self.db, CF_PROV)?, id_key(id))
            .map_err(|e| Error::rocks("reading provenance", e))?
            .ok_or_else(|| Error::CorruptMetadata {
                what: format!("expert {id} has no provenance record"),
            })?;
        let stored: StoredMeta =
            serde_json::from_slice(&raw).map_err(|e| Error::CorruptMetadata {
                what: format!("provenance of expert {id}: {e}"),
            })?;
        Ok(ExpertMeta {
            id,
            provenance: stored.provenance,
            created_at_ms: stored.created_at_ms,
            usage: self.usage(id)?,
        })
    }

    /// Persisted selection count of an expert (0 if never selected).
    pub fn usage(&self, id: u64) -> Result<u64> {
        Ok(self
            .db
            .get_pinned_cf(cf(&self.db, CF_USAGE)?, id_key(id))
            .map_err(|e| Error::rocks("reading usage", e))?
            .and_then(|v| decode_u64(&v))
            .unwrap_or(0))
    }

    /// Adds selection counts (not synced: counters are statistics, and losing the last
    /// few after a crash is acceptable where an fsync per lookup is not).
    pub fn add_usage(&self, counts: &[(u64, u64)]) -> Result<()> {
        let cf = cf(&self.db, CF_USAGE)?;
        let mut batch = WriteBatch::default();
        for &(id, n) in counts {
            if n > 0 {
                batch.merge_cf(cf, id_key(id), n.to_le_bytes());
            }
        }
        self.db
            .write(batch)
            .map_err(|e| Error::rocks("adding usage counts", e))
    }

    /// Inserts one expert durably; returns its id.
    pub fn insert(&self, expert: NewExpert) -> Result<u64> {
        let ids = self.insert_batch(vec![expert])?;
        ids.first()
            .copied()
            .ok_or(Error::EmptyBatch { what: "insert" })
    }

    /// Inserts experts durably in one commit; returns their ids in order. All or none.
    pub fn insert_batch(&self, experts: Vec<NewExpert>) -> Result<Vec<u64>> {
        if experts.is_empty() {
            return Err(Error::EmptyBatch {
                what: "insert_batch",
            });
        }
        for (i, e) in experts.iter().enumerate() {
            e.validate(&self.layout, i)?;
        }
        self.group
            .submit(Op::Insert(experts), |group| self.commit_group(group))
    }

    /// Inserts `experts` and deletes `delete` in one commit (all or none): a reader
    /// sees either the old experts or the new ones, never both or neither. Returns the
    /// new ids in order.
    pub fn replace_batch(&self, experts: Vec<NewExpert>, delete: &[u64]) -> Result<Vec<u64>> {
        if experts.is_empty() {
            return Err(Error::EmptyBatch {
                what: "replace_batch",
            });
        }
        for (i, e) in experts.iter().enumerate() {
            e.validate(&self.layout, i)?;
        }
        self.group.submit(
            Op::Replace {
                insert: experts,
                delete: delete.to_vec(),
            },
            |group| self.commit_group(group),
        )
    }

    /// Deletes an expert (a tombstone; its bytes are reclaimed by compaction).
    pub fn delete(&self, id: u64) -> Result<()> {
        self.delete_batch(&[id]).map(|_| ())
    }

    /// Deletes several experts in one commit. All or none: an unknown id fails the call.
    pub fn delete_batch(&self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::EmptyBatch {
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
        for name in ALL_CFS {
            self.db
                .flush_cf(cf(&self.db, name)?)
                .map_err(|e| Error::rocks("flushing", e))?;
        }
        Ok(())
    }

    fn commit_group(&self, group: Vec<(Op, Slot)>) {
        let mut w = self.writer.lock();
        if let Some(reason) = &w.poisoned {
            for (_, slot) in group {
                *slot.lock() = Some(Err(Error::Poisoned {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        match self.write_group(&mut w, &group) {
            Ok(results) => {
                for ((_, slot), r) in group.into_iter().zip(results) {
                    *slot.lock() = Some(r);
                }
            }
            Err(e) => {
                // After a failed write or fsync the on-disk state of the active shard is
                // unknown (the kernel may have dropped dirty pages); stop writing until a
                // reopen runs recovery from the committed metadata.
                tracing::error!(error = %e, "store write failed; store is now read-only");
                let reason = e.to_string();
                w.poisoned = Some(reason.clone());
                let mut first = Some(e);
                for (_, slot) in group {
                    let err = first.take().unwrap_or_else(|| Error::Poisoned {
                        reason: reason.clone(),
                    });
                    *slot.lock() = Some(Err(err));
                }
            }
        }
    }

    /// Writes a group; per-operation validation failures are returned in the result
    /// list, I/O failures fail the whole group.
    fn write_group(&self, w: &mut Writer, group: &[(Op, Slot)]) -> Result<Vec<Result<Vec<u64>>>> {
        let cur = self.state.load_full();
        let mut locs = cur.locs.clone();
        let mut shards = (*cur.shards).clone();
        let seq = w.seq + 1;
        let created = now_ms();
        let mut next_id = w.next_id;
        let mut batch = WriteBatch::default();
        let mut to_sync: Vec<(u32, File)> = Vec::new();
        let mut shard_updates: BTreeMap<u32, ShardMeta> = BTreeMap::new();
        let mut results = Vec::with_capacity(group.len());
        let mut wrote_anything = false;
        let (cf_loc, cf_keys, cf_prov, cf_usage, cf_dead) = (
            cf(&self.db, CF_LOC)?,
            cf(&self.db, CF_KEYS)?,
            cf(&self.db, CF_PROV)?,
            cf(&self.db, CF_USAGE)?,
            cf(&self.db, CF_DEAD)?,
        );

        for (op, _) in group {
            let (insert, delete): (&[NewExpert], &[u64]) = match op {
                Op::Insert(experts) => (experts, &[]),
                Op::Delete(ids) => (&[], ids),
                Op::Replace { insert, delete } => (insert, delete),
            };
            if let Some(&id) = delete.iter().find(|&&id| locs.get(id).is_none()) {
                results.push(Err(Error::UnknownExpert { id }));
                continue;
            }
            let mut ids = Vec::with_capacity(insert.len());
            for e in insert {
                let id = next_id;
                next_id += 1;
                let loc = self.append(
                    w,
                    &mut shards,
                    &mut to_sync,
                    &mut shard_updates,
                    id,
                    seq,
                    e,
                )?;
                locs.set(id, Some(loc));
                batch.put_cf(cf_loc, id_key(id), LocValue { loc, seq }.encode());
                batch.put_cf(cf_keys, id_key(id), bytemuck::cast_slice::<f16, u8>(&e.key));
                let stored = StoredMeta {
                    v: 1,
                    provenance: e.provenance.clone(),
                    created_at_ms: created,
                };
                let json = serde_json::to_vec(&stored).map_err(|err| Error::CorruptMetadata {
                    what: format!("cannot encode provenance of expert {id}: {err}"),
                })?;
                batch.put_cf(cf_prov, id_key(id), json);
                ids.push(id);
            }
            let mut uniq = delete.to_vec();
            uniq.sort_unstable();
            uniq.dedup();
            for &id in &uniq {
                if let Some(loc) = locs.set(id, None) {
                    batch.delete_cf(cf_loc, id_key(id));
                    batch.delete_cf(cf_keys, id_key(id));
                    batch.delete_cf(cf_prov, id_key(id));
                    batch.delete_cf(cf_usage, id_key(id));
                    batch.put_cf(
                        cf_dead,
                        id_key(id),
                        DeadValue {
                            loc,
                            deleted_seq: seq,
                        }
                        .encode(),
                    );
                }
            }
            wrote_anything = true;
            results.push(Ok(if insert.is_empty() { uniq } else { ids }));
        }
        if !wrote_anything {
            return Ok(results);
        }

        // Shard bytes must be durable before the metadata that points at them.
        for (shard, file) in &to_sync {
            file.sync_data()
                .map_err(|e| Error::io(self.shard_path(*shard), e))?;
        }
        let cf_shards = cf(&self.db, CF_SHARDS)?;
        for (id, m) in &shard_updates {
            batch.put_cf(cf_shards, shard_key(*id), m.encode());
        }
        let cf_meta = cf(&self.db, CF_META)?;
        batch.put_cf(cf_meta, K_NEXT_ID, next_id.to_le_bytes());
        batch.put_cf(cf_meta, K_SEQ, seq.to_le_bytes());
        batch.put_cf(cf_meta, K_NEXT_SHARD, w.next_shard.to_le_bytes());
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| Error::rocks("committing a write batch", e))?;

        w.next_id = next_id;
        w.seq = seq;
        self.state.store(Arc::new(State {
            locs,
            shards: Arc::new(shards),
            seq,
        }));
        Ok(results)
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        w: &mut Writer,
        shards: &mut BTreeMap<u32, Arc<Shard>>,
        to_sync: &mut Vec<(u32, File)>,
        shard_updates: &mut BTreeMap<u32, ShardMeta>,
        id: u64,
        seq: u64,
        e: &NewExpert,
    ) -> Result<Loc> {
        let full = w.active.as_ref().is_none_or(|a| a.used >= a.capacity);
        if full {
            if let Some(old) = w.active.take() {
                shard_updates.insert(
                    old.id,
                    ShardMeta {
                        used_slots: old.used,
                        state: ShardState::Sealed,
                    },
                );
                if !to_sync.iter().any(|(s, _)| *s == old.id) {
                    to_sync.push((old.id, old.file));
                }
            }
            let shard_id = w.next_shard;
            w.next_shard += 1;
            let header = ShardHeader {
                version: SHARD_FORMAT_VERSION,
                shard_id,
                layout: self.layout,
                capacity_slots: self.layout.slots_per_shard(self.config.shard_size),
            };
            let path = self.shard_path(shard_id);
            let file = create_shard_file(&path, &header)?;
            sync_dir(&self.dir.join(SHARDS_DIR))?;
            let shard = Shard::map(&file, path, &header)?;
            shards.insert(shard_id, Arc::new(shard));
            tracing::debug!(shard = shard_id, "opened new active shard");
            w.active = Some(ActiveShard {
                id: shard_id,
                file,
                used: 0,
                capacity: header.capacity_slots,
            });
        }
        let Some(active) = w.active.as_mut() else {
            return Err(Error::CorruptMetadata {
                what: "no active shard after roll-over".into(),
            });
        };
        let slot = active.used;
        w.buf.resize(self.layout.record_size, 0);
        let layers: Vec<(&[f16], &[f16])> = e.layers.iter().map(|p| (&p.a[..], &p.b[..])).collect();
        encode_record(&self.layout, id, seq, &e.key, &layers, &mut w.buf);
        active
            .file
            .write_all_at(&w.buf, self.layout.slot_offset(slot))
            .map_err(|err| Error::io(self.shard_path(active.id), err))?;
        active.used += 1;
        shard_updates.insert(
            active.id,
            ShardMeta {
                used_slots: active.used,
                state: ShardState::Active,
            },
        );
        if !to_sync.iter().any(|(s, _)| *s == active.id) {
            let dup = active
                .file
                .try_clone()
                .map_err(|err| Error::io(self.shard_path(active.id), err))?;
            to_sync.push((active.id, dup));
        }
        Ok(Loc {
            shard: active.id,
            slot,
        })
    }

    fn shard_path(&self, id: u32) -> PathBuf {
        self.dir.join(SHARDS_DIR).join(shard_file_name(id))
    }

    /// Committed slot counts and states of every shard, from RocksDB.
    fn shard_metas(&self) -> Result<BTreeMap<u32, ShardMeta>> {
        read_shard_metas(&self.db)
    }

    /// Tombstones: deleted id → where its bytes lie (or that they were reclaimed) and
    /// the deleting sequence.
    fn tombstones(&self) -> Result<BTreeMap<u64, DeadValue>> {
        let mut out = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_DEAD)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| Error::rocks("scanning tombstones", e))?;
            let id = decode_id_key(&k)?;
            out.insert(id, DeadValue::decode(id, &v)?);
        }
        Ok(out)
    }

    /// Calls `f` with the id and key of every live expert, in id order, reading keys from
    /// the metadata (a sequential scan that does not touch the shards). Used to rebuild
    /// derived indexes. Returns the commit sequence the scan reflects.
    pub fn scan_keys(&self, mut f: impl FnMut(u64, &[f16]) -> Result<()>) -> Result<u64> {
        let snap = self.snapshot();
        let mut ro = rocksdb::ReadOptions::default();
        let db_snap = self.db.snapshot();
        ro.set_snapshot(&db_snap);
        let iter =
            self.db
                .iterator_cf_opt(cf(&self.db, CF_KEYS)?, ro, rocksdb::IteratorMode::Start);
        let mut buf: Vec<f16> = Vec::with_capacity(self.layout.key_dim);
        for item in iter {
            let (k, v) = item.map_err(|e| Error::rocks("scanning keys", e))?;
            let id = decode_id_key(&k)?;
            if !snap.contains(id) {
                // Committed after the snapshot was taken; the caller catches up later.
                continue;
            }
            decode_key(id, &v, self.layout.key_dim, &mut buf)?;
            f(id, &buf)?;
        }
        Ok(snap.seq())
    }

    /// What changed after commit sequence `since`: experts inserted later (with their keys)
    /// that are still live, and experts deleted later. Lets a derived index saved at
    /// `since` catch up. Returns the sequence the answer reflects.
    pub fn changes_since(
        &self,
        since: u64,
        mut on_insert: impl FnMut(u64, &[f16]) -> Result<()>,
        mut on_delete: impl FnMut(u64) -> Result<()>,
    ) -> Result<u64> {
        let snap = self.snapshot();
        let cf_keys = cf(&self.db, CF_KEYS)?;
        let mut buf: Vec<f16> = Vec::with_capacity(self.layout.key_dim);
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_DEAD)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| Error::rocks("scanning tombstones", e))?;
            let id = decode_id_key(&k)?;
            let dv = DeadValue::decode(id, &v)?;
            if dv.deleted_seq > since && dv.deleted_seq <= snap.seq() {
                on_delete(id)?;
            }
        }
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_LOC)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| Error::rocks("scanning locations", e))?;
            let id = decode_id_key(&k)?;
            let lv = LocValue::decode(id, &v)?;
            if lv.seq > since && snap.contains(id) {
                let key = self
                    .db
                    .get_pinned_cf(cf_keys, id_key(id))
                    .map_err(|e| Error::rocks("reading a key", e))?
                    .ok_or_else(|| Error::CorruptMetadata {
                        what: format!("expert {id} has no key record"),
                    })?;
                decode_key(id, &key, self.layout.key_dim, &mut buf)?;
                on_insert(id, &buf)?;
            }
        }
        Ok(snap.seq())
    }

    /// Store-wide figures: live and deleted experts, per-shard occupancy, orphans.
    pub fn stats(&self) -> Result<StoreStats> {
        let snap = self.snapshot();
        let metas = self.shard_metas()?;
        let dead = self.tombstones()?;
        let mut live_per: BTreeMap<u32, u32> = BTreeMap::new();
        for (_, loc) in snap.state.locs.iter() {
            *live_per.entry(loc.shard).or_default() += 1;
        }
        let mut dead_per: BTreeMap<u32, u32> = BTreeMap::new();
        let mut reclaimed = 0u64;
        for d in dead.values() {
            if d.reclaimed() {
                reclaimed += 1;
            } else {
                *dead_per.entry(d.loc.shard).or_default() += 1;
            }
        }
        let mut shards = Vec::new();
        let mut orphan_slots = 0u64;
        for (&id, m) in &metas {
            let live = live_per.get(&id).copied().unwrap_or(0);
            let dead = dead_per.get(&id).copied().unwrap_or(0);
            orphan_slots += m.used_slots.saturating_sub(live + dead) as u64;
            let capacity_slots = snap.state.shards.get(&id).map_or(0, |s| s.capacity_slots);
            shards.push(ShardStats {
                id,
                state: m.state,
                used_slots: m.used_slots,
                capacity_slots,
                live,
                dead,
                bytes: self.layout.shard_len(m.used_slots),
            });
        }
        Ok(StoreStats {
            live: snap.len(),
            deleted: dead.len() as u64 - reclaimed,
            reclaimed_tombstones: reclaimed,
            record_size: self.layout.record_size,
            shards,
            orphan_slots,
            orphan_files: self.orphans.lock().clone(),
            seq: snap.seq(),
        })
    }

    /// Checks every committed record's checksum and the agreement of metadata and shards.
    /// Problems are reported, not returned as the first error, so an operator sees all of
    /// them at once.
    pub fn verify(&self) -> Result<VerifyReport> {
        let snap = self.snapshot();
        let metas = self.shard_metas()?;
        let dead = self.tombstones()?;
        let mut expected: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        let mut report = VerifyReport::default();
        for (id, loc) in snap.state.locs.iter() {
            if let Some(other) = expected.insert((loc.shard, loc.slot), id) {
                report.problems.push(Problem {
                    id: Some(id),
                    shard: Some(loc.shard),
                    offset: Some(self.layout.slot_offset(loc.slot)),
                    detail: format!("expert {other} points at the same record"),
                });
            }
            match metas.get(&loc.shard) {
                Some(m) if loc.slot < m.used_slots => {}
                _ => report.problems.push(Problem {
                    id: Some(id),
                    shard: Some(loc.shard),
                    offset: Some(self.layout.slot_offset(loc.slot)),
                    detail: "location outside the shard's committed records".into(),
                }),
            }
        }
        for (&id, d) in &dead {
            if d.reclaimed() {
                continue;
            }
            match metas.get(&d.loc.shard) {
                Some(m) if d.loc.slot < m.used_slots => {
                    if let Some(other) = expected.insert((d.loc.shard, d.loc.slot), id) {
                        report.problems.push(Problem {
                            id: Some(id),
                            shard: Some(d.loc.shard),
                            offset: Some(self.layout.slot_offset(d.loc.slot)),
                            detail: format!("tombstone points at the record of expert {other}"),
                        });
                    }
                }
                _ => report.problems.push(Problem {
                    id: Some(id),
                    shard: Some(d.loc.shard),
                    offset: Some(self.layout.slot_offset(d.loc.slot)),
                    detail: "tombstone points outside the shard's committed records".into(),
                }),
            }
        }
        let total: u64 = metas.values().map(|m| m.used_slots as u64).sum();
        let pb = crate::progress::bar(total, "verify");
        for (&shard_id, m) in &metas {
            let Some(shard) = snap.state.shards.get(&shard_id) else {
                report.problems.push(Problem {
                    id: None,
                    shard: Some(shard_id),
                    offset: None,
                    detail: "shard in metadata but not open".into(),
                });
                continue;
            };
            shard.advise_sequential();
            for slot in 0..m.used_slots {
                pb.inc(1);
                report.records_checked += 1;
                let offset = self.layout.slot_offset(slot);
                let want = expected.get(&(shard_id, slot)).copied();
                let Some(bytes) = shard.record_bytes(slot) else {
                    report.problems.push(Problem {
                        id: want,
                        shard: Some(shard_id),
                        offset: Some(offset),
                        detail: "record outside the mapping".into(),
                    });
                    continue;
                };
                match (shard::check_record(bytes), want) {
                    (Err(detail), _) => report.problems.push(Problem {
                        id: want,
                        shard: Some(shard_id),
                        offset: Some(offset),
                        detail,
                    }),
                    (Ok(h), Some(id)) if h.id != id => report.problems.push(Problem {
                        id: Some(id),
                        shard: Some(shard_id),
                        offset: Some(offset),
                        detail: format!("record holds expert {} instead", h.id),
                    }),
                    // Every committed slot belongs to a live or a deleted expert: commits
                    // reference all they append, and compaction moves tombstones with
                    // their records. A slot nobody references is dangling.
                    (Ok(h), None) => report.problems.push(Problem {
                        id: Some(h.id),
                        shard: Some(shard_id),
                        offset: Some(offset),
                        detail: "dangling record: no location or tombstone references it".into(),
                    }),
                    _ => {}
                }
            }
        }
        pb.finish_and_clear();
        tracing::info!(
            checked = report.records_checked,
            problems = report.problems.len(),
            "verify finished"
        );
        Ok(report)
    }
}

fn decode_key(id: u64, raw: &[u8], key_dim: usize, out: &mut Vec<f16>) -> Result<()> {
    if raw.len() != key_dim * 2 {
        return Err(Error::CorruptMetadata {
            what: format!(
                "key of expert {id} is {} bytes, expected {}",
                raw.len(),
                key_dim * 2
            ),
        });
    }
    out.clear();
    out.extend(
        raw.chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]])),
    );
    Ok(())
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or_else(|| Error::CorruptMetadata {
        what: format!("column family `{name}` missing"),
    })
}

fn read_shard_metas(db: &DB) -> Result<BTreeMap<u32, ShardMeta>> {
    let mut out = BTreeMap::new();
    for item in db.iterator_cf(cf(db, CF_SHARDS)?, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| Error::rocks("scanning shard metadata", e))?;
        let arr: [u8; 4] = k[..].try_into().map_err(|_| Error::CorruptMetadata {
            what: format!("shard key of {} bytes", k.len()),
        })?;
        let id = u32::from_be_bytes(arr);
        out.insert(id, ShardMeta::decode(id, &v)?);
    }
    Ok(out)
}

fn meta_u64(db: &DB, key: &[u8]) -> Result<u64> {
    db.get_pinned_cf(cf(db, CF_META)?, key)
        .map_err(|e| Error::rocks("reading store metadata", e))?
        .and_then(|v| decode_u64(&v))
        .ok_or_else(|| Error::CorruptMetadata {
            what: format!(
                "meta key `{}` missing or malformed",
                String::from_utf8_lossy(key)
            ),
        })
}

fn open_store(dir: &Path, expected: Option<&StoreConfig>, lock: Option<File>) -> Result<Store> {
    let meta_dir = dir.join(META_DIR);
    if !meta_dir.join("CURRENT").exists() {
        return Err(Error::NotAStore {
            path: dir.to_path_buf(),
            reason: "no metadata database (meta/CURRENT)".into(),
        });
    }
    let lock = match lock {
        Some(l) => l,
        None => take_lock(dir)?,
    };
    let mut opts = db_options();
    opts.create_if_missing(false);
    let db = DB::open_cf_descriptors(&opts, &meta_dir, cf_descriptors())
        .map_err(|e| Error::rocks("opening the metadata database", e))?;

    let cf_meta = cf(&db, CF_META)?;
    let version = db
        .get_pinned_cf(cf_meta, K_FORMAT)
        .map_err(|e| Error::rocks("reading the format version", e))?
        .and_then(|v| decode_u32(&v))
        .ok_or_else(|| Error::NotAStore {
            path: dir.to_path_buf(),
            reason: "no format version (creation never completed)".into(),
        })?;
    if version > STORE_FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: format!("store {}", dir.display()),
            found: version,
            supported: STORE_FORMAT_VERSION,
        });
    }
    let config: StoreConfig = {
        let raw = db
            .get_pinned_cf(cf_meta, K_CONFIG)
            .map_err(|e| Error::rocks("reading the config", e))?
            .ok_or_else(|| Error::CorruptMetadata {
                what: "config missing".into(),
            })?;
        serde_json::from_slice(&raw).map_err(|e| Error::CorruptMetadata {
            what: format!("config: {e}"),
        })?
    };
    config.validate()?;
    if let Some(given) = expected {
        config.check_matches(given)?;
    }
    let layout = RecordLayout::for_config(&config);
    let next_id = meta_u64(&db, K_NEXT_ID)?;
    let seq = meta_u64(&db, K_SEQ)?;
    let mut next_shard = db
        .get_pinned_cf(cf_meta, K_NEXT_SHARD)
        .map_err(|e| Error::rocks("reading store metadata", e))?
        .and_then(|v| decode_u32(&v))
        .ok_or_else(|| Error::CorruptMetadata {
            what: "meta key `next_shard` missing or malformed".into(),
        })?;

    let shards_dir = dir.join(SHARDS_DIR);
    let metas = read_shard_metas(&db)?;
    let mut shards = BTreeMap::new();
    let mut active = None;
    for (&id, m) in &metas {
        let path = shards_dir.join(shard_file_name(id));
        let (file, header) = shard::read_header(&path)?;
        if header.shard_id != id || header.layout != layout {
            return Err(Error::NotAShard {
                path,
                reason: format!(
                    "header describes shard {} with {:?}, metadata expects shard {id} with {:?}",
                    header.shard_id, header.layout, layout
                ),
            });
        }
        if m.used_slots > header.capacity_slots {
            return Err(Error::CorruptMetadata {
                what: format!(
                    "shard {id} commits {} records but holds at most {}",
                    m.used_slots, header.capacity_slots
                ),
            });
        }
        let committed = layout.shard_len(m.used_slots);
        let found = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if found < committed {
            return Err(Error::TruncatedShard {
                shard: id,
                path,
                expected: committed,
                found,
            });
        }
        if found > committed {
            // Bytes past the committed length belong to a batch whose metadata never
            // committed: the insert was not acknowledged, so it must vanish whole.
            tracing::warn!(
                shard = id,
                committed,
                found,
                "truncating uncommitted shard tail"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            f.set_len(committed).map_err(|e| Error::io(&path, e))?;
            f.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        let shard = Shard::map(&file, path.clone(), &header)?;
        shards.insert(id, Arc::new(shard));
        if m.state == ShardState::Active {
            if active.is_some() {
                return Err(Error::CorruptMetadata {
                    what: format!("more than one active shard (shard {id})"),
                });
            }
            let wfile = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            active = Some(ActiveShard {
                id,
                file: wfile,
                used: m.used_slots,
                capacity: header.capacity_slots,
            });
        }
        next_shard = next_shard.max(id + 1);
    }

    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(&shards_dir).map_err(|e| Error::io(&shards_dir, e))? {
        let entry = entry.map_err(|e| Error::io(&shards_dir, e))?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(parse_shard_file_name) else {
            continue;
        };
        next_shard = next_shard.max(id.saturating_add(1));
        if !metas.contains_key(&id) {
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            tracing::warn!(path = %entry.path().display(), bytes, "orphan shard file");
            orphans.push(OrphanFile {
                path: entry.path(),
                bytes,
            });
        }
    }

    let mut locs = LocTable::default();
    for item in db.iterator_cf(cf(&db, CF_LOC)?, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| Error::rocks("loading expert locations", e))?;
        let id = decode_id_key(&k)?;
        let lv = LocValue::decode(id, &v)?;
        let in_range = metas
            .get(&lv.loc.shard)
            .is_some_and(|m| lv.loc.slot < m.used_slots);
        if !in_range || id >= next_id {
            return Err(Error::CorruptMetadata {
                what: format!(
                    "expert {id} points at shard {} slot {} outside committed records",
                    lv.loc.shard, lv.loc.slot
                ),
            });
        }
        locs.set(id, Some(lv.loc));
    }
    tracing::info!(dir = %dir.display(), live = locs.len(), shards = shards.len(), seq, "opened store");

    Ok(Store {
        dir: dir.to_path_buf(),
        config,
        layout,
        db,
        state: ArcSwap::from_pointee(State {
            locs,
            shards: Arc::new(shards),
            seq,
        }),
        writer: Mutex::new(Writer {
            active,
            next_id,
            seq,
            next_shard,
            buf: Vec::new(),
            poisoned: None,
        }),
        group: GroupCommit::default(),
        orphans: Mutex::new(orphans),
        compacting: Mutex::new(()),
        _lock: lock,
    })
}
