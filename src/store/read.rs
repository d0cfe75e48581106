//! The read path: immutable snapshots of the location table and open shards, loaded
//! without a lock, and the key scans the index rebuilds and catches up from.

use std::collections::BTreeMap;
use std::sync::Arc;

use half::f16;

use super::error::{StoreError, StoreResult as Result};
use super::expert::ExpertRef;
use super::loc_table::{Loc, LocTable};
use super::meta::{cf, decode_id_key, id_key, DeadValue, LocValue, CF_DEAD, CF_KEYS, CF_LOC};
use super::shard::Shard;
use super::Store;

/// An immutable, consistent view of the store at one commit.
#[derive(Clone)]
pub(crate) struct State {
    pub(crate) locs: LocTable,
    pub(crate) shards: Arc<BTreeMap<u32, Arc<Shard>>>,
    pub(crate) seq: u64,
}

impl State {
    /// Where a live expert's record lies: its location and the open shard holding it.
    pub(crate) fn place(&self, id: u64) -> Result<(Loc, &Arc<Shard>)> {
        let loc = self.locs.get(id).ok_or(StoreError::UnknownExpert { id })?;
        let shard = self.shards.get(&loc.shard).ok_or_else(|| {
            StoreError::corrupt(format!(
                "expert {id} points at shard {} which is not open",
                loc.shard
            ))
        })?;
        Ok((loc, shard))
    }

    pub(crate) fn resolve(&self, id: u64) -> Result<ExpertRef> {
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
    pub(crate) state: Arc<State>,
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

impl Store {
    /// Calls `f` with the id and key of every live expert, in id order, reading keys from
    /// the metadata (a sequential scan that does not touch the shards). Used to rebuild
    /// derived indexes. Returns the commit sequence the scan reflects.
    pub fn scan_keys<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(u64, &[f16]) -> std::result::Result<(), E>,
    ) -> std::result::Result<u64, E> {
        // The view first, then the database: a reader publishes a newer database before
        // the view that matches it, so the database holds at least the view's commits.
        let snap = self.snapshot();
        let db = self.db();
        let mut ro = rocksdb::ReadOptions::default();
        // A read-only database never moves (a refresh opens a new one), and RocksDB's
        // read-only mode has no snapshots; the writer's moves, so it scans a snapshot.
        let db_snap = (!self.is_read_only()).then(|| db.snapshot());
        if let Some(s) = &db_snap {
            ro.set_snapshot(s);
        }
        let iter = db.iterator_cf_opt(cf(&db, CF_KEYS)?, ro, rocksdb::IteratorMode::Start);
        let mut buf: Vec<f16> = Vec::with_capacity(self.layout.key_dim);
        for item in iter {
            let (k, v) = item.map_err(|e| StoreError::db("scanning keys", e))?;
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
    pub fn changes_since<E: From<StoreError>>(
        &self,
        since: u64,
        mut on_insert: impl FnMut(u64, &[f16]) -> std::result::Result<(), E>,
        mut on_delete: impl FnMut(u64) -> std::result::Result<(), E>,
    ) -> std::result::Result<u64, E> {
        let snap = self.snapshot();
        let db = self.db();
        let cf_keys = cf(&db, CF_KEYS)?;
        let mut buf: Vec<f16> = Vec::with_capacity(self.layout.key_dim);
        for item in db.iterator_cf(cf(&db, CF_DEAD)?, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StoreError::db("scanning tombstones", e))?;
            let id = decode_id_key(&k)?;
            let dv = DeadValue::decode(id, &v)?;
            if dv.deleted_seq > since && dv.deleted_seq <= snap.seq() {
                on_delete(id)?;
            }
        }
        for item in db.iterator_cf(cf(&db, CF_LOC)?, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StoreError::db("scanning locations", e))?;
            let id = decode_id_key(&k)?;
            let lv = LocValue::decode(id, &v)?;
            if lv.seq > since && snap.contains(id) {
                let key = db
                    .get_pinned_cf(cf_keys, id_key(id))
                    .map_err(|e| StoreError::db("reading a key", e))?
                    .ok_or_else(|| StoreError::corrupt(format!("expert {id} has no key record")))?;
                decode_key(id, &key, self.layout.key_dim, &mut buf)?;
                on_insert(id, &buf)?;
            }
        }
        Ok(snap.seq())
    }
}

fn decode_key(id: u64, raw: &[u8], key_dim: usize, out: &mut Vec<f16>) -> Result<()> {
    if raw.len() != key_dim * 2 {
        return Err(StoreError::corrupt(format!(
            "key of expert {id} is {} bytes, expected {}",
            raw.len(),
            key_dim * 2
        )));
    }
    out.clear();
    out.extend(
        raw.chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]])),
    );
    Ok(())
}
