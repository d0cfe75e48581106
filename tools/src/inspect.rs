//! `mome inspect`: one expert, or one shard's records.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use half::f16;
use mome::StoreError;
use mome::{RecordState, Store};
use serde_json::json;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["expert", "shard"])))]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// The expert to show: location, insertion sequence, checksum, metadata,
    /// provenance, key norm and per-layer weight norms.
    #[arg(long)]
    expert: Option<u64>,
    /// List the shard's committed records: slot, offset, owner, record header, checksum.
    #[arg(long)]
    shard: Option<u32>,
    /// Machine-readable output (one JSON object).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let store = crate::open_store_read_only(&args.db)?;
    match (args.expert, args.shard) {
        (Some(id), _) => expert(&store, id, args.json),
        (None, Some(shard)) => shard_records(&store, shard, args.json),
        (None, None) => anyhow::bail!("give --expert ID or --shard N"),
    }
}

fn norm(v: &[f16]) -> f64 {
    v.iter()
        .map(|x| f64::from(x.to_f32()).powi(2))
        .sum::<f64>()
        .sqrt()
}

fn expert(store: &Store, id: u64, json_out: bool) -> Result<ExitCode> {
    let snap = store.snapshot();
    let Some(loc) = snap.location(id) else {
        let why = match store.tombstone(id)? {
            Some((seq, reclaimed)) => format!(
                "expert {id} was deleted at seq {seq}{}",
                if reclaimed {
                    " (its bytes are reclaimed)"
                } else {
                    ""
                }
            ),
            None if id > 0 && id < store.next_id() => {
                format!("expert {id} was deleted and its tombstone compacted away")
            }
            None => format!("unknown expert id {id}"),
        };
        anyhow::bail!(why);
    };
    let offset = store.layout().slot_offset(loc.slot);
    let meta = store.meta(id)?;
    let checked = store.check_record(id);
    let (checksum, seq) = match &checked {
        Ok(h) => ("ok".to_string(), Some(h.seq)),
        Err(StoreError::CorruptRecord { reason, .. }) => (format!("BAD: {reason}"), None),
        Err(e) => (format!("BAD: {e}"), None),
    };
    // Norms only from a record whose checksum holds: a corrupt one is never used.
    let weights = match &checked {
        Ok(_) => {
            let e = store.get(id)?;
            let layers: Vec<(u32, f64, f64)> = store
                .config()
                .layers
                .iter()
                .enumerate()
                .map(|(l, &layer)| (layer, norm(e.a(l)), norm(e.b(l))))
                .collect();
            Some((norm(e.key()), layers))
        }
        Err(_) => None,
    };
    if json_out {
        outln!(
            "{}",
            json!({
                "id": id, "shard": loc.shard, "slot": loc.slot, "offset": offset,
                "seq": seq, "checksum": checksum, "created_at_ms": meta.created_at_ms,
                "usage": meta.usage, "provenance": meta.provenance,
                "key_norm": weights.as_ref().map(|w| w.0),
                "layers": weights.as_ref().map(|w| w.1.iter().map(|&(layer, a, b)| json!({
                    "layer": layer, "a_norm": a, "b_norm": b,
                })).collect::<Vec<_>>()),
            })
        );
    } else {
        outln!("expert {id}");
        outln!(
            "  record: shard {} slot {} offset {offset}; inserted at seq {}",
            loc.shard,
            loc.slot,
            crate::opt(seq)
        );
        outln!("  checksum: {checksum}");
        outln!(
            "  created: {} ms since the epoch; selected {} times",
            meta.created_at_ms,
            meta.usage
        );
        let p = &meta.provenance;
        if let Some(prompt) = &p.prompt {
            outln!("  prompt: {prompt:?}");
        }
        if let Some(answer) = &p.answer {
            outln!("  answer: {answer:?}");
        }
        if !p.text.is_empty() {
            outln!("  text: {:?}", p.text);
        }
        if let (Some(loss), Some(steps)) = (p.final_loss, p.steps) {
            outln!("  training: final loss {loss}, {steps} steps");
        }
        if let Some(d) = &p.backbone_digest {
            outln!("  backbone: {d}");
        }
        if let Some((key_norm, layers)) = &weights {
            outln!(
                "  key: {} dims, L2 norm {key_norm:.6}",
                store.config().key_dim
            );
            for (layer, a, b) in layers {
                outln!("  layer {layer:>3}: |A|_F {a:.6}  |B|_F {b:.6}");
            }
        }
    }
    Ok(crate::exit_for(usize::from(checked.is_err())))
}

fn shard_records(store: &Store, shard: u32, json_out: bool) -> Result<ExitCode> {
    let records = store.shard_records(shard)?;
    let problems = records.iter().filter(|r| r.problem().is_some()).count();
    let state = |s: RecordState| match s {
        RecordState::Live(id) => ("live", Some(id)),
        RecordState::Deleted(id) => ("deleted", Some(id)),
        RecordState::Unreferenced => ("unreferenced", None),
    };
    if json_out {
        let rows: Vec<_> = records
            .iter()
            .map(|r| {
                let (s, owner) = state(r.state);
                json!({
                    "slot": r.slot, "offset": r.offset, "state": s, "expert": owner,
                    "record_id": r.header.as_ref().ok().map(|h| h.id),
                    "seq": r.header.as_ref().ok().map(|h| h.seq),
                    "problem": r.problem(),
                })
            })
            .collect();
        outln!(
            "{}",
            json!({"shard": shard, "records": rows, "problems": problems})
        );
    } else {
        outln!("shard {shard}: {} committed records", records.len());
        outln!("   slot      offset  state         expert      seq  checksum");
        for r in &records {
            let (s, owner) = state(r.state);
            let seq = r.header.as_ref().ok().map(|h| h.seq);
            outln!(
                "  {:>5}  {:>10}  {:<12} {:>7}  {:>7}  {}",
                r.slot,
                r.offset,
                s,
                crate::opt(owner),
                crate::opt(seq),
                r.problem()
                    .map_or_else(|| "ok".to_string(), |p| format!("BAD: {p}"))
            );
        }
        outln!("{problems} problems");
    }
    Ok(crate::exit_for(problems))
}
