//! `mome search`: the experts retrieval selects for a prompt.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use mome::ExpertIndex;
use mome::{AdapterSites, Backbone, WeightFormat};
use serde_json::json;

/// Long help of the subcommand.
pub const LONG_ABOUT: &str = "The experts retrieval selects for a prompt, with cosine scores.\n\n\
    The prompt runs through the backbone up to the store's query layer; the pooled query \
    (mean of the layer's normalised inputs, L2-normalised) searches the index. This is \
    stage 1 of selection only (the index's top-k candidates): the per-token \
    cross-attention stage (threshold, top-k, softmax weights) is not built yet, so no \
    expert abstains here. The prompt is wrapped as a user turn of the model's chat \
    template unless --raw is given.";

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
    /// Number of experts to return.
    #[arg(short = 'k', default_value_t = 10)]
    k: usize,
    /// Encode the prompt as plain text instead of a chat user turn.
    #[arg(long)]
    raw: bool,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let store = crate::open_store(&args.db)?;
    let cfg = store.config().clone();
    let bb = Backbone::locate_and_load(args.model.as_deref(), WeightFormat::F32, &Device::Cpu)
        .context("loading the model")?;
    let model = &bb.model;
    anyhow::ensure!(
        cfg.key_dim as usize == model.d_model(),
        "the store's keys have dimension {} but the model's queries have {}",
        cfg.key_dim,
        model.d_model()
    );
    let layers: Vec<usize> = cfg.layers.iter().map(|&l| l as usize).collect();
    AdapterSites::new(cfg.query_layer as usize, &layers)?.check_fits(
        cfg.d_model as usize,
        model.d_model(),
        model.num_layers(),
    )?;
    if !cfg.backbone_digest.is_empty() && cfg.backbone_digest != model.digest() {
        eprintln!(
            "warning: the store's experts were trained against backbone {}, this model is {}; scores are not meaningful",
            cfg.backbone_digest,
            model.digest()
        );
    }
    let tokens = if args.raw {
        bb.tokenizer.encode(&args.query_text)?
    } else {
        bb.tokenizer.encode_user_prompt(&args.query_text)?
    };
    anyhow::ensure!(!tokens.is_empty(), "the prompt encodes to no tokens");
    let query: Vec<f32> = model
        .queries(&tokens, cfg.query_layer as usize)?
        .pooled
        .to_vec1()?;
    let index = ExpertIndex::open(Arc::new(store)).context("opening the index")?;
    let hits = index.search(&query, args.k)?;
    let store = index.store();
    let mut rows = Vec::with_capacity(hits.len());
    for h in &hits {
        // An expert deleted since the search is simply left out.
        let Ok(meta) = store.meta(h.id) else { continue };
        rows.push((h, meta.provenance));
    }
    if args.json {
        let hits: Vec<_> = rows
            .iter()
            .map(|(h, p)| json!({"id": h.id, "score": h.score, "provenance": p}))
            .collect();
        println!(
            "{}",
            json!({"stage": "retrieval", "query_tokens": tokens.len(), "hits": hits})
        );
    } else {
        println!(
            "stage-1 retrieval (cosine, top {}) for {:?} ({} tokens):",
            args.k,
            args.query_text,
            tokens.len()
        );
        if rows.is_empty() {
            println!("  no experts");
        }
        for (rank, (h, p)) in rows.iter().enumerate() {
            let what = match (&p.prompt, &p.answer) {
                (Some(q), Some(a)) => format!("{q:?} → {a:?}"),
                (Some(q), None) => format!("{q:?}"),
                _ => format!("{:?}", p.text),
            };
            println!(
                "  {:>3}. expert {:>8}  score {:+.4}  {what}",
                rank + 1,
                h.id,
                h.score
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
