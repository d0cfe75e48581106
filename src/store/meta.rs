//! RocksDB metadata: column families and the encoding of their values.
//!
//! RocksDB is the source of truth. Column families:
//! - `meta`: format version, config (JSON), next id, commit sequence, next shard id, and
//!   per imported archive (`import/` + its 16-byte id) the records committed so far.
//! - `loc`: expert id (u64 BE) → record location and the sequence that wrote it.
//! - `keys`: expert id → key (fp16 LE), so the index can be rebuilt without the shards.
//! - `prov`: expert id → provenance and creation time (JSON).
//! - `usage`: expert id → selection count (u64 LE), updated with an add merge operator.
//! - `shards`: shard id (u32 BE) → committed slot count and state.
//! - `dead`: expert id → location and sequences of a deleted expert (a tombstone), which
//!   tells compaction how many dead bytes a shard holds and the index what to remove.

use std::collections::BTreeMap;

use rocksdb::{ColumnFamilyDescriptor, MergeOperands, Options, WriteOptions, DB};

use super::error::{StoreError, StoreResult as Result};
use super::loc_table::Loc;

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_LOC: &str = "loc";
pub(crate) const CF_KEYS: &str = "keys";
pub(crate) const CF_PROV: &str = "prov";
pub(crate) const CF_USAGE: &str = "usage";
pub(crate) const CF_SHARDS: &str = "shards";
pub(crate) const CF_DEAD: &str = "dead";
pub(crate) const ALL_CFS: [&str; 7] = [
    CF_META, CF_LOC, CF_KEYS, CF_PROV, CF_USAGE, CF_SHARDS, CF_DEAD,
];

pub(crate) const K_FORMAT: &[u8] = b"format_version";
pub(crate) const K_CONFIG: &[u8] = b"config";
pub(crate) const K_NEXT_ID: &[u8] = b"next_id";
pub(crate) const K_SEQ: &[u8] = b"seq";
pub(crate) const K_NEXT_SHARD: &[u8] = b"next_shard";

/// Newest store (metadata) format this build writes and reads.
pub const STORE_FORMAT_VERSION: u32 = 1;
const VALUE_VERSION: u8 = 1;

fn add_u64(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    // A malformed operand is ignored rather than failing the merge: counters are
    // statistics, and failing here would make RocksDB report corruption for the key.
    let mut total = existing.and_then(decode_u64).unwrap_or(0);
    for op in ops.iter() {
        total = total.saturating_add(decode_u64(op).unwrap_or(0));
    }
    Some(total.to_le_bytes().to_vec())
}

pub(crate) fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    // Point lookups by id dominate; keep file handles open.
    o.set_max_open_files(512);
    o.set_keep_log_file_num(4);
    o
}

pub(crate) fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    ALL_CFS
        .iter()
        .map(|name| {
            let mut o = Options::default();
            if *name == CF_USAGE {
                o.set_merge_operator_associative("mome_add_u64", add_u64);
            }
            ColumnFamilyDescriptor::new(*name, o)
        })
        .collect()
}

pub(crate) fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn decode_id_key(k: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = k.try_into().map_err(|_| StoreError::CorruptMetadata {
        what: format!("expert id key of {} bytes", k.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn shard_key(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

/// `meta` key of an archive import's progress.
pub(crate) fn import_key(archive: &[u8; 16]) -> Vec<u8> {
    let mut k = b"import/".to_vec();
    k.extend_from_slice(archive);
    k
}

/// How far the import of one archive got: records committed and records in the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportProgress {
    /// Records committed (a prefix of the archive, in archive order).
    pub done: u64,
    /// Records in the archive.
    pub total: u64,
}

impl ImportProgress {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.done.to_le_bytes());
        b[8..].copy_from_slice(&self.total.to_le_bytes());
        b
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        let bad =
            || StoreError::corrupt(format!("import marker of {} bytes, expected 16", v.len()));
        let done = decode_u64(v.get(..8).ok_or_else(bad)?).ok_or_else(bad)?;
        let total = decode_u64(v.get(8..).ok_or_else(bad)?).ok_or_else(bad)?;
        if done > total {
            return Err(StoreError::corrupt(format!(
                "import marker says {done} of {total} records"
            )));
        }
        Ok(Self { done, total })
    }
}

pub(crate) fn decode_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.try_into().ok()?))
}

pub(crate) fn decode_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(v.try_into().ok()?))
}

/// A live expert's location and the commit sequence that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LocValue {
    pub loc: Loc,
    pub seq: u64,
}

impl LocValue {
    pub(crate) fn encode(&self) -> [u8; 17] {
        let mut v = [0u8; 17];
        v[0] = VALUE_VERSION;
        v[1..5].copy_from_slice(&self.loc.shard.to_le_bytes());
        v[5..9].copy_from_slice(&self.loc.slot.to_le_bytes());
        v[9..17].copy_from_slice(&self.seq.to_le_bytes());
        v
    }

