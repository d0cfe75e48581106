//! `mome bench lookup`: lookup latency at millions of experts, next to raw usearch (in
//! this process) and the Python peers (FAISS HNSW, LanceDB; `tools/bench-peers.sh`) on
//! the same keys in the same run.
//!
//! Phases: generate clustered keys (rounded to f16 once, so that every system sees the
//! same vectors) and random fp16 weights; ingest them durably into a new store; build
//! the engine's index from the store; build raw usearch with the same parameters;
//! compute exact top-10 answers for a sample of queries; time every path; optionally
//! export the data and run the peers; print a table or one JSON object.
//!
//! One file per part: `lookup.rs` (the phases and the timed paths), `report.rs` (the
//! JSON object, the table, the machine's figures), `peers.rs` (the export for the Python
//! peers and their run).

mod lookup;
mod peers;
mod report;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Lookup latency, recall and ingest at N synthetic experts, with peers.
    #[command(long_about = LOOKUP_ABOUT)]
    Lookup(LookupArgs),
}

const LOOKUP_ABOUT: &str = "Lookup latency, recall and ingest at N synthetic experts.\n\n\
    Generates N experts (keys from a clustered distribution, random fp16 weights), ingests \
    them durably, builds the index and times the full lookup path: query → top-K ids \
    (--candidates) → resolved zero-copy weight views of those K experts (what the fused \
    operator receives), single queries and batches, and separately with every weight \
    byte read. Raw usearch with the same parameters runs on the same keys in the same \
    process; --peers also runs FAISS HNSW and LanceDB (tools/bench-peers.sh, a local \
    Python virtual environment) on an export of the same data.";

#[derive(clap::Args)]
struct LookupArgs {
    /// Number of experts.
    #[arg(long)]
    experts: usize,
    /// Key (and query) dimension.
    #[arg(long, default_value_t = 576)]
    key_dim: u32,
    /// Hidden size of the adapters (default: the key dimension).
    #[arg(long)]
    d_model: Option<u32>,
    /// Adapter rank.
    #[arg(long, default_value_t = 8)]
    rank: u32,
    /// Number of adapted layers (ids 0..L unless --layer-ids is given).
    #[arg(long, default_value_t = 1)]
    layers: u32,
    /// Adapted layer ids, comma-separated (e.g. 23,26,29 to build a store the engine can
    /// open with the SmolLM2 backbone); overrides --layers.
    #[arg(long, value_delimiter = ',')]
    layer_ids: Vec<u32>,
    /// Query layer recorded in the store (with --layer-ids).
    #[arg(long)]
    query_layer: Option<u32>,
    /// Clusters of the key distribution.
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Timed queries per path.
    #[arg(long, default_value_t = 5000)]
    queries: usize,
    /// Candidates per lookup (top-K ids whose weights are resolved).
    #[arg(long, default_value_t = 32)]
    candidates: usize,
    /// Queries per batched call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Queries with exact answers for recall@10.
    #[arg(long, default_value_t = 300)]
    recall_sample: usize,
    /// HNSW connectivity (M).
    #[arg(long)]
    connectivity: Option<usize>,
    /// HNSW expansion while adding (ef_construction).
    #[arg(long)]
    expansion_add: Option<usize>,
    /// HNSW expansion while searching (ef).
    #[arg(long)]
    expansion_search: Option<usize>,
    /// The engine's HNSW vector storage (raw usearch and FAISS stay f16 / f32).
    #[arg(long, value_enum, default_value_t = Quant::F16)]
    quantization: Quant,
    /// Candidates re-ranked exactly with the shards' fp16 keys (0: none).
    #[arg(long, default_value_t = 0)]
    rerank: usize,
    /// Sweep: engine storages to build in turn (each an index rebuilt from the store).
    #[arg(long, value_enum, value_delimiter = ',')]
    sweep_quantization: Vec<Quant>,
    /// Sweep: ef values (for the engine and, with --peers, FAISS).
    #[arg(long, value_delimiter = ',')]
    sweep_ef: Vec<usize>,
    /// Sweep: re-rank widths for the engine (0: none).
    #[arg(long, value_delimiter = ',')]
    sweep_rerank: Vec<usize>,
    /// Sweep: the engine's graph search, usearch's and/or the crate's own over a copy
    /// of the same graph (`own`: i8 storages only; f16 ones skip it).
    #[arg(long, value_enum, value_delimiter = ',')]
    sweep_traversal: Vec<Traversal>,
    /// Experts per durable insert batch (one group commit each).
    #[arg(long, default_value_t = 1000)]
    ingest_batch: usize,
    /// Store directory to create (must not exist or be empty); default: a temporary one.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Create the store at --db or continue the one a killed run left there: experts are
    /// stored and indexed batch by batch and the index saved every --save-every, so a
    /// long build (10M experts) survives a restart. Keeps the store.
    #[arg(long)]
    resume: bool,
    /// With --resume: experts between index saves.
    #[arg(long, default_value_t = 1_000_000)]
    save_every: usize,
    /// Skip raw usearch (a second full graph build, in memory beside the engine's keys).
    #[arg(long)]
    no_raw: bool,
    /// Leave the store in place (for the admin tool) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Also run the Python peers (FAISS HNSW, LanceDB) on the same data.
    #[arg(long)]
    peers: bool,
    /// Peers to run (comma-separated, passed to the script).
    #[arg(long, default_value = "faiss,lancedb")]
    peer_systems: String,
    /// The peers' script.
    #[arg(long, default_value = "tools/bench-peers.sh")]
    peers_script: PathBuf,
    /// Where the data for the peers is exported (default: next to the store).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also write the JSON object to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Machine-readable output (one JSON object on stdout).
    #[arg(long)]
    json: bool,
}

/// Vector storage of the engine's index, as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Quant {
    F16,
    I8,
}

impl Quant {
    fn to_index(self) -> mome::Quantization {
        match self {
            Quant::F16 => mome::Quantization::F16,
            Quant::I8 => mome::Quantization::I8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Quant::F16 => "f16",
            Quant::I8 => "i8",
        }
    }
}

/// Whose graph search the engine runs, as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Traversal {
    /// usearch's own search (the default path).
    Usearch,
    /// The crate's own search over a read-only copy of usearch's i8 graph.
    Own,
}

impl Traversal {
    fn name(self) -> &'static str {
        match self {
            Traversal::Usearch => "usearch",
            Traversal::Own => "own",
        }
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.cmd {
        Cmd::Lookup(a) => lookup::lookup(a),
    }
}

/// Latency percentiles of one path, in microseconds.
#[derive(Clone, Copy, Default)]
pub(super) struct Lat {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
}

impl Lat {
    fn of(mut v: Vec<Duration>) -> Lat {
        if v.is_empty() {
            return Lat::default();
        }
        v.sort_unstable();
        let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
        Lat {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

/// One path's measurements.
pub(super) struct Row {
    pub(super) system: String,
    pub(super) path: &'static str,
    pub(super) lat: Lat,
    pub(super) recall: Option<f64>,
    /// Batched throughput on all threads, queries per second (batched paths only).
    pub(super) qps: Option<f64>,
}

/// Phase lines go to stderr, so that --json output stays one object on stdout.
pub(super) fn say(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let l = Lat::of(v);
        // Nearest rank: index round((n - 1) · p) of the sorted values.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(l.p50, 501.0), "{}", l.p50);
        assert!(close(l.p99, 990.0), "{}", l.p99);
        assert!(close(l.p999, 999.0), "{}", l.p999);
        assert_eq!(Lat::of(Vec::new()).p50, 0.0);
    }
}
