//! `mome delete`: tombstone experts in the store and remove them from the index.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use mome::ExpertIndex;
use serde_json::json;

/// Long help of the subcommand.
pub const LONG_ABOUT: &str = "Delete experts: one synced commit writes their tombstones (all or \
    none: an unknown id deletes nothing), then they leave the index. Their bytes stay in \
    their shards until `mome compact` reclaims them.";

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Expert to delete (repeat for several).
    #[arg(long, required = true)]
    expert: Vec<u64>,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let store = Arc::new(crate::open_store(&args.db)?);
    let index = ExpertIndex::open(store).context("opening the index")?;
    index.delete_batch(&args.expert)?;
    index.save().context("saving the index")?;
    if args.json {
        outln!(
            "{}",
            json!({"deleted": args.expert, "seq": index.store().seq()})
        );
    } else {
        for id in &args.expert {
            outln!("deleted expert {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
