//! Compaction: the live records of sparse sealed shards are copied into new shard files,
//! the metadata switches to the copies in one synced RocksDB batch, and the old files are
//! unlinked when the last snapshot or `ExpertRef` holding them drops.
//!
//! Two parts. [`plan_compaction`] (`policy.rs`) is the policy: a pure function of
//! per-shard figures that says which shards to rewrite (and which orphan files to
//! delete). The runner (this file, [`Store::compact`]) carries a plan out:
//!
//! 1. From one snapshot, the live records of the chosen shards are copied, in slot order,
//!    into new shard files (checksum and expert id of every record re-checked on the
//!    way; a corrupt record aborts the run and is named in the error). Each new file is
//!    fsynced, then the directory. No lock is held: readers and writers carry on.
//! 2. Under the writer lock (so no group commit interleaves): every copied expert that
//!    is still live at its old location gets its new location, keeping its original
//!    insertion sequence; an expert deleted while copying keeps its tombstone, moved to
//!    the copy; the chosen shards leave the `shards` column family and the new ones enter
//!    it, sealed; tombstones whose bytes are gone are purged or kept as "reclaimed" (see
//!    below). One synced batch. Then the new in-memory state is published.
//! 3. The old shards are marked obsolete; `Drop for Shard` unlinks each file when the last
//!    reader lets go. Orphan files named by the plan are deleted.
//!
//! A crash before step 2's batch leaves the new files unreferenced: orphans, deleted by
//! the next compaction. A crash after it leaves the old files unreferenced: orphans too.
//! Shard ids are never reused, so an orphan can never be taken for a live shard.
//!
//! The active shard is never chosen: it is still being filled, and its dead records are
//! reclaimed once it is sealed and becomes sparse like any other.
//!
//! Tombstones and the index: a saved index covers the store up to a sequence `S`, and on
//! open it replays tombstones deleted after `S`. A tombstone whose bytes compaction
//! reclaims is therefore purged only when its delete is at or before the *tombstone
//! horizon* the caller supplies (the index layer computes it from its saved files:
//! `tombstone_horizon` in `src/index`; the store never reads them); otherwise it is kept
//! with the location [`RECLAIMED_SHARD`] and purged by a later compaction, once the index
//! has been saved past it. Compaction does not advance the commit sequence: it changes
//! where bytes lie, not which experts exist.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::WriteBatch;

mod policy;

pub use policy::{plan_compaction, CompactionPlan, CompactionPolicy, CompactionReport};

use super::error::{StoreError, StoreResult as Result};
use super::inspect::OrphanFile;
use super::loc_table::Loc;
use super::meta::{
    cf, id_key, shard_key, synced, DeadValue, LocValue, ShardMeta, ShardState, CF_DEAD, CF_LOC,
    CF_META, CF_SHARDS, K_NEXT_SHARD, RECLAIMED_SHARD,
};
use super::read::State;
use super::shard::{
    create_shard_file, parse_shard_file_name, Shard, ShardHeader, SHARD_FORMAT_VERSION,
};
use super::Store;
use crate::fs::sync_dir;
use crate::progress::Task;

/// Bytes gathered before one `pwrite` into a new shard.
const WRITE_CHUNK: usize = 8 << 20;

/// One copied record.
struct Moved {
    id: u64,
    old: Loc,
    new: Loc,
    /// Insertion sequence, kept so that index catch-up does not see the expert as new.
    seq: u64,
}

/// A new shard file written by the copy.
struct NewShard {
    id: u32,
    used: u32,
    shard: Arc<Shard>,
}

impl Store {
    /// What [`Store::compact`] would do now with `policy` (nothing is changed).
    pub fn compaction_plan(&self, policy: &CompactionPolicy) -> Result<CompactionPlan> {
        policy.validate()?;
        let stats = self.stats()?;
        Ok(plan_compaction(
            &stats.shards,
            &stats.orphan_files,
            self.layout.record_size,
            self.layout.slots_per_shard(self.config.shard_size),
            policy,
        ))
    }

    /// Plans and runs one compaction (ARCHITECTURE.md §Compaction). Safe while other
    /// threads read, search, insert and delete; one compaction runs at a time.
    ///
    /// `tombstone_horizon` is the newest delete sequence that every derived index has
    /// seen: tombstones deleted at or before it may be purged once their bytes are
    /// reclaimed, later ones are kept. The caller supplies it (the index layer's
    /// `tombstone_horizon(store_dir)` reads it from the saved index; `u64::MAX` when no
    /// derived index exists, 0 to purge nothing). It may only be stale in the safe
    /// direction: a saved index only moves forward.
    pub fn compact(
        &self,
        policy: &CompactionPolicy,
        tombstone_horizon: u64,
    ) -> Result<CompactionReport> {
        self.check_writable("compaction")?;
        let _one = self.compacting.lock();
        let plan = self.compaction_plan(policy)?;
        // Even with no shard to rewrite, a run purges the reclaimed tombstones that the
        // saved index has seen since an earlier run.
        self.run_compaction(plan, tombstone_horizon)
    }

