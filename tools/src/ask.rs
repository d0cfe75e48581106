//! `mome ask`: answer a prompt with the experts the engine selects.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use mome::{AskOptions, Engine};

/// Arguments of `mome ask`.
#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Model file (default: $MOME_MODEL, then the data directory).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Answer with the bare backbone.
    #[arg(long)]
    no_experts: bool,
    /// Print the candidates and the selected experts with their weights (stderr).
    #[arg(long)]
    explain: bool,
    /// Most new tokens.
    #[arg(long, default_value_t = 48)]
    max_tokens: usize,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// The question.
    prompt: String,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let engine = Engine::open_read_only(&a.db, a.model.as_deref())
        .with_context(|| format!("opening {}", a.db.display()))?;
    let opts = AskOptions {
        max_tokens: a.max_tokens,
        use_experts: !a.no_experts,
    };
    // A person reading the terminal sees the reply as it is generated; a closed
    // stdout (`mome ask ... | head -c 10`) stops generation, and the command ends
    // quietly.
    let mut out = std::io::stdout().lock();
    let mut closed = false;
    let answer = engine.ask_streaming(&a.prompt, &opts, &mut |piece| {
        if a.json {
            return ControlFlow::Continue(());
        }
        match out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => {
                closed = true;
                ControlFlow::Break(())
            }
        }
    })?;
    if !a.json && (closed || writeln!(out).and_then(|()| out.flush()).is_err()) {
        return Ok(ExitCode::SUCCESS);
    }
    drop(out);
    let describe = |id: u64| -> String {
        engine
            .store()
            .meta(id)
            .ok()
            .and_then(|m| {
                m.provenance
                    .prompt
                    .map(|p| format!("{p:?} -> {:?}", m.provenance.answer.unwrap_or_default()))
            })
            .unwrap_or_default()
    };
    if a.json {
        let sel: Vec<_> = answer
            .selected
            .iter()
            .map(|(id, w)| serde_json::json!({"id": id, "score": w, "fact": describe(*id)}))
            .collect();
        let cands: Vec<_> = answer
            .candidates
            .iter()
            .take(8)
            .map(|h| serde_json::json!({"id": h.id, "score": h.score}))
            .collect();
        outln!(
            "{}",
            serde_json::json!({"answer": answer.text, "selected": sel, "candidates": cands})
        );
    } else {
        if a.explain {
            let p = engine.params();
            eprintln!(
                "selection: stored names word for word and content words above {} (coverage above {}), K {}",
                p.rule.match_threshold, p.rule.coverage_threshold, p.k_candidates
            );
            for h in answer.candidates.iter().take(5) {
                eprintln!(
                    "  candidate {:>6}  score {:.4}  {}",
                    h.id,
                    h.score,
                    describe(h.id)
                );
            }
            if answer.selected.is_empty() {
                eprintln!(
                    "  selected: none (no stored fact answers this question: bare backbone output)"
                );
            }
            for (id, w) in &answer.selected {
                eprintln!("  selected {id:>6}  score {w:.4}  {}", describe(*id));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
