//! Read-only views for operators: store-wide and per-shard figures, one shard's records,
//! one record's checksum, usage counters, tombstones. The admin tool's `inspect` and
//! `stats`, and the compaction policy's inputs, are built on these.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::error::{StoreError, StoreResult as Result};
use super::meta::{
    cf, decode_id_key, decode_u64, id_key, read_shard_metas, DeadValue, ShardMeta, ShardState,
    CF_DEAD, CF_USAGE,
};
use super::shard::{check_record, RecordHeader};
use super::Store;

/// What the metadata says a committed record slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// The current record of a live expert.
    Live(u64),
    /// The bytes of a deleted expert, not reclaimed yet.
    Deleted(u64),
    /// No metadata references the slot (nothing should be here; compaction drops it).
    Unreferenced,
}

/// One committed record slot of a shard, checked now.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RecordInfo {
    /// Slot number.
    pub slot: u32,
    /// Byte offset in the shard file.
    pub offset: u64,
    /// What the metadata says the slot holds.
    pub state: RecordState,
    /// The record's own header, or why its magic / checksum check failed.
    pub header: std::result::Result<RecordHeader, String>,
}

impl RecordInfo {
    /// A problem with this record: a failed checksum, or a record holding another
    /// expert than the metadata says.
    pub fn problem(&self) -> Option<String> {
        match (&self.header, self.state) {
            (Err(e), _) => Some(e.clone()),
            (Ok(h), RecordState::Live(id) | RecordState::Deleted(id)) if h.id != id => Some(
                format!("metadata says expert {id}, record holds expert {}", h.id),
            ),
            _ => None,
        }
    }
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

impl Store {
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

    /// Committed slot counts and states of every shard, from RocksDB.
    pub(crate) fn shard_metas(&self) -> Result<BTreeMap<u32, ShardMeta>> {
        let db = self.db();
        read_shard_metas(&db)
    }

    /// Tombstones: deleted id → where its bytes lie (or that they were reclaimed) and
    /// the deleting sequence.
    pub(crate) fn tombstones(&self) -> Result<BTreeMap<u64, DeadValue>> {
        let db = self.db();
        let mut out = BTreeMap::new();
        for item in db.iterator_cf(cf(&db, CF_DEAD)?, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StoreError::db("scanning tombstones", e))?;
            let id = decode_id_key(&k)?;
            out.insert(id, DeadValue::decode(id, &v)?);
        }
        Ok(out)
    }

    /// Every committed record of shard `shard`, with its checksum recomputed (not taken
    /// from the per-mapping cache) and what the metadata says it holds.
    pub fn shard_records(&self, shard: u32) -> Result<Vec<RecordInfo>> {
        let snap = self.snapshot();
        let metas = self.shard_metas()?;
        let meta = metas
            .get(&shard)
            .ok_or(StoreError::UnknownShard { shard })?;
        let mapped = snap
            .state
            .shards
            .get(&shard)
            .ok_or(StoreError::UnknownShard { shard })?;
        let mut owner: BTreeMap<u32, RecordState> = BTreeMap::new();
        for (id, loc) in snap.state.locs.iter() {
            if loc.shard == shard {
                owner.insert(loc.slot, RecordState::Live(id));
            }
        }
        for (id, d) in self.tombstones()? {
            if d.loc.shard == shard {
                owner.insert(d.loc.slot, RecordState::Deleted(id));
            }
        }
        Ok((0..meta.used_slots)
            .map(|slot| RecordInfo {
                slot,
                offset: self.layout.slot_offset(slot),
                state: owner
                    .get(&slot)
                    .copied()
                    .unwrap_or(RecordState::Unreferenced),
                header: mapped
                    .record_bytes(slot)
                    .ok_or_else(|| format!("slot {slot} outside the mapping"))
                    .and_then(check_record),
            })
            .collect())
    }

    /// Recomputes the checksum of a live expert's record now (bypassing the cache of
    /// records already verified through this mapping); returns the record's header.
    pub fn check_record(&self, id: u64) -> Result<RecordHeader> {
        let snap = self.snapshot();
        let (loc, shard) = snap.state.place(id)?;
        shard.check_slot(loc.slot, id)
    }

    /// Calls `f(id, count)` for every expert with a recorded selection count, in id
    /// order (experts never selected have no entry).
    pub fn scan_usage(&self, mut f: impl FnMut(u64, u64)) -> Result<()> {
        let db = self.db();
        for item in db.iterator_cf(cf(&db, CF_USAGE)?, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StoreError::db("scanning usage", e))?;
            let id = decode_id_key(&k)?;
            f(id, decode_u64(&v).unwrap_or(0));
        }
        Ok(())
    }

    /// The tombstone of a deleted expert: its deleting sequence, and whether its bytes
    /// were reclaimed. `None` for an id that is not (or no longer) recorded as deleted.
    pub fn tombstone(&self, id: u64) -> Result<Option<(u64, bool)>> {
        let db = self.db();
        let raw = db
            .get_pinned_cf(cf(&db, CF_DEAD)?, id_key(id))
            .map_err(|e| StoreError::db("reading a tombstone", e))?;
        raw.map(|v| DeadValue::decode(id, &v).map(|d| (d.deleted_seq, d.reclaimed())))
            .transpose()
    }
}
