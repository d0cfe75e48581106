//! Readers in other processes: a store opened read-only that follows the one writer.
//!
//! The metadata database is opened in RocksDB's read-only mode: it takes no lock and
//! writes nothing, and at open it reads the writer's MANIFEST and replays its WAL into
//! memory — the same recovery a crash runs, so the view is exactly the commits durable
//! at that moment (a group commit is one batch: never half of one). The database then
//! never moves; a refresh opens a new one and swaps it in with the view loaded from it.
//! RocksDB's secondary mode, built for following, is not used: it has no snapshots, and
//! its WAL replay across column families has published stale-read bugs (rocksdb#5413,
//! #14444); a read-only open is the crash recovery RocksDB tests most. The writer's `commit.hint` tells a refresh cheaply whether there is
//! anything to reload.
//!
//! Shard bytes need no coordination: the writer fsyncs records before the batch that
//! references them, so every record a view names is complete in its file, and shard
//! files are append-only. What a reader can meet is a shard file that compaction has
//! already removed after the database it opened (compaction deletes old shards once the
//! writer's own readers let go; it cannot see other processes). A shard mapped before
//! the removal stays readable (the mapping holds the inode); one not yet mapped is
//! missing, and the reader opens the database again: the newer view no longer names it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use rocksdb::DB;

use super::commit::GroupCommit;
use super::config::StoreConfig;
use super::dir::{CommitHint, StoreDir};
use super::error::{StoreError, StoreResult as Result};
use super::inspect::OrphanFile;
use super::layout::RecordLayout;
use super::meta::*;
use super::read::State;
use super::recovery::{check_shard, load_config, load_locs, scan_orphans};
use super::shard::Shard;
use super::write::Writer;
use super::{Access, Store};
use crate::progress::NoProgress;

/// How many times a reader catches up and loads again when a shard file the metadata
/// names has gone (compaction ran in between); each wait is longer than the last.
const TRIES: u32 = 12;

/// One commit's view as a reader loads it.
struct View {
    state: State,
    next_id: u64,
    next_shard: u32,
    /// Shard files the view does not reference: a crash's leftovers, or the files of
    /// a compaction the writer is running now.
    orphans: Vec<OrphanFile>,
}

/// Opens the writer's metadata database read-only; `max_open_files = -1` keeps every
/// SST file open, so that the writer's compactions, which delete them, cannot pull
/// bytes from under this view.
fn open_db(meta_dir: &Path) -> std::result::Result<DB, rocksdb::Error> {
    let mut opts = db_options();
    opts.create_if_missing(false);
    opts.create_missing_column_families(false);
    opts.set_max_open_files(-1);
    DB::open_cf_descriptors_read_only(&opts, meta_dir, cf_descriptors(), false)
}

pub(crate) fn open_read_only(dir: &Path) -> Result<Store> {
    let layout_dir = StoreDir::new(dir);
    if !layout_dir.meta().join("CURRENT").exists() {
        return Err(StoreError::NotAStore {
            path: dir.to_path_buf(),
            reason: "no metadata database (meta/CURRENT)".into(),
        });
    }
    let (db, layout, config) = {
        let db = open_db(&layout_dir.meta())
            .map_err(|e| StoreError::db("opening the metadata database read-only", e))?;
        let config = load_config(&db, dir, None)?;
        (db, RecordLayout::for_config(&config), config)
    };
    let (db, view) =
        match load_view_retrying(&layout_dir, layout, max_slots(&config), None, Some(db))? {
            Some(v) => v,
            None => return Err(StoreError::corrupt("a reader found no view to load")),
        };
    tracing::info!(
        dir = %dir.display(),
        live = view.state.locs.len(),
        seq = view.state.seq,
        "opened store read-only"
    );
    Ok(Store {
        dir: layout_dir,
        config,
        layout,
        db: ArcSwap::from_pointee(db),
        writer: Mutex::new(Writer {
            active: None,
            next_id: view.next_id,
            seq: view.state.seq,
            next_shard: view.next_shard,
            buf: Vec::new(),
            poisoned: None,
        }),
        state: ArcSwap::from_pointee(view.state),
        group: GroupCommit::default(),
        orphans: Mutex::new(view.orphans),
        compacting: Mutex::new(()),
        progress: RwLock::new(Arc::new(NoProgress)),
        access: Access::Reader {
            refreshing: Mutex::new(()),
        },
    })
}

