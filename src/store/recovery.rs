//! Creating a store, and opening one: recovery from whatever a crash left.
//!
//! On open: take the lock, open RocksDB, refuse a newer format, check the config; for
//! each shard in the metadata check its header, refuse a file shorter than its committed
//! length and truncate bytes past it (a batch whose metadata never committed); report
//! shard files no metadata references as orphans (their numbers are never reused); load
//! the location table and check every location lies inside committed records.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use rocksdb::{WriteBatch, DB};

use super::commit::GroupCommit;
use super::config::StoreConfig;
use super::dir::{CommitHint, DirLock, StoreDir};
use super::error::{StoreError, StoreResult as Result};
use super::inspect::OrphanFile;
use super::layout::RecordLayout;
use super::loc_table::LocTable;
use super::meta::*;
use super::read::State;
use super::shard::{self, parse_shard_file_name, Shard};
use super::write::{ActiveShard, Writer};
use super::{Access, Store};
use crate::fs::sync_dir;
use crate::progress::NoProgress;

/// Creates a new store in `dir` (which must not exist or be empty) and opens it.
pub(crate) fn create_store(dir: &Path, config: StoreConfig) -> Result<Store> {
    let layout = StoreDir::new(dir);
    config.validate()?;
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
        if entries.next().is_some() {
            return Err(StoreError::AlreadyExists {
                path: dir.to_path_buf(),
            });
        }
    }
    std::fs::create_dir_all(layout.shards()).map_err(|e| StoreError::io(dir, e))?;
    let lock = layout.lock()?;
    let db = DB::open_cf_descriptors(&db_options(), layout.meta(), cf_descriptors())
        .map_err(|e| StoreError::db("creating the metadata database", e))?;
    let cfg_json = serde_json::to_vec(&config).map_err(|e| StoreError::encode("config", e))?;
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
        .map_err(|e| StoreError::db("writing the initial metadata", e))?;
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

/// Opens the store in `dir`, recovering from a crash; checks its config against
/// `expected` when given. `lock` is the writer lock when the caller already holds it.
pub(crate) fn open_store(
    dir: &Path,
    expected: Option<&StoreConfig>,
    lock: Option<DirLock>,
) -> Result<Store> {
    let layout_dir = StoreDir::new(dir);
    let meta_dir = layout_dir.meta();
    if !meta_dir.join("CURRENT").exists() {
        return Err(StoreError::NotAStore {
            path: dir.to_path_buf(),
            reason: "no metadata database (meta/CURRENT)".into(),
        });
    }
    let lock = match lock {
        Some(l) => l,
        None => layout_dir.lock()?,
    };
    let mut opts = db_options();
    opts.create_if_missing(false);
    let db = DB::open_cf_descriptors(&opts, &meta_dir, cf_descriptors())
        .map_err(|e| StoreError::db("opening the metadata database", e))?;

    let config = load_config(&db, dir, expected)?;
    let layout = RecordLayout::for_config(&config);
    let max_slots = layout.slots_per_shard(config.shard_size);
    let next_id = meta_u64(&db, K_NEXT_ID)?;
    let seq = meta_u64(&db, K_SEQ)?;
    let mut next_shard = meta_u32(&db, K_NEXT_SHARD)?;

    let shards_dir = layout_dir.shards();
    let metas = read_shard_metas(&db)?;
    let mut shards = BTreeMap::new();
    let mut active = None;
    for (&id, m) in &metas {
        let (file, header, committed, found) = check_shard(&layout_dir, layout, max_slots, id, m)?;
        let path = layout_dir.shard_file(id);
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
                .map_err(|e| StoreError::io(&path, e))?;
            f.set_len(committed).map_err(|e| StoreError::io(&path, e))?;
            crate::fs::sync(&path, &f, false).map_err(|e| StoreError::io(&path, e))?;
        }
        let shard = Shard::map(&file, path.clone(), &header)?;
        shards.insert(id, Arc::new(shard));
        if m.state == ShardState::Active {
            if active.is_some() {
                return Err(StoreError::CorruptMetadata {
                    what: format!("more than one active shard (shard {id})"),
                });
            }
            let wfile = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io(&path, e))?;
            active = Some(ActiveShard {
                id,
                file: wfile,
                used: m.used_slots,
                capacity: header.capacity_slots,
            });
        }
        next_shard = next_shard.max(id + 1);
    }

    let (orphans, max_file) = scan_orphans(&shards_dir, &metas)?;
    for o in &orphans {
        tracing::warn!(path = %o.path.display(), bytes = o.bytes, "orphan shard file");
    }
    if let Some(id) = max_file {
        next_shard = next_shard.max(id.saturating_add(1));
    }

    let locs = load_locs(&db, &metas, next_id)?;
    tracing::info!(dir = %dir.display(), live = locs.len(), shards = shards.len(), seq, "opened store");

    let hint = CommitHint::open_for_writer(&layout_dir)?;
    let store = Store {
        dir: layout_dir,
        config,
        layout,
        db: ArcSwap::from_pointee(db),
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
        progress: RwLock::new(Arc::new(NoProgress)),
        access: Access::Writer { _lock: lock, hint },
    };
    store.publish_hint(seq, next_shard);
    Ok(store)
}

