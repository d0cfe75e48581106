//! Read-only views for operators: one shard's records, one record's checksum, usage
//! counters. The admin tool's `inspect` and `stats` are built on these.

use std::collections::BTreeMap;

use super::meta::{decode_id_key, decode_u64, id_key, DeadValue, CF_DEAD, CF_USAGE};
use super::shard::{check_record, RecordHeader};
use super::{cf, Store};
use crate::error::{Error, Result};

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

impl Store {
    /// Every committed record of shard `shard`, with its checksum recomputed (not taken
    /// from the per-mapping cache) and what the metadata says it holds.
    pub fn shard_records(&self, shard: u32) -> Result<Vec<RecordInfo>> {
        let snap = self.snapshot();
        let metas = self.shard_metas()?;
        let meta = metas.get(&shard).ok_or(Error::UnknownShard { shard })?;
        let mapped = snap
            .state
            .shards
            .get(&shard)
            .ok_or(Error::UnknownShard { shard })?;
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
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_USAGE)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(|e| Error::rocks("scanning usage", e))?;
            let id = decode_id_key(&k)?;
            f(id, decode_u64(&v).unwrap_or(0));
        }
        Ok(())
    }

    /// The tombstone of a deleted expert: its deleting sequence, and whether its bytes
    /// were reclaimed. `None` for an id that is not (or no longer) recorded as deleted.
    pub fn tombstone(&self, id: u64) -> Result<Option<(u64, bool)>> {
        let raw = self
            .db
            .get_pinned_cf(cf(&self.db, CF_DEAD)?, id_key(id))
            .map_err(|e| Error::rocks("reading a tombstone", e))?;
        raw.map(|v| DeadValue::decode(id, &v).map(|d| (d.deleted_seq, d.reclaimed())))
            .transpose()
    }
}
