//! The full consistency check: every committed record's checksum, and the agreement of
//! locations, tombstones and shards. Problems are collected, not returned as the first
//! error, so that an operator sees all of them at once.

use std::collections::BTreeMap;

use super::error::StoreResult as Result;
use super::shard;
use super::Store;
use crate::progress::Task;

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

impl Store {
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
        let progress = self.progress();
        let task = Task::start(&*progress, "verify", total);
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
                task.advance(1);
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
        drop(task);
        tracing::info!(
            checked = report.records_checked,
            problems = report.problems.len(),
            "verify finished"
        );
        Ok(report)
    }
}