    pub(crate) fn decode(id: u64, v: &[u8]) -> Result<Self> {
        if v.len() != 17 || v[0] != VALUE_VERSION {
            return Err(StoreError::CorruptMetadata {
                what: format!(
                    "location of expert {id}: {} bytes, version {:?}",
                    v.len(),
                    v.first()
                ),
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes([v[o], v[o + 1], v[o + 2], v[o + 3]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&v[9..17]);
        Ok(LocValue {
            loc: Loc {
                shard: u32_at(1),
                slot: u32_at(5),
            },
            seq: u64::from_le_bytes(seq),
        })
    }
}

/// Shard id a tombstone points at once compaction has reclaimed the deleted expert's
/// bytes. Shard ids start at 1, so 0 never names a file. Such a tombstone is kept only
/// while a saved index may still need it to learn of the delete (its sequence is newer
/// than the saved index's), and purged by a later compaction.
pub(crate) const RECLAIMED_SHARD: u32 = 0;

/// A tombstone: where a deleted expert's bytes still lie, and when it was deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeadValue {
    pub loc: Loc,
    pub deleted_seq: u64,
}

impl DeadValue {
    /// Whether compaction has already reclaimed the bytes (only the delete is recorded).
    pub(crate) fn reclaimed(&self) -> bool {
        self.loc.shard == RECLAIMED_SHARD
    }

    pub(crate) fn encode(&self) -> [u8; 17] {
        LocValue {
            loc: self.loc,
            seq: self.deleted_seq,
        }
        .encode()
    }

    pub(crate) fn decode(id: u64, v: &[u8]) -> Result<Self> {
        let lv = LocValue::decode(id, v)?;
        Ok(DeadValue {
            loc: lv.loc,
            deleted_seq: lv.seq,
        })
    }
}

/// Lifecycle of a shard file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Receiving appends.
    Active,
    /// Full; never written again.
    Sealed,
}

/// Committed state of one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ShardMeta {
    pub used_slots: u32,
    pub state: ShardState,
}

impl ShardMeta {
    pub(crate) fn encode(&self) -> [u8; 6] {
        let mut v = [0u8; 6];
        v[0] = VALUE_VERSION;
        v[1] = match self.state {
            ShardState::Active => 0,
            ShardState::Sealed => 1,
        };
        v[2..6].copy_from_slice(&self.used_slots.to_le_bytes());
        v
    }

    pub(crate) fn decode(shard: u32, v: &[u8]) -> Result<Self> {
        let bad = || StoreError::CorruptMetadata {
            what: format!("metadata of shard {shard}: {v:?}"),
        };
        if v.len() != 6 || v[0] != VALUE_VERSION {
            return Err(bad());
        }
        let state = match v[1] {
            0 => ShardState::Active,
            1 => ShardState::Sealed,
            _ => return Err(bad()),
        };
        Ok(ShardMeta {
            used_slots: u32::from_le_bytes([v[2], v[3], v[4], v[5]]),
            state,
        })
    }
}

/// Write options of every commit: the WAL is synced before the write returns.
pub(crate) fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

/// The handle of column family `name`.
pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::corrupt(format!("column family `{name}` missing")))
}

/// Committed slot counts and states of every shard.
pub(crate) fn read_shard_metas(db: &DB) -> Result<BTreeMap<u32, ShardMeta>> {
    let mut out = BTreeMap::new();
    for item in db.iterator_cf(cf(db, CF_SHARDS)?, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| StoreError::db("scanning shard metadata", e))?;
        let arr: [u8; 4] = k[..]
            .try_into()
            .map_err(|_| StoreError::corrupt(format!("shard key of {} bytes", k.len())))?;
        let id = u32::from_be_bytes(arr);
        out.insert(id, ShardMeta::decode(id, &v)?);
    }
    Ok(out)
}

/// A u64 value of the `meta` column family.
pub(crate) fn meta_u64(db: &DB, key: &[u8]) -> Result<u64> {
    meta_value(db, key, decode_u64)
}

/// A u32 value of the `meta` column family (`next_shard`).
pub(crate) fn meta_u32(db: &DB, key: &[u8]) -> Result<u32> {
    meta_value(db, key, decode_u32)
}

fn meta_value<T>(db: &DB, key: &[u8], decode: fn(&[u8]) -> Option<T>) -> Result<T> {
    db.get_pinned_cf(cf(db, CF_META)?, key)
        .map_err(|e| StoreError::db("reading store metadata", e))?
        .and_then(|v| decode(&v))
        .ok_or_else(|| {
            StoreError::corrupt(format!(
                "meta key `{}` missing or malformed",
                String::from_utf8_lossy(key)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let lv = LocValue {
            loc: Loc { shard: 3, slot: 99 },
            seq: 12345,
        };
        assert_eq!(LocValue::decode(1, &lv.encode()).unwrap(), lv);
        assert!(LocValue::decode(1, &[1, 2, 3]).is_err());
        let sm = ShardMeta {
            used_slots: 17,
            state: ShardState::Sealed,
        };
        assert_eq!(ShardMeta::decode(1, &sm.encode()).unwrap(), sm);
        let mut bad = sm.encode();
        bad[1] = 7;
        assert!(ShardMeta::decode(1, &bad).is_err());
    }
}
