//! The write path: group commit of inserts and deletes, appends to the active shard,
//! roll-over to a new shard, and poisoning after a failed write.
//!
//! One group: records are appended with `pwrite` (rolling over to a new shard file —
//! header written and fsynced, directory fsynced — when the active one is full), every
//! touched shard file is `fdatasync`ed, then one RocksDB batch with a synced WAL commits
//! locations, keys, provenance, tombstones, shard slot counts, next id and sequence.
//! Only then is the new state published and each writer handed its result. A failed
//! write or fsync poisons the writer until the store is reopened (the kernel may have
//! dropped the dirty pages; recovery starts from committed metadata).

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use half::f16;
use rocksdb::WriteBatch;

use super::commit::{ImportBatch, Op, Slot};
use super::error::{StoreError, StoreResult as Result};
use super::expert::{NewExpert, StoredMeta};
use super::loc_table::Loc;
use super::meta::{
    cf, id_key, import_key, shard_key, synced, DeadValue, ImportProgress, LocValue, ShardMeta,
    ShardState, CF_DEAD, CF_KEYS, CF_LOC, CF_META, CF_PROV, CF_SHARDS, CF_USAGE, K_NEXT_ID,
    K_NEXT_SHARD, K_SEQ,
};
use super::read::State;
use super::shard::{create_shard_file, encode_record, Shard, ShardHeader, SHARD_FORMAT_VERSION};
use super::Store;
use crate::fs::sync_dir;

/// The shard receiving appends.
pub(crate) struct ActiveShard {
    pub(crate) id: u32,
    pub(crate) file: File,
    pub(crate) used: u32,
    pub(crate) capacity: u32,
}

/// The writer's state, under the store's writer lock.
pub(crate) struct Writer {
    pub(crate) active: Option<ActiveShard>,
    pub(crate) next_id: u64,
    pub(crate) seq: u64,
    pub(crate) next_shard: u32,
    pub(crate) buf: Vec<u8>,
    /// Why writes are refused, after a failed write or fsync.
    pub(crate) poisoned: Option<String>,
}

/// Lower-case hex of an archive id, as errors and reports name it.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    pub(crate) fn commit_group(&self, group: Vec<(Op, Slot)>) {
        let mut w = self.writer.lock();
        if let Some(reason) = &w.poisoned {
            for (_, slot) in group {
                *slot.lock() = Some(Err(StoreError::Poisoned {
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
                    let err = first.take().unwrap_or_else(|| StoreError::Poisoned {
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
        let db = self.db();
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
            cf(&db, CF_LOC)?,
            cf(&db, CF_KEYS)?,
            cf(&db, CF_PROV)?,
            cf(&db, CF_USAGE)?,
            cf(&db, CF_DEAD)?,
        );

        let cf_meta = cf(&db, CF_META)?;
        // Import markers advanced by earlier operations of this group.
        let mut marks: BTreeMap<[u8; 16], u64> = BTreeMap::new();
        for (op, _) in group {
            let (insert, delete, import): (&[NewExpert], &[u64], Option<&ImportBatch>) = match op {
                Op::Insert(experts) => (experts, &[], None),
                Op::Delete(ids) => (&[], ids, None),
                Op::Replace { insert, delete } => (insert, delete, None),
                Op::Import(b) => (&b.experts, &[], Some(b)),
            };
            if let Some(&id) = delete.iter().find(|&&id| locs.get(id).is_none()) {
                results.push(Err(StoreError::UnknownExpert { id }));
                continue;
            }
            if let Some(b) = import {
                let found = match marks.get(&b.archive) {
                    Some(&done) => done,
                    None => self.import_mark(&db, &b.archive)?.map_or(0, |m| m.done),
                };
                if found != b.start {
                    results.push(Err(StoreError::ImportConflict {
                        archive: hex(&b.archive),
                        expected: b.start,
                        found,
                    }));
                    continue;
                }
                let done = b.start + b.experts.len() as u64;
                marks.insert(b.archive, done);
                batch.put_cf(
                    cf_meta,
                    import_key(&b.archive),
                    ImportProgress {
                        done,
                        total: b.total,
                    }
                    .encode(),
                );
            }
            let mut ids = Vec::with_capacity(insert.len());
            for (i, e) in insert.iter().enumerate() {
                let id = next_id;
                next_id += 1;
                let loc =
                    self.append(w, &mut shards, &mut to_sync, &mut shard_updates, id, seq, e)?;
                locs.set(id, Some(loc));
                batch.put_cf(cf_loc, id_key(id), LocValue { loc, seq }.encode());
                batch.put_cf(cf_keys, id_key(id), bytemuck::cast_slice::<f16, u8>(&e.key));
                let created_at_ms = match import {
                    Some(b) => {
                        if let Some(&n) = b.usage.get(i).filter(|&&n| n > 0) {
                            batch.merge_cf(cf_usage, id_key(id), n.to_le_bytes());
                        }
                        b.created_at_ms.get(i).copied().unwrap_or(created)
                    }
                    None => created,
                };
                let stored = StoredMeta {
                    v: 1,
                    provenance: e.provenance.clone(),
                    created_at_ms,
                };
                let json = serde_json::to_vec(&stored)
                    .map_err(|err| StoreError::encode(format!("provenance of expert {id}"), err))?;
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
            let path = self.shard_path(*shard);
            crate::fs::sync(&path, file, true).map_err(|e| StoreError::io(path, e))?;
        }
        let cf_shards = cf(&db, CF_SHARDS)?;
        for (id, m) in &shard_updates {
            batch.put_cf(cf_shards, shard_key(*id), m.encode());
        }
        batch.put_cf(cf_meta, K_NEXT_ID, next_id.to_le_bytes());
        batch.put_cf(cf_meta, K_SEQ, seq.to_le_bytes());
        batch.put_cf(cf_meta, K_NEXT_SHARD, w.next_shard.to_le_bytes());
        db.write_opt(batch, &synced())
            .map_err(|e| StoreError::db("committing a write batch", e))?;

        w.next_id = next_id;
        w.seq = seq;
        self.state.store(Arc::new(State {
            locs,
            shards: Arc::new(shards),
            seq,
        }));
        self.publish_hint(seq, w.next_shard);
        Ok(results)
    }

    /// The committed progress of an archive's import, if it was ever imported.
    pub(crate) fn import_mark(
        &self,
        db: &rocksdb::DB,
        archive: &[u8; 16],
    ) -> Result<Option<ImportProgress>> {
        db.get_pinned_cf(cf(db, CF_META)?, import_key(archive))
            .map_err(|e| StoreError::db("reading an import marker", e))?
            .map(|v| ImportProgress::decode(&v))
            .transpose()
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
            sync_dir(&self.dir.shards())?;
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
            return Err(StoreError::corrupt("no active shard after roll-over"));
        };
        let slot = active.used;
        w.buf.resize(self.layout.record_size, 0);
        let layers: Vec<(&[f16], &[f16])> = e.layers.iter().map(|p| (&p.a[..], &p.b[..])).collect();
        encode_record(&self.layout, id, seq, &e.key, &layers, &mut w.buf);
        let path = self.shard_path(active.id);
        crate::fs::write_all_at(&path, &active.file, &w.buf, self.layout.slot_offset(slot))
            .map_err(|err| StoreError::io(path, err))?;
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
                .map_err(|err| StoreError::io(self.shard_path(active.id), err))?;
            to_sync.push((active.id, dup));
        }
        Ok(Loc {
            shard: active.id,
            slot,
        })
    }
}
