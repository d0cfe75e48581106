//! `mome`: the engine's command-line tool (admin and demo).
//!
//! Every subcommand opens the store itself — commands that write take its writer lock;
//! `ask`, `search`, `eval`, `stats`, `inspect`, `verify` (without `--repair`) and
//! `export` open it read-only and so run beside a writer — prints a human report or,
//! with `--json`, one JSON object on stdout, and exits non-zero when it
//! finds a problem or fails. Progress bars go to stderr, only on a terminal.

#![recursion_limit = "256"]
// One output path (`outln!`): a bare println! panics when the reader has gone.
#![warn(clippy::print_stdout)]

/// Writes one line to stdout: the tool's one output path. A reader that has gone away
/// (`mome stats | head -1`) must not turn into a panic, and a command's work does not
/// depend on anyone reading its report, so a failed write is dropped and the command
/// ends with the status its work earned.
macro_rules! outln {
    () => {
        $crate::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out_line(format_args!($($arg)*))
    };
}

fn out_line(line: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
}

mod archive;
mod bench;
// Scale-out tier (issue 20): `mome node`, `mome cluster ...`.
mod cluster;
mod cluster_bench;
mod node;
// Memory tuning subcommands (issue 7), one file each.
mod ask;
mod compact;
mod delete;
mod eval;
mod forget;
mod inspect;
mod memorize;
mod migrate;
mod progress;
mod search;
mod smoke;
mod stats;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mome::Store;

#[derive(Parser)]
#[command(
    name = "mome",
    version,
    about = "Memory experts for a frozen transformer: admin and demo tool",
    long_about = "Memory experts for a frozen transformer: admin and demo tool.\n\n\
        Every command takes the store directory with --db, prints a report (or one JSON \
        object with --json) and exits with status 1 when it finds a problem or fails."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Memorize facts from a JSONL file: train one expert per fact, verify, commit.
    Memorize(memorize::Args),
    /// Answer a prompt with the experts the engine selects.
    Ask(ask::Args),
    /// Evaluate selection: exact recall, rewordings, near-misses, leaks, two-fact questions, locality.
    Eval(eval::Args),
    /// Store smoke demo: create a store, insert random experts durably, reopen, read them back.
    Smoke(smoke::Args),
    /// Store statistics: experts, shards, orphans, index coverage, config, usage.
    Stats(stats::Args),
    /// One expert (metadata, provenance, norms, checksum) or one shard's records.
    Inspect(inspect::Args),
    /// Check every record's checksum and metadata ⇄ shards ⇄ index consistency.
    Verify(verify::Args),
    /// Rewrite sparse shards to reclaim the bytes of deleted experts.
    #[command(long_about = compact::LONG_ABOUT)]
    Compact(compact::Args),
    /// Write every live expert to a portable, checksummed archive.
    #[command(long_about = archive::EXPORT_LONG_ABOUT)]
    Export(archive::ExportArgs),
    /// Insert the experts of an archive (new ids); the index follows.
    #[command(long_about = archive::IMPORT_LONG_ABOUT)]
    Import(archive::ImportArgs),
    /// Both selection stages for a prompt: retrieval hits with cosines, and the facts the rule chose.
    #[command(long_about = search::LONG_ABOUT)]
    Search(search::Args),
    /// Delete experts: tombstone in the store, removal from the index.
    #[command(long_about = delete::LONG_ABOUT)]
    Delete(delete::Args),
    /// Forget a fact by its prompt: its experts are deleted in one commit.
    #[command(long_about = forget::LONG_ABOUT)]
    Forget(forget::Args),
    /// Carry a store written for an earlier selection rule over to this build's rule.
    #[command(long_about = migrate::LONG_ABOUT)]
    Migrate(migrate::Args),
    /// Benchmarks: `mome bench lookup --experts N` (latency, recall, ingest; peers).
    Bench(Box<bench::Args>),
    /// Run a node of a scale-out cluster (etcd + S3 object storage).
    #[command(long_about = node::LONG_ABOUT)]
    Node(node::Args),
    /// Administer a scale-out cluster: init, status, shards, rebalance.
    Cluster(cluster::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Memorize(a) => memorize::run(a),
        Cmd::Ask(a) => ask::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Smoke(a) => smoke::run(a),
        Cmd::Stats(a) => stats::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Verify(a) => verify::run(a),
        Cmd::Compact(a) => compact::run(a),
        Cmd::Export(a) => archive::export(a),
        Cmd::Import(a) => archive::import(a),
        Cmd::Search(a) => search::run(a),
        Cmd::Delete(a) => delete::run(a),
        Cmd::Forget(a) => forget::run(a),
        Cmd::Migrate(a) => migrate::run(a),
        Cmd::Bench(a) => bench::run(*a),
        Cmd::Node(a) => node::run(a),
        Cmd::Cluster(a) => cluster::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens an existing store, saying which directory failed; its long operations draw
/// progress bars on a terminal.
fn open_store(db: &Path) -> Result<Store> {
    let store = Store::open(db).with_context(|| format!("opening store {}", db.display()))?;
    store.set_progress(progress::terminal());
    Ok(store)
}

/// Opens an existing store for reading beside a writer (another process may be
/// memorizing, inserting or compacting); its long operations draw progress bars.
fn open_store_read_only(db: &Path) -> Result<Store> {
    let store = Store::open_read_only(db)
        .with_context(|| format!("opening store {} read-only", db.display()))?;
    store.set_progress(progress::terminal());
    Ok(store)
}

/// Success unless `problems` is non-zero.
fn exit_for(problems: usize) -> ExitCode {
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `Some(v)` as its value, `None` as `?`.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}
