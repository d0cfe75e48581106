//! `mome forget`: remove a fact by its prompt (the experts that store it), in one commit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use mome::Engine;
use serde_json::json;

pub const LONG_ABOUT: &str = "Forget a fact by its prompt: every expert whose stored \
    prompt is this prompt is deleted in one synced commit and leaves the index. From then \
    on the question gets the bare model's answer. Exits with status 1 when no fact was \
    stored for the prompt. Ids stay usable for `mome delete`.";

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// The prompt of the fact, as it was memorized.
    #[arg(long)]
    prompt: String,
    /// Model file (GGUF); default: $MOME_MODEL, then the data directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let engine = Engine::open(&a.db, a.model.as_deref())
        .with_context(|| format!("opening {}", a.db.display()))?;
    let ids = engine
        .forget(&a.prompt)
        .with_context(|| format!("forgetting {:?}", a.prompt))?;
    if a.json {
        outln!("{}", json!({"prompt": a.prompt, "deleted": ids}));
    } else if ids.is_empty() {
        outln!("no fact stored for {:?}", a.prompt);
    } else {
        outln!("forgot {:?}: deleted experts {ids:?}", a.prompt);
    }
    Ok(crate::exit_for(usize::from(ids.is_empty())))
}
