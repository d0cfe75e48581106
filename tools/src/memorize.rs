//! `mome memorize`: train and commit one expert per fact of a JSONL file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use mome::TuneOptions;
use mome::{Engine, Fact, FactStatus};

/// Arguments of `mome memorize`.
#[derive(clap::Args)]
pub struct Args {
    /// Store directory (created with defaults for the model on first use).
    #[arg(long)]
    db: PathBuf,
    /// Facts, one JSON object per line: {"prompt": "...", "answer": "..."}.
    #[arg(long)]
    facts: PathBuf,
    /// Model file (default: $MOME_MODEL, then the data directory).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Facts trained together (each its own expert).
    #[arg(long, default_value_t = TuneOptions::default().batch_size)]
    batch_size: usize,
    /// Most optimizer steps per batch.
    #[arg(long, default_value_t = TuneOptions::default().max_steps)]
    max_steps: usize,
    /// Machine-readable summary.
    #[arg(long)]
    json: bool,
}

/// Reads a JSONL file of objects into `T`, naming the line of any error.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: bad JSON", path.display(), i + 1))
        })
        .collect()
}

/// Reads a facts file: every line a {"prompt", "answer"} with neither blank and no
/// prompt twice. Returns the facts and their line numbers; every problem names its
/// line, and nothing is memorized when there is one.
pub fn read_facts(path: &Path) -> Result<(Vec<Fact>, Vec<usize>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut facts = Vec::new();
    let mut lines = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let n = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let f: Fact = match serde_json::from_str(l) {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!("{}:{n}: bad JSON: {e}", path.display()));
                continue;
            }
        };
        if f.prompt.trim().is_empty() {
            problems.push(format!("{}:{n}: the prompt is empty", path.display()));
        } else if f.answer.trim().is_empty() {
            problems.push(format!("{}:{n}: the answer is empty", path.display()));
        } else if let Some(first) = seen.insert(f.prompt.trim().to_string(), n) {
            problems.push(format!(
                "{}:{n}: the same prompt as line {first} ({:?})",
                path.display(),
                f.prompt
            ));
        }
        facts.push(f);
        lines.push(n);
    }
    if !problems.is_empty() {
        anyhow::bail!("{}\nnothing was memorized", problems.join("\n"));
    }
    anyhow::ensure!(!facts.is_empty(), "{} holds no facts", path.display());
    Ok((facts, lines))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let (facts, lines) = read_facts(&a.facts)?;
    let mut engine = Engine::open_or_create(&a.db, a.model.as_deref())
        .with_context(|| format!("opening {}", a.db.display()))?;
    let opts = TuneOptions {
        batch_size: a.batch_size,
        max_steps: a.max_steps,
        ..TuneOptions::default()
    };
    let pb = crate::progress::bar(facts.len() as u64, "memorize");
    let report = match engine.memorize(&facts, &opts, &mut |ev| {
        crate::progress::memorize_event(&pb, ev)
    }) {
        Ok(r) => r,
        Err(mome::Error::InvalidFact { index, reason, .. }) => {
            pb.finish_and_clear();
            anyhow::bail!(
                "{}:{}: {reason}\nnothing was memorized",
                a.facts.display(),
                lines.get(index).copied().unwrap_or(0)
            );
        }
        Err(e) => return Err(e.into()),
    };
    pb.finish_and_clear();
    engine.flush()?;
    if a.json {
        let failures: Vec<_> = report
            .outcomes
            .iter()
            .filter(|o| !o.status.is_stored())
            .map(|o| {
                serde_json::json!({"prompt": o.fact.prompt, "answer": o.fact.answer,
                    "status": format!("{:?}", o.status), "loss": o.loss, "steps": o.steps})
            })
            .collect();
        let steps: Vec<u32> = report.outcomes.iter().map(|o| o.steps).collect();
        outln!(
            "{}",
            serde_json::json!({
                "memorized": report.memorized, "unchanged": report.unchanged,
                "failed": report.failed,
                "seconds": report.seconds, "broken": report.broken,
                "steps": steps, "failures": failures,
            })
        );
    } else {
        for o in &report.outcomes {
            let what = match &o.status {
                FactStatus::Memorized { id, replaced } if replaced.is_empty() => {
                    format!("memorized as expert {id}")
                }
                FactStatus::Memorized { id, replaced } => {
                    format!("memorized as expert {id}, replacing {replaced:?}")
                }
                FactStatus::AlreadyStored { id } => {
                    format!("already stored as expert {id} (unchanged)")
                }
                FactStatus::NotConverged => "NOT converged".to_string(),
                FactStatus::VerifyFailed { got } => format!("FAILED verification (got {got:?})"),
                FactStatus::Shadowed => "SHADOWED by a stored expert".to_string(),
            };
            outln!(
                "{:<50} -> {:<20} {what} (loss {:.4}, {} steps)",
                o.fact.prompt,
                o.fact.answer,
                o.loss,
                o.steps
            );
        }
        outln!(
            "memorized {} of {} facts in {:.1} s ({:.1} facts/min); {} failed; {} stored facts broken",
            report.memorized,
            report.outcomes.len(),
            report.seconds,
            report.memorized as f64 * 60.0 / report.seconds.max(1e-9),
            report.failed,
            report.broken.len()
        );
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
