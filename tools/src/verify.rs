//! `mome verify`: checksums, metadata ⇄ shards ⇄ index consistency, and with
//! `--recall` the replay of every stored fact through the engine.

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Result;
use mome::ExpertIndex;
use mome::{AskOptions, Engine};
use mome::{Backbone, WeightFormat};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Also replay every stored fact (experts whose provenance has a prompt and an
    /// answer) through the engine and report each one whose greedy answer is no longer
    /// exactly the stored answer.
    #[arg(long)]
    recall: bool,
    /// With `--recall`: first relink in the index every fact that stage-1 retrieval
    /// no longer returns for its own prompt (approximate search can lose a node among
    /// near-duplicate keys; the store is not changed), then replay.
    #[arg(long, requires = "recall")]
    repair: bool,
    /// Model file (GGUF) for `--recall`; default: $MOME_MODEL or the data directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

/// One problem: expert, shard, offset (each when known) and what is wrong.
struct Row {
    id: Option<u64>,
    shard: Option<u32>,
    offset: Option<u64>,
    detail: String,
}

pub fn run(args: Args) -> Result<ExitCode> {
    // Only a repair writes (the index); checking reads beside a running writer.
    let store = if args.repair {
        crate::open_store(&args.db)?
    } else {
        crate::open_store_read_only(&args.db)?
    };
    let report = store.verify()?;
    let mut rows: Vec<Row> = report
        .problems
        .iter()
        .map(|p| Row {
            id: p.id,
            shard: p.shard,
            offset: p.offset,
            detail: p.detail.clone(),
        })
        .collect();

    let check = ExpertIndex::check_saved(&store)?;
    let snap = store.snapshot();
    let layout = store.layout();
    if let Some(reason) = &check.unusable {
        rows.push(Row {
            id: None,
            shard: None,
            offset: None,
            detail: format!("saved index unusable (the next open rebuilds it): {reason}"),
        });
    }
    for &id in &check.missing {
        let loc = snap.location(id);
        rows.push(Row {
            id: Some(id),
            shard: loc.map(|l| l.shard),
            offset: loc.map(|l| layout.slot_offset(l.slot)),
            detail: "live expert missing from the index (after replaying the store's changes)"
                .into(),
        });
    }
    for &id in &check.stale {
        rows.push(Row {
            id: Some(id),
            shard: None,
            offset: None,
            detail: "deleted expert still in the index (after replaying the store's changes)"
                .into(),
        });
    }

    // Recall replay runs last, through the engine, which takes over the store handle.
    let live = snap.len();
    drop(snap);
    let mut recall_checked = None;
    let mut repaired: Option<usize> = None;
    if args.recall {
        // Facts are the experts whose provenance has a prompt and an answer; the model is
        // loaded only when there is one to replay.
        let mut facts: Vec<(u64, String, String)> = Vec::new();
        for id in store.snapshot().ids() {
            let p = store.meta(id)?.provenance;
            if let (Some(prompt), Some(answer)) = (p.prompt, p.answer) {
                facts.push((id, prompt, answer));
            }
        }
        if !facts.is_empty() {
            let backbone = Backbone::locate_and_load(
                args.model.as_deref(),
                WeightFormat::F32,
                &candle_core::Device::Cpu,
            )?;
            let engine = Engine::from_parts(Arc::new(store), backbone)?;
            if args.repair {
                let items = facts
                    .iter()
                    .map(|(id, _, _)| {
                        let expert = engine.store().get(*id)?;
                        Ok((*id, expert.key().iter().map(|x| x.to_f32()).collect()))
                    })
                    .collect::<mome::Result<Vec<(u64, Vec<f32>)>>>()?;
                let (relinked, lost) = engine
                    .index()
                    .ensure_findable(&items, |key| engine.retrieve(key))?;
                engine.flush()?;
                tracing::info!(?relinked, ?lost, "relinked facts retrieval no longer found");
                repaired = Some(relinked.len());
            }
            let pb = crate::progress::bar(facts.len() as u64, "recall");
            let opts = AskOptions::default();
            for (id, prompt, answer) in &facts {
                let got = engine.ask(prompt, &opts)?;
                pb.inc(1);
                if &got.text != answer {
                    let loc = engine.store().snapshot().location(*id);
                    rows.push(Row {
                        id: Some(*id),
                        shard: loc.map(|l| l.shard),
                        offset: loc.map(|l| layout.slot_offset(l.slot)),
                        detail: format!(
                            "fact no longer recalled exactly: {prompt:?} answers {:?}, stored {answer:?}",
                            got.text
                        ),
                    });
                }
            }
            pb.finish_and_clear();
        }
        recall_checked = Some(facts.len());
    }

    if args.json {
        let problems: Vec<_> = rows
            .iter()
            .map(|p| json!({"id": p.id, "shard": p.shard, "offset": p.offset, "detail": p.detail}))
            .collect();
        let index = match &check.saved {
            Some(s) => json!({
                "saved": true, "seq": s.seq, "keys_saved": s.count,
                "replayed": check.replayed, "keys_after_replay": check.indexed,
                "usable": check.unusable.is_none(),
            }),
            None => json!({"saved": false}),
        };
        let recall = match recall_checked {
            Some(n) => json!({"checked": true, "facts": n, "relinked": repaired}),
            None => json!({"checked": false}),
        };
        outln!(
            "{}",
            json!({
                "records_checked": report.records_checked, "live": live,
                "index": index, "recall": recall, "problems": problems,
            })
        );
    } else {
        for p in &rows {
            outln!(
                "PROBLEM expert {} shard {} offset {}: {}",
                crate::opt(p.id),
                crate::opt(p.shard),
                crate::opt(p.offset),
                p.detail
            );
        }
        match &check.saved {
            Some(s) if check.unusable.is_none() => outln!(
                "index: saved at seq {} with {} keys; {} changes replayed; {} keys checked against {} live experts",
                s.seq,
                s.count,
                check.replayed,
                check.indexed,
                live
            ),
            Some(_) => {}
            None => outln!("index: none saved (built on first open); nothing to check"),
        }
        if let Some(n) = repaired {
            outln!("repair: relinked {n} facts that retrieval no longer returned");
        }
        if let Some(n) = recall_checked {
            outln!("recall: replayed {n} stored facts through the engine");
        }
        outln!(
            "verified {} records: {} problems",
            report.records_checked,
            rows.len()
        );
    }
    Ok(crate::exit_for(rows.len()))
}
