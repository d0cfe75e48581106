//! `mome stats`: experts, shards, orphans, index coverage, config, usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use mome::{ShardState, Store};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Experts listed as most and least used.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

/// Selection counts of the live experts.
struct Usage {
    total: u64,
    used: u64,
    never: u64,
    most: Vec<(u64, u64)>,
    least: Vec<(u64, u64)>,
}

fn usage(store: &Store, top: usize) -> Result<Usage> {
    let snap = store.snapshot();
    let mut counts: Vec<(u64, u64)> = Vec::new();
    store.scan_usage(|id, n| {
        if n > 0 && snap.contains(id) {
            counts.push((id, n));
        }
    })?;
    let total = counts.iter().map(|c| c.1).sum();
    let used = counts.len() as u64;
    let never = snap.len() - used;
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let most = counts.iter().take(top).copied().collect();
    // Least used: experts never selected first (lowest ids), then the smallest counts.
    let mut least: Vec<(u64, u64)> = Vec::new();
    if never > 0 {
        let mut with: Vec<u64> = counts.iter().map(|c| c.0).collect();
        with.sort_unstable();
        least.extend(
            snap.ids()
                .filter(|id| with.binary_search(id).is_err())
                .take(top)
                .map(|id| (id, 0)),
        );
    }
    least.extend(
        counts
            .iter()
            .rev()
            .take(top - least.len().min(top))
            .copied(),
    );
    Ok(Usage {
        total,
        used,
        never,
        most,
        least,
    })
}

fn state_name(s: ShardState) -> String {
    format!("{s:?}").to_lowercase()
}

pub fn run(args: Args) -> Result<ExitCode> {
    let store = crate::open_store_read_only(&args.db)?;
    let s = store.stats()?;
    let orphan_bytes: u64 = s.orphan_files.iter().map(|o| o.bytes).sum();
    let shard_bytes: u64 = s.shards.iter().map(|sh| sh.bytes).sum();
    let index = mome::saved_index_info(&args.db);
    let usage = usage(&store, args.top)?;
    if args.json {
        let shards: Vec<_> = s
            .shards
            .iter()
            .map(|sh| {
                json!({
                    "id": sh.id, "state": state_name(sh.state),
                    "used_slots": sh.used_slots, "capacity_slots": sh.capacity_slots,
                    "live": sh.live, "dead": sh.dead,
                    "bytes": sh.bytes, "live_fraction": sh.live_fraction(),
                })
            })
            .collect();
        let index = match &index {
            Ok(Some(i)) => json!({
                "present": true, "kind": i.params.kind, "params": i.params, "keys": i.count,
                "file_bytes": i.file_bytes, "seq": i.seq,
                "behind": s.seq.saturating_sub(i.seq),
            }),
            Ok(None) => json!({"present": false}),
            Err(e) => json!({"present": true, "error": e.to_string()}),
        };
        let pairs = |v: &[(u64, u64)]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|&(id, n)| json!({"id": id, "count": n}))
                .collect()
        };
        outln!(
            "{}",
            json!({
                "live": s.live, "deleted": s.deleted,
                "reclaimed_tombstones": s.reclaimed_tombstones, "seq": s.seq,
                "next_id": store.next_id(),
                "record_size": s.record_size, "shard_count": s.shards.len(),
                "shard_bytes": shard_bytes, "orphan_slots": s.orphan_slots,
                "orphan_files": s.orphan_files.iter().map(|o| json!({
                    "path": o.path.display().to_string(), "bytes": o.bytes
                })).collect::<Vec<_>>(),
                "orphan_bytes": orphan_bytes,
                "config": store.config(), "shards": shards, "index": index,
                "usage": {
                    "total_selections": usage.total, "experts_used": usage.used,
                    "experts_never_used": usage.never,
                    "most_used": pairs(&usage.most), "least_used": pairs(&usage.least),
                },
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let c = store.config();
    outln!("store {}", args.db.display());
    outln!(
        "  config: d_model {}, key_dim {}, rank {}, layers {:?}, query layer {}, {:?}, shard size {} bytes, backbone {}",
        c.d_model,
        c.key_dim,
        c.rank,
        c.layers,
        c.query_layer,
        c.dtype,
        c.shard_size,
        if c.backbone_digest.is_empty() { "(unknown)" } else { &c.backbone_digest }
    );
    outln!(
        "  experts: {} live, {} deleted (bytes not reclaimed), {} tombstones kept for the index; seq {}, next id {}",
        s.live,
        s.deleted,
        s.reclaimed_tombstones,
        s.seq,
        store.next_id()
    );
    outln!(
        "  shards: {} files, {} bytes; record size {} bytes",
        s.shards.len(),
        shard_bytes,
        s.record_size
    );
    outln!(
        "  orphans: {} slots, {} files ({} bytes)",
        s.orphan_slots,
        s.orphan_files.len(),
        orphan_bytes
    );
    for o in &s.orphan_files {
        outln!("    {} ({} bytes)", o.path.display(), o.bytes);
    }
    match &index {
        Ok(Some(i)) => outln!(
            "  index: {:?}, {} keys, {} bytes on disk, covers seq {} ({} commits behind; caught up on open)",
            i.params.kind,
            i.count,
            i.file_bytes,
            i.seq,
            s.seq.saturating_sub(i.seq)
        ),
        Ok(None) => outln!("  index: none saved (built on first open)"),
        Err(e) => outln!("  index: unreadable metadata ({e}); rebuilt on next open"),
    }
    outln!(
        "  usage: {} selections; {} experts used, {} never",
        usage.total,
        usage.used,
        usage.never
    );
    let list = |v: &[(u64, u64)]| -> String {
        v.iter()
            .map(|(id, n)| format!("{id} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !usage.most.is_empty() {
        outln!("    most used:  {}", list(&usage.most));
    }
    if !usage.least.is_empty() {
        outln!("    least used: {}", list(&usage.least));
    }
    outln!("  shard  state   used   live   dead  live%     bytes");
    for sh in &s.shards {
        outln!(
            "  {:>5}  {:<6} {:>6} {:>6} {:>6} {:>5.1} {:>9}",
            sh.id,
            state_name(sh.state),
            sh.used_slots,
            sh.live,
            sh.dead,
            sh.live_fraction() * 100.0,
            sh.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
