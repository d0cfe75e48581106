//! `mome export` / `mome import`: portable, checksummed archives of experts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use mome::ExpertIndex;
use serde_json::json;

/// Long help of the subcommand.
pub const EXPORT_LONG_ABOUT: &str =
    "Write every live expert (key, adapter weights, provenance, usage) \
    to a portable archive: a header with the store's config, one checksummed record per \
    expert, and a trailer with the count and a whole-file checksum (format in \
    ARCHITECTURE.md §Archive). The file appears under its name only once complete.";

/// Long help of the subcommand.
pub const IMPORT_LONG_ABOUT: &str =
    "Insert the experts of an archive into a store, with new ids; the \
    index follows. The whole archive is read and checked first: an archive whose config \
    differs from the store's (any field but shard_size), or that is truncated or malformed, \
    is refused before anything is written. Experts keep their creation times and usage \
    counts. Resumable and idempotent by archive id (a digest of the file): an import that \
    was interrupted is finished by running the same command again, and an archive already \
    imported inserts nothing.";

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Archive to write (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Store directory (an existing store).
    #[arg(long)]
    db: PathBuf,
    /// Archive to read.
    #[arg(long = "in")]
    input: PathBuf,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

pub fn export(args: ExportArgs) -> Result<ExitCode> {
    let store = crate::open_store_read_only(&args.db)?;
    let r = mome::export_archive(&store, &args.out)
        .with_context(|| format!("exporting to {}", args.out.display()))?;
    if args.json {
        outln!(
            "{}",
            json!({"experts": r.experts, "bytes": r.bytes, "seq": r.seq, "out": args.out.display().to_string()})
        );
    } else {
        outln!(
            "exported {} experts ({} bytes, store seq {}) to {}",
            r.experts,
            r.bytes,
            r.seq,
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(args: ImportArgs) -> Result<ExitCode> {
    let store = Arc::new(crate::open_store(&args.db)?);
    let index = ExpertIndex::open(store).context("opening the index")?;
    let r = mome::import_archive(&index, &args.input)
        .with_context(|| format!("importing {}", args.input.display()))?;
    index.save().context("saving the index")?;
    let (first, last) = (r.ids.first().copied(), r.ids.last().copied());
    if args.json {
        outln!(
            "{}",
            json!({"experts": r.experts, "first_id": first, "last_id": last,
                   "skipped": r.skipped, "archive_id": r.archive_id})
        );
    } else if r.experts == 0 && r.skipped > 0 {
        outln!(
            "archive {} ({}) was imported before: its {} experts are already in the store; nothing inserted",
            args.input.display(),
            r.archive_id,
            r.skipped
        );
    } else {
        let resumed = if r.skipped > 0 {
            format!(", resuming an earlier import: {} already there", r.skipped)
        } else {
            String::new()
        };
        outln!(
            "imported {} experts from {} (new ids {}..={}{resumed})",
            r.experts,
            args.input.display(),
            crate::opt(first),
            crate::opt(last)
        );
    }
    Ok(ExitCode::SUCCESS)
}