/// Reads and checks the format version and the config of an open metadata database.
pub(super) fn load_config(
    db: &DB,
    dir: &Path,
    expected: Option<&StoreConfig>,
) -> Result<StoreConfig> {
    let cf_meta = cf(db, CF_META)?;
    let version = db
        .get_pinned_cf(cf_meta, K_FORMAT)
        .map_err(|e| StoreError::db("reading the format version", e))?
        .and_then(|v| decode_u32(&v))
        .ok_or_else(|| StoreError::NotAStore {
            path: dir.to_path_buf(),
            reason: "no format version (creation never completed)".into(),
        })?;
    if version > STORE_FORMAT_VERSION {
        return Err(StoreError::UnsupportedVersion {
            what: format!("store {}", dir.display()),
            found: version,
            supported: STORE_FORMAT_VERSION,
        });
    }
    let config: StoreConfig = {
        let raw = db
            .get_pinned_cf(cf_meta, K_CONFIG)
            .map_err(|e| StoreError::db("reading the config", e))?
            .ok_or_else(|| StoreError::CorruptMetadata {
                what: "config missing".into(),
            })?;
        serde_json::from_slice(&raw).map_err(|e| StoreError::CorruptMetadata {
            what: format!("config: {e}"),
        })?
    };
    config.validate()?;
    if let Some(given) = expected {
        config.check_matches(given)?;
    }
    Ok(config)
}

/// Opens shard `id`'s file and checks its header against the metadata `m`: the same
/// shard and layout, room for the committed records but no more slots than the store's
/// shard size holds (`max_slots`: the per-slot state is sized by the header's capacity,
/// so a hostile one must not size it), and a file at least as long as the committed
/// records. Returns the file, its header, the committed length and the file's length
/// (longer when a batch was appended but not committed, or is being committed now).
pub(super) fn check_shard(
    dir: &StoreDir,
    layout: RecordLayout,
    max_slots: u32,
    id: u32,
    m: &ShardMeta,
) -> Result<(std::fs::File, shard::ShardHeader, u64, u64)> {
    let path = dir.shard_file(id);
    let (file, header) = shard::read_header(&path)?;
    if header.shard_id != id || header.layout != layout {
        return Err(StoreError::NotAShard {
            path,
            reason: format!(
                "header describes shard {} with {:?}, metadata expects shard {id} with {:?}",
                header.shard_id, header.layout, layout
            ),
        });
    }
    if header.capacity_slots > max_slots {
        return Err(StoreError::NotAShard {
            path,
            reason: format!(
                "header claims {} record slots; this store's shards hold {max_slots}",
                header.capacity_slots
            ),
        });
    }
    if m.used_slots > header.capacity_slots {
        return Err(StoreError::CorruptMetadata {
            what: format!(
                "shard {id} commits {} records but holds at most {}",
                m.used_slots, header.capacity_slots
            ),
        });
    }
    let committed = layout.shard_len(m.used_slots);
    let found = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
    if found < committed {
        return Err(StoreError::TruncatedShard {
            shard: id,
            path,
            expected: committed,
            found,
        });
    }
    Ok((file, header, committed, found))
}

/// Shard files in `shards_dir` that no metadata in `metas` references, and the highest
/// shard number among all files there (numbers are never reused).
pub(super) fn scan_orphans(
    shards_dir: &Path,
    metas: &BTreeMap<u32, ShardMeta>,
) -> Result<(Vec<OrphanFile>, Option<u32>)> {
    let mut orphans = Vec::new();
    let mut max_id = None;
    for entry in std::fs::read_dir(shards_dir).map_err(|e| StoreError::io(shards_dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(shards_dir, e))?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(parse_shard_file_name) else {
            continue;
        };
        max_id = max_id.max(Some(id));
        if !metas.contains_key(&id) {
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            orphans.push(OrphanFile {
                path: entry.path(),
                bytes,
            });
        }
    }
    Ok((orphans, max_id))
}

/// Loads the location table, checking that every location lies inside the committed
/// records of a shard the metadata knows and every id was assigned.
pub(super) fn load_locs(
    db: &DB,
    metas: &BTreeMap<u32, ShardMeta>,
    next_id: u64,
) -> Result<LocTable> {
    let mut locs = LocTable::default();
    for item in db.iterator_cf(cf(db, CF_LOC)?, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| StoreError::db("loading expert locations", e))?;
        let id = decode_id_key(&k)?;
        let lv = LocValue::decode(id, &v)?;
        let in_range = metas
            .get(&lv.loc.shard)
            .is_some_and(|m| lv.loc.slot < m.used_slots);
        if !in_range || id >= next_id {
            return Err(StoreError::CorruptMetadata {
                what: format!(
                    "expert {id} points at shard {} slot {} outside committed records",
                    lv.loc.shard, lv.loc.slot
                ),
            });
        }
        locs.set(id, Some(lv.loc));
    }
    Ok(locs)
}
