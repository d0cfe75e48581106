//! `mome compact`: reclaim the bytes of deleted experts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use mome::{CompactionPlan, CompactionPolicy};
use serde_json::json;

/// Long help of the subcommand.
pub const LONG_ABOUT: &str =
    "Rewrite sparse sealed shards to reclaim the bytes of deleted experts.\n\n\
    The policy picks sealed shards whose live fraction is below --min-live-fraction \
    (sparsest first) and merges small sealed shards; the active shard is never rewritten. \
    Live records are copied (checksums re-checked) into new shards, the metadata switches \
    in one synced batch, and old files are deleted once no reader uses them. Orphan shard \
    files (left by crashes) are deleted. Safe against a crash at any point.";

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Show the plan without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Rewrite sealed shards whose live records are fewer than this fraction of their records.
    #[arg(long, default_value_t = CompactionPolicy::default().min_live_fraction)]
    min_live_fraction: f64,
    /// Merge sealed shards whose live records fill less than this fraction of a shard.
    #[arg(long, default_value_t = CompactionPolicy::default().merge_below_fraction)]
    merge_below_fraction: f64,
    /// Copy at most this many MiB of live records in one run (default: no bound).
    #[arg(long)]
    max_rewrite_mib: Option<u64>,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

fn plan_json(p: &CompactionPlan) -> serde_json::Value {
    json!({
        "shards": p.shards, "live_records": p.live_records,
        "dropped_records": p.dropped_records, "output_shards": p.output_shards,
        "bytes_before": p.bytes_before, "bytes_after": p.bytes_after,
        "reclaimed_bytes": p.reclaimed_bytes(),
        "orphan_files": p.orphan_files.iter().map(|o| o.path.display().to_string()).collect::<Vec<_>>(),
    })
}

fn print_plan(p: &CompactionPlan) {
    if p.is_empty() {
        outln!("nothing to compact");
        return;
    }
    outln!(
        "shards to rewrite: {:?} ({} live records copied into {} new shards, {} dropped)",
        p.shards,
        p.live_records,
        p.output_shards,
        p.dropped_records
    );
    for o in &p.orphan_files {
        outln!(
            "orphan file to delete: {} ({} bytes)",
            o.path.display(),
            o.bytes
        );
    }
    outln!(
        "bytes: {} → {} in rewritten shards; {} reclaimed in all",
        p.bytes_before,
        p.bytes_after,
        p.reclaimed_bytes()
    );
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut policy = CompactionPolicy::default();
    policy.min_live_fraction = args.min_live_fraction;
    policy.merge_below_fraction = args.merge_below_fraction;
    if let Some(mib) = args.max_rewrite_mib {
        policy.max_rewrite_bytes = mib.saturating_mul(1 << 20);
    }
    policy.validate()?;
    let store = crate::open_store(&args.db)?;
    if args.dry_run {
        let plan = store.compaction_plan(&policy)?;
        if args.json {
            outln!("{}", json!({"dry_run": true, "plan": plan_json(&plan)}));
        } else {
            outln!("dry run: nothing is changed");
            print_plan(&plan);
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The store does not read the index's files: the horizon of tombstones the saved
    // index has seen comes from the index layer.
    let r = store.compact(&policy, mome::tombstone_horizon(&args.db))?;
    if args.json {
        outln!(
            "{}",
            json!({
                "dry_run": false, "plan": plan_json(&r.plan), "new_shards": r.new_shards,
                "records_copied": r.records_copied,
                "deleted_during_copy": r.deleted_during_copy,
                "tombstones_purged": r.tombstones_purged,
                "tombstones_kept": r.tombstones_kept,
                "orphans_removed": r.orphans_removed,
            })
        );
    } else {
        print_plan(&r.plan);
        if !r.plan.is_empty() || r.tombstones_purged > 0 {
            outln!(
                "done: {} records copied into shards {:?}; {} tombstones purged, {} kept until the index is saved past them; {} orphan files removed",
                r.records_copied,
                r.new_shards,
                r.tombstones_purged,
                r.tombstones_kept,
                r.orphans_removed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
