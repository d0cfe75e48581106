//! The compaction policy: a pure function of per-shard figures that says which sealed
//! shards to rewrite and which orphan files to delete ("inputs in, choice out": the
//! runner in `mod.rs` carries the plan out).

use super::super::error::{StoreError, StoreResult as Result};
use super::super::inspect::{OrphanFile, ShardStats};
use super::super::layout::HEADER_SIZE;
use super::super::meta::ShardState;

/// Which shards compaction rewrites. See [`plan_compaction`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CompactionPolicy {
    /// A sealed shard whose live records are fewer than this fraction of its committed
    /// records is rewritten (0.5: at most half of a rewritten shard's bytes are copied).
    pub min_live_fraction: f64,
    /// Sealed shards whose live records would fill less than this fraction of a new
    /// shard are merged together (small shards are left by earlier compactions).
    pub merge_below_fraction: f64,
    /// Upper bound on live bytes copied by one run, so that work comes in bounded steps.
    /// A shard with no live record costs nothing and is always taken; the first shard
    /// with live records is taken even if it alone exceeds the bound.
    pub max_rewrite_bytes: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            min_live_fraction: 0.5,
            merge_below_fraction: 0.25,
            max_rewrite_bytes: u64::MAX,
        }
    }
}

impl CompactionPolicy {
    /// Checks that the fractions lie in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("min_live_fraction", self.min_live_fraction),
            ("merge_below_fraction", self.merge_below_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(StoreError::InvalidArgument {
                    name,
                    reason: format!("must be between 0 and 1, got {v}"),
                });
            }
        }
        Ok(())
    }
}

/// What one compaction run will do.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CompactionPlan {
    /// Sealed shards to rewrite, in the order chosen.
    pub shards: Vec<u32>,
    /// Live records to copy.
    pub live_records: u64,
    /// Committed slots of the chosen shards that are not copied (deleted or unreferenced).
    pub dropped_records: u64,
    /// New shard files the copies fill.
    pub output_shards: u64,
    /// File bytes of the chosen shards.
    pub bytes_before: u64,
    /// File bytes of the new shards.
    pub bytes_after: u64,
    /// Unreferenced shard files to delete.
    pub orphan_files: Vec<OrphanFile>,
}

impl CompactionPlan {
    /// Whether the run would change nothing.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty() && self.orphan_files.is_empty()
    }

    /// Disk bytes the run frees: rewritten shards' surplus plus orphan files.
    pub fn reclaimed_bytes(&self) -> u64 {
        self.bytes_before.saturating_sub(self.bytes_after)
            + self.orphan_files.iter().map(|o| o.bytes).sum::<u64>()
    }
}

/// What a compaction run did.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// The plan that was carried out.
    pub plan: CompactionPlan,
    /// Ids of the shards written.
    pub new_shards: Vec<u32>,
    /// Records copied.
    pub records_copied: u64,
    /// Copied experts deleted while the copy ran (their copies are dead records now).
    pub deleted_during_copy: u64,
    /// Tombstones removed: their bytes are gone and the saved index has seen the delete.
    pub tombstones_purged: u64,
    /// Tombstones of reclaimed bytes kept because the saved index has not seen the delete.
    pub tombstones_kept: u64,
    /// Orphan files deleted.
    pub orphans_removed: u64,
}

