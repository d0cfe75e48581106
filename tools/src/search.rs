//! `mome search`: both stages of selection for a prompt, without generating.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use mome::{match_fact, Engine};
use serde_json::json;

/// Long help of the subcommand.
pub const LONG_ABOUT: &str = "The experts selection considers for a prompt, and the ones it \
    chooses.\n\n\
    The prompt is encoded as `ask` encodes it (a chat user turn, the query layer's token \
    states): stage 1 is the index's top-k by the cosine of the pooled keys; stage 2, the \
    selection rule, is shown for every hit: whether its stored prompt's names occur in \
    the prompt, its forward score (the smallest similarity of its content words), and \
    whether the rule chooses it (the same choice `ask` makes over its K candidates).";

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// The prompt.
    #[arg(long)]
    query_text: String,
    /// Model file (GGUF); default: $MOME_MODEL, then the data directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Number of stage-1 hits to show.
    #[arg(short = 'k', default_value_t = 10)]
    k: usize,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let engine = Engine::open_read_only(&args.db, args.model.as_deref())
        .with_context(|| format!("opening {}", args.db.display()))?;
    let enc = engine.encode(&args.query_text)?;
    let key = enc.query.pooled_key();
    let hits = engine.index().search(&key, args.k)?;
    let chosen = engine.select(&enc)?;
    let chosen_ids: Vec<u64> = chosen.chosen.iter().filter_map(|(s, _)| s.id()).collect();
    let rule = *engine.selector().rule();
    let mut rows = Vec::with_capacity(hits.len());
    for h in &hits {
        // An expert deleted since the search is simply left out.
        let Ok(meta) = engine.store().meta(h.id) else {
            continue;
        };
        let fact = engine
            .selector()
            .fact_query(engine.backbone(), engine.store(), h.id)?;
        let m = fact.as_ref().map(|f| match_fact(&enc.query, f, &rule));
        rows.push((h, meta.provenance, m, chosen_ids.contains(&h.id)));
    }
    if args.json {
        let hits: Vec<_> = rows
            .iter()
            .map(|(h, p, m, c)| {
                json!({"id": h.id, "score": h.score, "provenance": p,
                    "names": m.map(|m| m.names), "forward": m.map(|m| m.forward), "chosen": c})
            })
            .collect();
        outln!(
            "{}",
            json!({"query_tokens": enc.query.len(), "hits": hits, "selected": chosen_ids})
        );
    } else {
        outln!(
            "stage 1 (cosine of pooled keys, top {}) and the rule for {:?}:",
            args.k,
            args.query_text
        );
        if rows.is_empty() {
            outln!("  no experts");
        }
        for (rank, (h, p, m, c)) in rows.iter().enumerate() {
            let what = match (&p.prompt, &p.answer) {
                (Some(q), Some(a)) => format!("{q:?} → {a:?}"),
                (Some(q), None) => format!("{q:?}"),
                _ => format!("{:?}", p.text),
            };
            let rule = match m {
                Some(m) if !m.names => "names differ".to_string(),
                Some(m) => format!("forward {:.3}", m.forward),
                None => "no prompt".to_string(),
            };
            outln!(
                "  {:>3}. expert {:>8}  score {:+.4}  {rule:<14} {}  {what}",
                rank + 1,
                h.id,
                h.score,
                if *c { "CHOSEN" } else { "      " }
            );
        }
        if chosen_ids.is_empty() {
            outln!("  the rule chooses nothing: `ask` answers with the bare backbone");
        }
    }
    Ok(ExitCode::SUCCESS)
}