/// Loads the writer's current commit and publishes it, if it differs from the view.
pub(crate) fn refresh(store: &Store) -> Result<bool> {
    let cur = store.state.load_full();
    let next_shard = store.writer.lock().next_shard;
    let mine = CommitHint {
        seq: cur.seq,
        next_shard,
    };
    if CommitHint::read(&store.dir.hint_file()) == Some(mine) {
        return Ok(false);
    }
    let Some((db, view)) = load_view_retrying(
        &store.dir,
        store.layout,
        max_slots(&store.config),
        Some((&cur, next_shard)),
        None,
    )?
    else {
        return Ok(false);
    };
    {
        let mut w = store.writer.lock();
        w.next_id = view.next_id;
        w.seq = view.state.seq;
        w.next_shard = view.next_shard;
    }
    *store.orphans.lock() = view.orphans;
    tracing::debug!(from = cur.seq, to = view.state.seq, "reader caught up");
    // The database before the view: whoever loads the view and then the database gets
    // one at least as new as the view (see `Store::scan_keys`).
    store.db.store(Arc::new(db));
    store.state.store(Arc::new(view.state));
    Ok(true)
}

/// Record slots of one of the store's shards (a header may not claim more).
fn max_slots(config: &StoreConfig) -> u32 {
    RecordLayout::for_config(config).slots_per_shard(config.shard_size)
}

/// Opens the database (unless `first` is given) and loads its commit; `None` when
/// `current` (a view and its next shard number) is already that commit: the same
/// sequence, and no shard allocated since (compaction moves records without a new
/// sequence, but always into new shards). A file gone
/// under the load — a WAL or SST the writer just retired, a shard compaction removed —
/// means the view is stale: open again, a bounded number of times.
fn load_view_retrying(
    dir: &StoreDir,
    layout: RecordLayout,
    max_slots: u32,
    current: Option<(&State, u32)>,
    mut first: Option<DB>,
) -> Result<Option<(DB, View)>> {
    let mut last = None;
    for attempt in 0..TRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(5 << attempt.min(6)));
        }
        let db = match first.take() {
            Some(db) => db,
            None => match open_db(&dir.meta()) {
                Ok(db) => db,
                Err(e) => {
                    last = Some(StoreError::db("opening the metadata database read-only", e));
                    continue;
                }
            },
        };
        let seq = meta_u64(&db, K_SEQ)?;
        let next_shard = meta_u32(&db, K_NEXT_SHARD)?;
        if current.is_some_and(|(c, n)| (c.seq, n) == (seq, next_shard)) {
            return Ok(None);
        }
        match load_view(
            &db,
            dir,
            layout,
            max_slots,
            current.map(|(c, _)| c),
            seq,
            next_shard,
        ) {
            Ok(v) => return Ok(Some((db, v))),
            Err(StoreError::Io { path, source })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::debug!(path = %path.display(), attempt, "shard gone since the open; opening again");
                last = Some(StoreError::Io { path, source });
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::NoConsistentView {
        path: dir.root().to_path_buf(),
        tries: TRIES,
        last: Box::new(last.unwrap_or_else(|| StoreError::corrupt("no attempt made"))),
    })
}

/// Loads the view of the commit `db` holds. Shards already mapped by `reuse` are shared
/// (a shard number is never reused for other contents); others are opened, checked
/// against their metadata and mapped.
fn load_view(
    db: &DB,
    dir: &StoreDir,
    layout: RecordLayout,
    max_slots: u32,
    reuse: Option<&State>,
    seq: u64,
    next_shard: u32,
) -> Result<View> {
    let next_id = meta_u64(db, K_NEXT_ID)?;
    let metas = read_shard_metas(db)?;
    let mut shards = BTreeMap::new();
    for (&id, m) in &metas {
        if let Some(s) = reuse.and_then(|st| st.shards.get(&id)) {
            shards.insert(id, s.clone());
            continue;
        }
        // Bytes past the committed length are the writer's batch in flight: left alone.
        let (file, header, _, _) = check_shard(dir, layout, max_slots, id, m)?;
        shards.insert(
            id,
            Arc::new(Shard::map(&file, dir.shard_file(id), &header)?),
        );
    }
    let locs = load_locs(db, &metas, next_id)?;
    let (orphans, _) = scan_orphans(&dir.shards(), &metas)?;
    Ok(View {
        orphans,
        state: State {
            locs,
            shards: Arc::new(shards),
            seq,
        },
        next_id,
        next_shard,
    })
}