/// The compaction policy: which sealed shards to rewrite, given every shard's figures.
///
/// * Shards with a live fraction below `min_live_fraction` are chosen, sparsest first.
/// * Sealed shards whose live records fill less than `merge_below_fraction` of a new
///   shard (`slots_per_shard`) join when at least two of them exist or another shard is
///   rewritten anyway, smallest first.
/// * Live bytes copied stay within `max_rewrite_bytes` (see [`CompactionPolicy`]).
/// * A choice that frees no dead record and does not reduce the number of shards is
///   dropped, so that compacting a compacted store does nothing.
/// * The active shard is never chosen. Every orphan file is deleted.
pub fn plan_compaction(
    shards: &[ShardStats],
    orphans: &[OrphanFile],
    record_size: usize,
    slots_per_shard: u32,
    policy: &CompactionPolicy,
) -> CompactionPlan {
    let sealed: Vec<&ShardStats> = shards
        .iter()
        .filter(|s| s.state == ShardState::Sealed && s.used_slots > 0)
        .collect();
    let mut sparse: Vec<&ShardStats> = sealed
        .iter()
        .copied()
        .filter(|s| s.live_fraction() < policy.min_live_fraction)
        .collect();
    sparse.sort_by(|a, b| {
        a.live_fraction()
            .total_cmp(&b.live_fraction())
            .then(a.id.cmp(&b.id))
    });
    let small_limit = policy.merge_below_fraction * f64::from(slots_per_shard.max(1));
    let mut small: Vec<&ShardStats> = sealed
        .iter()
        .copied()
        .filter(|s| {
            s.live_fraction() >= policy.min_live_fraction && f64::from(s.live) < small_limit
        })
        .collect();
    small.sort_by_key(|s| (s.live, s.id));
    let mut candidates = sparse;
    if small.len() >= 2 || !candidates.is_empty() {
        candidates.extend(small);
    }

    let mut chosen: Vec<&ShardStats> = Vec::new();
    let mut cost = 0u64;
    for s in candidates {
        let bytes = u64::from(s.live) * record_size as u64;
        // The first shard with live records is taken whatever its size, so that every run
        // makes progress.
        if bytes > 0 && cost > 0 && cost.saturating_add(bytes) > policy.max_rewrite_bytes {
            continue;
        }
        cost = cost.saturating_add(bytes);
        chosen.push(s);
    }

    let live: u64 = chosen.iter().map(|s| u64::from(s.live)).sum();
    let used: u64 = chosen.iter().map(|s| u64::from(s.used_slots)).sum();
    let output_shards = live.div_ceil(u64::from(slots_per_shard.max(1)));
    if used == live && output_shards >= chosen.len() as u64 {
        chosen.clear();
    }
    let live: u64 = chosen.iter().map(|s| u64::from(s.live)).sum();
    let output_shards = live.div_ceil(u64::from(slots_per_shard.max(1)));
    CompactionPlan {
        shards: chosen.iter().map(|s| s.id).collect(),
        live_records: live,
        dropped_records: chosen
            .iter()
            .map(|s| u64::from(s.used_slots - s.live.min(s.used_slots)))
            .sum(),
        output_shards,
        bytes_before: chosen.iter().map(|s| s.bytes).sum(),
        bytes_after: output_shards * HEADER_SIZE as u64 + live * record_size as u64,
        orphan_files: orphans.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn shard(id: u32, state: ShardState, used: u32, live: u32) -> ShardStats {
        ShardStats {
            id,
            state,
            used_slots: used,
            capacity_slots: 100,
            live,
            dead: used - live,
            bytes: HEADER_SIZE as u64 + u64::from(used) * 1000,
        }
    }

    fn sealed(id: u32, used: u32, live: u32) -> ShardStats {
        shard(id, ShardState::Sealed, used, live)
    }

    fn plan(shards: &[ShardStats], policy: &CompactionPolicy) -> CompactionPlan {
        plan_compaction(shards, &[], 1000, 100, policy)
    }

    /// The shard figures after carrying `p` out (new shards full but the last, sealed).
    fn apply(shards: &[ShardStats], p: &CompactionPlan) -> Vec<ShardStats> {
        let mut out: Vec<ShardStats> = shards
            .iter()
            .filter(|s| !p.shards.contains(&s.id))
            .cloned()
            .collect();
        let mut left = p.live_records as u32;
        let mut id = shards.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        while left > 0 {
            let n = left.min(100);
            out.push(sealed(id, n, n));
            left -= n;
            id += 1;
        }
        out
    }

    #[test]
    fn full_shards_and_the_active_shard_are_left_alone() {
        let shards = vec![
            sealed(1, 100, 100),
            sealed(2, 100, 90),
            shard(3, ShardState::Active, 40, 0),
        ];
        let p = plan(&shards, &CompactionPolicy::default());
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn sparse_shards_are_chosen_sparsest_first() {
        let shards = vec![
            sealed(1, 100, 40),
            sealed(2, 100, 10),
            sealed(3, 100, 50), // exactly at the threshold: kept
            sealed(4, 100, 0),
        ];
        let p = plan(&shards, &CompactionPolicy::default());
        assert_eq!(p.shards, vec![4, 2, 1]);
        assert_eq!(p.live_records, 50);
        assert_eq!(p.dropped_records, 250);
        assert_eq!(p.output_shards, 1);
        assert_eq!(p.bytes_before, 3 * (HEADER_SIZE as u64 + 100_000));
        assert_eq!(p.bytes_after, HEADER_SIZE as u64 + 50_000);
        assert!(p.reclaimed_bytes() > 0);
    }

    #[test]
    fn small_shards_merge_only_in_company() {
        let policy = CompactionPolicy::default();
        // One small, fully live shard alone: rewriting it would change nothing.
        assert!(plan(&[sealed(1, 100, 100), sealed(2, 10, 10)], &policy).is_empty());
        // Two merge into one.
        let p = plan(&[sealed(1, 10, 10), sealed(2, 20, 20)], &policy);
        assert_eq!(p.shards, vec![1, 2]);
        assert_eq!(p.output_shards, 1);
        // One small shard joins a sparse shard that is rewritten anyway.
        let p = plan(&[sealed(1, 100, 30), sealed(2, 20, 20)], &policy);
        assert_eq!(p.shards, vec![1, 2]);
        assert_eq!(p.output_shards, 1);
    }

    #[test]
    fn the_byte_budget_bounds_a_run_but_empty_shards_are_free() {
        let mut policy = CompactionPolicy {
            max_rewrite_bytes: 25_000,
            ..Default::default()
        };
        let shards = vec![sealed(1, 100, 20), sealed(2, 100, 10), sealed(3, 100, 0)];
        let p = plan(&shards, &policy);
        // Sparsest first: 3 (free), 2 (10 records), then 1 would exceed the budget.
        assert_eq!(p.shards, vec![3, 2]);
        policy.max_rewrite_bytes = 0;
        let p = plan(&shards, &policy);
        // The first shard with live records is taken even past the budget: progress.
        assert_eq!(p.shards, vec![3, 2]);
    }

    #[test]
    fn compacting_a_compacted_store_does_nothing() {
        let policy = CompactionPolicy::default();
        let mut shards = vec![
            sealed(1, 100, 5),
            sealed(2, 100, 49),
            sealed(3, 100, 100),
            sealed(4, 100, 30),
            sealed(5, 12, 12),
            sealed(6, 100, 70),
            shard(7, ShardState::Active, 3, 1),
        ];
        for round in 0..3 {
            let p = plan(&shards, &policy);
            if round > 0 {
                assert!(p.is_empty(), "round {round}: {p:?}");
            } else {
                assert!(!p.is_empty());
                let before: u32 = shards.iter().map(|s| s.live).sum();
                shards = apply(&shards, &p);
                assert_eq!(shards.iter().map(|s| s.live).sum::<u32>(), before);
            }
        }
    }

    #[test]
    fn orphans_are_always_deleted_and_policy_is_checked() {
        let orphan = OrphanFile {
            path: PathBuf::from("shards/00000009.shard"),
            bytes: 4096,
        };
        let p = plan_compaction(
            &[sealed(1, 100, 100)],
            std::slice::from_ref(&orphan),
            1000,
            100,
            &CompactionPolicy::default(),
        );
        assert!(p.shards.is_empty());
        assert_eq!(p.orphan_files, vec![orphan]);
        assert_eq!(p.reclaimed_bytes(), 4096);
        let bad = CompactionPolicy {
            min_live_fraction: 1.5,
            ..Default::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(StoreError::InvalidArgument {
                name: "min_live_fraction",
                ..
            })
        ));
    }
}