    fn run_compaction(&self, plan: CompactionPlan, horizon: u64) -> Result<CompactionReport> {
        let db = self.db();
        let t = std::time::Instant::now();
        let base = self.state.load_full();
        let chosen: BTreeSet<u32> = plan.shards.iter().copied().collect();
        let metas = self.shard_metas()?;
        for s in &chosen {
            if !matches!(metas.get(s), Some(m) if m.state == ShardState::Sealed) {
                return Err(StoreError::InvalidArgument {
                    name: "plan",
                    reason: format!("shard {s} is not a sealed shard of this store"),
                });
            }
        }
        let mut sources: Vec<(Loc, u64)> = base
            .locs
            .iter()
            .filter(|(_, l)| chosen.contains(&l.shard))
            .map(|(id, l)| (l, id))
            .collect();
        sources.sort_unstable_by_key(|(l, _)| (l.shard, l.slot));

        let mut created: Vec<PathBuf> = Vec::new();
        let copied = self.copy_records(&base, &sources, &mut created);
        let (moved, new_shards) = match copied {
            Ok(v) => v,
            Err(e) => {
                // Nothing references the partial copies; remove them now rather than
                // leave orphans for the next run.
                for path in &created {
                    let _ = std::fs::remove_file(path);
                }
                return Err(e);
            }
        };
        drop(sources);

        let mut report = CompactionReport {
            new_shards: new_shards.iter().map(|s| s.id).collect(),
            records_copied: moved.len() as u64,
            ..Default::default()
        };
        let by_id: HashMap<u64, usize> = moved.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        let (cf_loc, cf_dead, cf_shards, cf_meta) = (
            cf(&db, CF_LOC)?,
            cf(&db, CF_DEAD)?,
            cf(&db, CF_SHARDS)?,
            cf(&db, CF_META)?,
        );
        let mut batch = WriteBatch::default();
        // Tombstones that existed when the copy started are settled without the writer
        // lock; those of experts deleted during the copy (copied ids) are settled under it.
        for (id, d) in self.tombstones()? {
            if by_id.contains_key(&id) {
                continue;
            }
            let here = chosen.contains(&d.loc.shard);
            if !here && !d.reclaimed() {
                continue;
            }
            if d.deleted_seq <= horizon {
                batch.delete_cf(cf_dead, id_key(id));
                report.tombstones_purged += 1;
            } else {
                if here {
                    let kept = DeadValue {
                        loc: Loc {
                            shard: RECLAIMED_SHARD,
                            slot: 0,
                        },
                        deleted_seq: d.deleted_seq,
                    };
                    batch.put_cf(cf_dead, id_key(id), kept.encode());
                }
                report.tombstones_kept += 1;
            }
        }

        if chosen.is_empty() && batch.is_empty() {
            report.orphans_removed = self.remove_orphans(&plan.orphan_files)?;
            report.plan = plan;
            return Ok(report);
        }
        let mut w = self.writer.lock();
        if let Some(reason) = &w.poisoned {
            let reason = reason.clone();
            drop(w);
            drop(new_shards);
            for path in &created {
                let _ = std::fs::remove_file(path);
            }
            return Err(StoreError::Poisoned { reason });
        }
        let cur = self.state.load_full();
        let mut locs = cur.locs.clone();
        let mut shards = (*cur.shards).clone();
        for m in &moved {
            match cur.locs.get(m.id) {
                Some(l) if l == m.old => {
                    locs.set(m.id, Some(m.new));
                    batch.put_cf(
                        cf_loc,
                        id_key(m.id),
                        LocValue {
                            loc: m.new,
                            seq: m.seq,
                        }
                        .encode(),
                    );
                }
                None => {
                    // Deleted while copying: its tombstone names the old record; point it
                    // at the copy so every slot of the new shard stays accounted for.
                    if let Some((deleted_seq, _)) = self.tombstone(m.id)? {
                        let moved_dead = DeadValue {
                            loc: m.new,
                            deleted_seq,
                        };
                        batch.put_cf(cf_dead, id_key(m.id), moved_dead.encode());
                    }
                    report.deleted_during_copy += 1;
                }
                Some(other) => {
                    return Err(StoreError::corrupt(format!(
                        "expert {} moved from shard {} slot {} to shard {} slot {} during compaction",
                        m.id, m.old.shard, m.old.slot, other.shard, other.slot
                    )));
                }
            }
        }
        for s in &new_shards {
            let meta = ShardMeta {
                used_slots: s.used,
                state: ShardState::Sealed,
            };
            batch.put_cf(cf_shards, shard_key(s.id), meta.encode());
            shards.insert(s.id, s.shard.clone());
        }
        let mut old = Vec::with_capacity(chosen.len());
        for &s in &chosen {
            batch.delete_cf(cf_shards, shard_key(s));
            if let Some(shard) = shards.remove(&s) {
                old.push(shard);
            }
        }
        batch.put_cf(cf_meta, K_NEXT_SHARD, w.next_shard.to_le_bytes());
        if let Err(e) = db.write_opt(batch, &synced()) {
            // Whether the batch reached the disk is unknown, so the new files may be
            // referenced: keep them, and stop writing until a reopen settles it.
            let e = StoreError::db("committing a compaction", e);
            w.poisoned = Some(e.to_string());
            return Err(e);
        }
        self.state.store(Arc::new(State {
            locs,
            shards: Arc::new(shards),
            seq: cur.seq,
        }));
        self.publish_hint(cur.seq, w.next_shard);
        drop(w);
        drop(cur);
        for shard in &old {
            shard.obsolete.store(true, Ordering::Release);
        }
        drop(old);
        drop(base);

        report.orphans_removed = self.remove_orphans(&plan.orphan_files)?;
        tracing::info!(
            shards = ?plan.shards,
            new = ?report.new_shards,
            copied = report.records_copied,
            seconds = t.elapsed().as_secs_f64(),
            "compaction finished"
        );
        report.plan = plan;
        Ok(report)
    }

