//! `mome eval`: exact recall of stored facts and of their rewordings, near-miss
//! specificity and leaks, locality on unrelated prompts, multi-fact answers.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use mome::{evaluate, Engine, EvalSet, Fact};

use crate::memorize::read_jsonl;

/// Arguments of `mome eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Stored facts to recall, one {"prompt", "answer"} per line.
    #[arg(long)]
    facts: PathBuf,
    /// Rewordings, one {"prompt", "answer", "kind"?} per line: must get the answer.
    #[arg(long)]
    paraphrases: Option<PathBuf>,
    /// Near-misses, one {"prompt", "kind"?} per line (the same question about an
    /// entity that is not stored, ...): output must equal the bare backbone's and
    /// carry no stored answer.
    #[arg(long)]
    nearmiss: Option<PathBuf>,
    /// Questions that need several stored facts, one {"prompt", "answers": [..]} per
    /// line: every answer must appear.
    #[arg(long)]
    multi: Option<PathBuf>,
    /// Unrelated prompts, one {"prompt"} per line: output must equal the bare backbone's.
    #[arg(long)]
    unrelated: Option<PathBuf>,
    /// Most tokens compared with the bare backbone (near-misses, unrelated).
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Model file (default: $MOME_MODEL, then the data directory).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn optional<T: serde::de::DeserializeOwned>(p: &Option<PathBuf>) -> Result<Vec<T>> {
    p.as_ref().map_or(Ok(Vec::new()), |p| read_jsonl(p))
}

pub fn run(a: Args) -> Result<ExitCode> {
    let set = EvalSet {
        facts: read_jsonl::<Fact>(&a.facts)?,
        paraphrases: optional(&a.paraphrases)?,
        nearmiss: optional(&a.nearmiss)?,
        unrelated: optional(&a.unrelated)?,
        multi: optional(&a.multi)?,
    };
    let engine = Engine::open_read_only(&a.db, a.model.as_deref())
        .with_context(|| format!("opening {}", a.db.display()))?;
    let total = set.facts.len()
        + set.paraphrases.len()
        + set.nearmiss.len()
        + set.unrelated.len()
        + set.multi.len();
    let pb = crate::progress::bar(total as u64, "eval");
    let r = evaluate(&engine, &set, a.max_tokens, &mut |done, _| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    let out = serde_json::json!({
        "n": r.exact_recall.n,
        "exact_recall": r.exact_recall.rate(),
        "paraphrase_recall": r.paraphrase_recall.rate(),
        "paraphrase_by_kind": r.paraphrase_by_kind.iter().map(|(k, t)| (k.clone(), serde_json::json!({"rate": t.rate(), "n": t.n}))).collect::<serde_json::Map<_, _>>(),
        "nearmiss_specificity": r.nearmiss_specificity.rate(),
        "nearmiss_by_kind": r.nearmiss_by_kind.iter().map(|(k, t)| (k.clone(), serde_json::json!({"rate": t.rate(), "n": t.n}))).collect::<serde_json::Map<_, _>>(),
        "leaks": r.leaks,
        "n_unrelated": r.locality.n,
        "locality": r.locality.rate(),
        "multi_all_answers": r.multi_all_answers.rate(),
        "n_multi": r.multi_all_answers.n,
        "overhead_no_selection": r.overhead_no_selection,
        "ask_seconds_stored": r.ask_seconds_stored,
        "bare_seconds_stored": r.bare_seconds_stored,
        "match_threshold": engine.params().rule.match_threshold,
        "coverage_threshold": engine.params().rule.coverage_threshold,
        "recall_misses": r.exact_recall.failures,
        "paraphrase_misses": r.paraphrase_recall.failures,
        "nearmiss_changes": r.nearmiss_specificity.failures,
        "locality_changes": r.locality.failures,
        "multi_misses": r.multi_all_answers.failures,
        "seconds": r.seconds,
    });
    if a.json {
        outln!("{out}");
    } else {
        outln!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}
