//! `mome`: the engine's command-line tool (admin and demo).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use half::f16;
use mome::store::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
use rand::{Rng, SeedableRng};

// Memory tuning subcommands (issue 7), one file each.
mod ask;
mod eval;
mod memorize;

#[derive(Parser)]
#[command(
    name = "mome",
    version,
    about = "Memory experts for a frozen transformer: admin and demo tool"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    // --- memory tuning (issue 7) ---
    /// Memorize facts from a JSONL file: train one expert per fact, verify, commit.
    Memorize(memorize::Args),
    /// Answer a prompt with the experts the engine selects.
    Ask(ask::Args),
    /// Exact recall of facts and locality on unrelated prompts (JSON).
    Eval(eval::Args),
    // --- end memory tuning ---
    /// Store smoke demo: create a store, insert random experts durably, reopen, read them back.
    Smoke {
        /// Store directory (created; must not exist or be empty).
        #[arg(long)]
        db: PathBuf,
        /// Number of experts to insert.
        #[arg(long, default_value_t = 1000)]
        experts: u64,
    },
    /// Store statistics: experts, shards, orphans.
    Stats {
        /// Store directory.
        #[arg(long)]
        db: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check every record's checksum and metadata ⇄ shard consistency.
    Verify {
        /// Store directory.
        #[arg(long)]
        db: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn random_expert(cfg: &StoreConfig, rng: &mut rand::rngs::SmallRng, i: u64) -> NewExpert {
    let mut fill = |n: usize| -> Vec<f16> {
        (0..n)
            .map(|_| f16::from_f32(rng.random_range(-0.05f32..0.05)))
            .collect()
    };
    let mat = (cfg.rank * cfg.d_model) as usize;
    NewExpert {
        key: fill(cfg.key_dim as usize),
        layers: cfg
            .layers
            .iter()
            .map(|_| AdapterPair {
                a: fill(mat),
                b: fill(mat),
            })
            .collect(),
        provenance: Provenance::text(format!("smoke expert {i}")),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Memorize(a) => memorize::run(a),
        Cmd::Ask(a) => ask::run(a),
        Cmd::Eval(a) => eval::run(a),
        Cmd::Smoke { db, experts } => {
            // The reference shape: SmolLM2-135M (d_model 576), rank 8, four adapted layers.
            let cfg = StoreConfig::new(576, 576, 8, vec![8, 12, 16, 20]).with_query_layer(8);
            let store = Store::create(&db, cfg.clone())
                .with_context(|| format!("creating store in {}", db.display()))?;
            let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
            let t = std::time::Instant::now();
            let pb = mome::progress::bar(experts, "insert");
            let mut keys = Vec::new();
            let mut done = 0;
            while done < experts {
                let n = (experts - done).min(64);
                let batch: Vec<NewExpert> = (done..done + n)
                    .map(|i| random_expert(&cfg, &mut rng, i))
                    .collect();
                let first_key = batch[0].key.clone();
                let ids = store.insert_batch(batch)?;
                keys.push((ids[0], first_key));
                done += n;
                pb.inc(n);
            }
            pb.finish_and_clear();
            let secs = t.elapsed().as_secs_f64();
            println!(
                "inserted {experts} experts durably in {secs:.2}s ({:.0} experts/s, {} bytes each)",
                experts as f64 / secs,
                store.layout().record_size
            );
            drop(store);
            let store = Store::open(&db)?;
            anyhow::ensure!(
                store.len() == experts,
                "reopened store has {} experts",
                store.len()
            );
            for (id, key) in &keys {
                let e = store.get(*id)?;
                anyhow::ensure!(e.key() == &key[..], "expert {id} read back different bytes");
            }
            println!(
                "reopened {}: {} experts, spot-checked {} byte-identical",
                db.display(),
                store.len(),
                keys.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { db, json } => {
            let store = Store::open(&db).with_context(|| format!("opening {}", db.display()))?;
            let s = store.stats()?;
            let orphan_bytes: u64 = s.orphan_files.iter().map(|o| o.bytes).sum();
            if json {
                let shards: Vec<_> = s
                    .shards
                    .iter()
                    .map(|sh| {
                        serde_json::json!({
                            "id": sh.id, "state": format!("{:?}", sh.state).to_lowercase(),
                            "used_slots": sh.used_slots, "live": sh.live, "dead": sh.dead,
                            "bytes": sh.bytes, "live_fraction": sh.live_fraction(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "live": s.live, "deleted": s.deleted, "seq": s.seq,
                        "record_size": s.record_size, "orphan_slots": s.orphan_slots,
                        "orphan_files": s.orphan_files.len(), "orphan_bytes": orphan_bytes,
                        "config": store.config(), "shards": shards,
                    })
                );
            } else {
                println!("store {}", db.display());
                println!("  config: {:?}", store.config());
                println!(
                    "  experts: {} live, {} deleted; seq {}",
                    s.live, s.deleted, s.seq
                );
                println!("  record size: {} bytes", s.record_size);
                println!(
                    "  orphans: {} slots, {} files ({} bytes)",
                    s.orphan_slots,
                    s.orphan_files.len(),
                    orphan_bytes
                );
                println!("  shard  state   used   live   dead  live%     bytes");
                for sh in &s.shards {
                    println!(
                        "  {:>5}  {:<6} {:>6} {:>6} {:>6} {:>5.1} {:>9}",
                        sh.id,
                        format!("{:?}", sh.state).to_lowercase(),
                        sh.used_slots,
                        sh.live,
                        sh.dead,
                        sh.live_fraction() * 100.0,
                        sh.bytes
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { db, json } => {
            let store = Store::open(&db).with_context(|| format!("opening {}", db.display()))?;
            let r = store.verify()?;
            if json {
                let problems: Vec<_> = r
                    .problems
                    .iter()
                    .map(|p| serde_json::json!({"id": p.id, "shard": p.shard, "offset": p.offset, "detail": p.detail}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"records_checked": r.records_checked, "problems": problems})
                );
            } else {
                for p in &r.problems {
                    println!(
                        "PROBLEM expert {} shard {} offset {}: {}",
                        p.id.map_or("?".into(), |v| v.to_string()),
                        p.shard.map_or("?".into(), |v| v.to_string()),
                        p.offset.map_or("?".into(), |v| v.to_string()),
                        p.detail
                    );
                }
                println!(
                    "verified {} records: {} problems",
                    r.records_checked,
                    r.problems.len()
                );
            }
            Ok(if r.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
