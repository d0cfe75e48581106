//! `mome eval`: exact recall of stored facts and locality on unrelated prompts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use mome::{AskOptions, Engine, Fact};

use crate::memorize::read_jsonl;

/// Arguments of `mome eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Facts to recall, one {"prompt", "answer"} per line.
    #[arg(long)]
    facts: PathBuf,
    /// Unrelated prompts, one {"prompt"} per line: output must equal the bare backbone's.
    #[arg(long)]
    unrelated: Option<PathBuf>,
    /// Model file (default: $MOME_MODEL, then the data directory).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Deserialize)]
struct Prompt {
    prompt: String,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let facts: Vec<Fact> = read_jsonl(&a.facts)?;
    let unrelated: Vec<Prompt> = match &a.unrelated {
        Some(p) => read_jsonl(p)?,
        None => Vec::new(),
    };
    let engine = Engine::open(&a.db, a.model.as_deref())
        .with_context(|| format!("opening {}", a.db.display()))?;
    let start = Instant::now();
    let pb = crate::progress::bar((facts.len() + unrelated.len()) as u64, "eval");
    let mut recalled = 0usize;
    let mut misses = Vec::new();
    for f in &facts {
        let got = engine.ask(&f.prompt, &AskOptions::default())?;
        if got.text == f.answer {
            recalled += 1;
        } else {
            misses
                .push(serde_json::json!({"prompt": f.prompt, "answer": f.answer, "got": got.text}));
        }
        pb.inc(1);
    }
    let mut local = 0usize;
    let mut changed = Vec::new();
    let mut max_score = f32::NEG_INFINITY;
    for u in &unrelated {
        let with = engine.ask(&u.prompt, &AskOptions::default())?;
        let bare = engine.ask(
            &u.prompt,
            &AskOptions {
                use_experts: false,
                ..AskOptions::default()
            },
        )?;
        if let Some(h) = with.candidates.first() {
            max_score = max_score.max(h.score);
        }
        if with.tokens == bare.tokens {
            local += 1;
        } else {
            changed.push(
                serde_json::json!({"prompt": u.prompt, "bare": bare.text, "engine": with.text}),
            );
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let frac = |k: usize, n: usize| if n == 0 { 1.0 } else { k as f64 / n as f64 };
    let out = serde_json::json!({
        "n": facts.len(),
        "exact_recall": frac(recalled, facts.len()),
        "n_unrelated": unrelated.len(),
        "locality": frac(local, unrelated.len()),
        "max_unrelated_score": if unrelated.is_empty() { serde_json::Value::Null } else { serde_json::json!(max_score) },
        "match_threshold": engine.params().rule.match_threshold,
        "recall_misses": misses,
        "locality_changes": changed,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