    /// Copies the records at `sources` (sorted by location) into new shard files.
    fn copy_records(
        &self,
        base: &State,
        sources: &[(Loc, u64)],
        created: &mut Vec<PathBuf>,
    ) -> Result<(Vec<Moved>, Vec<NewShard>)> {
        let rs = self.layout.record_size;
        let cap = self.layout.slots_per_shard(self.config.shard_size);
        let mut moved = Vec::with_capacity(sources.len());
        let mut new_shards = Vec::new();
        let progress = self.progress();
        let task = Task::start(&*progress, "compact", sources.len() as u64);
        for s in base.shards.values() {
            s.advise_sequential();
        }
        for chunk in sources.chunks(cap as usize) {
            let shard_id = {
                let mut w = self.writer.lock();
                if let Some(reason) = &w.poisoned {
                    return Err(StoreError::Poisoned {
                        reason: reason.clone(),
                    });
                }
                let id = w.next_shard;
                w.next_shard += 1;
                id
            };
            let header = ShardHeader {
                version: SHARD_FORMAT_VERSION,
                shard_id,
                layout: self.layout,
                capacity_slots: cap,
            };
            let path = self.shard_path(shard_id);
            let file = create_shard_file(&path, &header)?;
            created.push(path.clone());
            let mut buf: Vec<u8> = Vec::with_capacity(WRITE_CHUNK.min(chunk.len() * rs) + rs);
            let mut flushed = 0u32;
            for (slot, &(old, id)) in (0u32..).zip(chunk) {
                let corrupt = |reason: &str| StoreError::CorruptRecord {
                    id,
                    shard: old.shard,
                    offset: self.layout.slot_offset(old.slot),
                    reason: reason.into(),
                };
                let src = base
                    .shards
                    .get(&old.shard)
                    .ok_or_else(|| corrupt("shard not open"))?;
                // The same check a read makes, recomputed (never the verified cache): a
                // corrupt record must stop the rewrite, not be copied.
                let h = src.check_slot(old.slot, id)?;
                let bytes = src
                    .record_bytes(old.slot)
                    .ok_or_else(|| corrupt("record outside the mapping"))?;
                buf.extend_from_slice(bytes);
                moved.push(Moved {
                    id,
                    old,
                    new: Loc {
                        shard: shard_id,
                        slot,
                    },
                    seq: h.seq,
                });
                if buf.len() >= WRITE_CHUNK {
                    crate::fs::write_all_at(&path, &file, &buf, self.layout.slot_offset(flushed))
                        .map_err(|e| StoreError::io(&path, e))?;
                    flushed += (buf.len() / rs) as u32;
                    buf.clear();
                }
                task.advance(1);
            }
            if !buf.is_empty() {
                crate::fs::write_all_at(&path, &file, &buf, self.layout.slot_offset(flushed))
                    .map_err(|e| StoreError::io(&path, e))?;
            }
            crate::fs::sync(&path, &file, false).map_err(|e| StoreError::io(&path, e))?;
            let shard = Shard::map(&file, path, &header)?;
            new_shards.push(NewShard {
                id: shard_id,
                used: chunk.len() as u32,
                shard: Arc::new(shard),
            });
        }
        drop(task);
        if !new_shards.is_empty() {
            sync_dir(&self.dir.shards())?;
        }
        Ok((moved, new_shards))
    }

    /// Deletes the given orphan files (those still known as orphans). A file whose shard
    /// id is open is never deleted, whatever the list says.
    fn remove_orphans(&self, files: &[OrphanFile]) -> Result<u64> {
        if files.is_empty() {
            return Ok(0);
        }
        let open = self.state.load_full();
        let mut removed = 0u64;
        let mut orphans = self.orphans.lock();
        orphans.retain(|o| {
            if !files.contains(o) {
                return true;
            }
            let id = o
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_shard_file_name);
            if id.is_none_or(|id| open.shards.contains_key(&id)) {
                tracing::error!(path = %o.path.display(), "refusing to delete an orphan that names an open shard");
                return true;
            }
            match std::fs::remove_file(&o.path) {
                Ok(()) => {
                    removed += 1;
                    false
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::warn!(path = %o.path.display(), error = %e, "could not delete orphan shard file");
                    true
                }
            }
        });
        drop(orphans);
        if removed > 0 {
            sync_dir(&self.dir.shards())?;
        }
        Ok(removed)
    }
}
