//! `mome migrate`: carry a store written for an earlier selection rule over to this
//! build's rule, into a new directory.
//!
//! A fact expert's weights were trained for the positions and gating of the rule it was
//! written under, and its key is that rule's request query; re-keying alone would not
//! make it recall exactly under the new plan. So every stored fact (an expert whose
//! provenance holds a prompt and an answer) is memorized again from that provenance —
//! trained, verified through the new inference path, committed — and experts without a
//! fact (benchmark distractors, imported weights) are copied as they are when their
//! shape fits the new store. The old directory is only read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mome::{legacy_rule, Engine, Fact, FactStatus, NewExpert, Provenance};
use mome::{AdapterPair, Store, StoreDir, TuneOptions};

pub const LONG_ABOUT: &str = "\
Carries a store written for an earlier selection rule over to this build's rule.

Every stored fact (an expert whose provenance records its prompt and answer) is \
memorized again into --out: trained, verified through the new selection path and \
committed, so that it is recalled exactly under the new rule. Experts without a fact \
are copied unchanged when their shape fits the new store, and counted as skipped \
otherwise. When two stored experts record the same prompt, the newer one wins. The \
old store is only read; --out must not hold a store yet.";

/// Arguments of `mome migrate`.
#[derive(clap::Args)]
pub struct Args {
    /// The store written for an earlier rule (read only).
    #[arg(long)]
    db: PathBuf,
    /// The new store's directory (must not hold a store).
    #[arg(long)]
    out: PathBuf,
    /// Model file (default: $MOME_MODEL, then the data directory).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Machine-readable summary.
    #[arg(long)]
    json: bool,
}

/// What to do with each old expert.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Facts to memorize again, with the old expert each comes from (ascending id).
    pub facts: Vec<(u64, Fact)>,
    /// Old experts without a fact, copied as they are.
    pub copies: Vec<u64>,
    /// Old experts whose prompt a newer expert also records (dropped).
    pub superseded: Vec<u64>,
}

/// Decides the migration of experts given as (id, provenance): a prompt and a
/// non-blank answer make a fact (the newest id wins a prompt recorded twice); anything
/// else is copied.
pub fn plan(mut experts: Vec<(u64, Provenance)>) -> Plan {
    experts.sort_by_key(|e| e.0);
    let mut p = Plan::default();
    let mut by_prompt: HashMap<String, usize> = HashMap::new();
    for (id, prov) in experts {
        match (prov.prompt, prov.answer) {
            (Some(q), Some(a)) if !q.trim().is_empty() && !a.trim().is_empty() => {
                let fact = Fact::new(q.clone(), a);
                match by_prompt.get(q.trim()) {
                    Some(&i) => {
                        p.superseded.push(p.facts[i].0);
                        p.facts[i] = (id, fact);
                    }
                    None => {
                        by_prompt.insert(q.trim().to_string(), p.facts.len());
                        p.facts.push((id, fact));
                    }
                }
            }
            _ => p.copies.push(id),
        }
    }
    p
}

pub fn run(a: Args) -> Result<ExitCode> {
    if !legacy_rule(&a.db).with_context(|| format!("reading {}", a.db.display()))? {
        bail!(
            "{} already uses this build's selection rule ({}): nothing to migrate",
            a.db.display(),
            mome::QUERY_RULE
        );
    }
    if StoreDir::new(&a.out).holds_store() {
        bail!(
            "{} already holds a store; give a new directory",
            a.out.display()
        );
    }
    let old = Store::open(&a.db).with_context(|| format!("opening {}", a.db.display()))?;
    let mut provs = Vec::with_capacity(old.len() as usize);
    for e in old.snapshot().iter() {
        let id = e
            .with_context(|| format!("reading {}", a.db.display()))?
            .id();
        provs.push((id, old.meta(id)?.provenance));
    }
    let plan = plan(provs);
    let mut engine = Engine::open_or_create(&a.out, a.model.as_deref())
        .with_context(|| format!("creating {}", a.out.display()))?;

    let (new_cfg, old_cfg) = (engine.store().config().clone(), old.config().clone());
    let same_shape = new_cfg.d_model == old_cfg.d_model
        && new_cfg.rank == old_cfg.rank
        && new_cfg.layers == old_cfg.layers
        && new_cfg.key_dim == old_cfg.key_dim;
    let (mut copied, mut skipped) = (0usize, 0usize);
    if same_shape {
        let snap = old.snapshot();
        for chunk in plan.copies.chunks(1024) {
            let mut batch = Vec::with_capacity(chunk.len());
            for &id in chunk {
                let e = snap.get(id)?;
                batch.push(NewExpert {
                    key: e.key().to_vec(),
                    layers: (0..e.n_layers())
                        .map(|l| AdapterPair {
                            a: e.a(l).to_vec(),
                            b: e.b(l).to_vec(),
                        })
                        .collect(),
                    provenance: old.meta(id)?.provenance,
                });
            }
            copied += engine.index().insert_batch(batch)?.len();
        }
    } else {
        skipped = plan.copies.len();
    }

    let facts: Vec<Fact> = plan.facts.iter().map(|(_, f)| f.clone()).collect();
    let pb = crate::progress::bar(facts.len() as u64, "migrate");
    let report = engine.memorize(&facts, &TuneOptions::default(), &mut |ev| {
        crate::progress::memorize_event(&pb, ev)
    })?;
    pb.finish_and_clear();
    engine.flush()?;

    let failed: Vec<(u64, &Fact, String)> = plan
        .facts
        .iter()
        .zip(&report.outcomes)
        .filter(|(_, o)| !o.status.is_stored())
        .map(|((id, f), o)| (*id, f, status_text(&o.status)))
        .collect();
    let stored = report.memorized + report.unchanged;
    if a.json {
        let failures: Vec<_> = failed
            .iter()
            .map(|(id, f, s)| {
                serde_json::json!({"old_id": id, "prompt": f.prompt, "answer": f.answer,
                    "status": s})
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "facts": plan.facts.len(), "memorized": stored, "failed": failed.len(),
                "copied": copied, "skipped": skipped, "superseded": plan.superseded,
                "seconds": report.seconds, "failures": failures,
                "rule": mome::QUERY_RULE,
            })
        );
    } else {
        for (id, f, s) in &failed {
            outln!("old expert {id}: {:?} -> {:?}: {s}", f.prompt, f.answer);
        }
        outln!(
            "migrated {} into {} ({}): {stored} of {} facts memorized again in {:.1} s, {} failed; \
             {copied} experts without a fact copied, {skipped} skipped (shape differs); \
             {} superseded by a newer expert of the same prompt",
            a.db.display(),
            a.out.display(),
            mome::QUERY_RULE,
            plan.facts.len(),
            report.seconds,
            failed.len(),
            plan.superseded.len()
        );
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status_text(s: &FactStatus) -> String {
    match s {
        FactStatus::NotConverged => "not converged".into(),
        FactStatus::VerifyFailed { got } => format!("failed verification (got {got:?})"),
        FactStatus::Shadowed => "shadowed by a stored expert".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_relearned_others_copied_newest_prompt_wins() {
        let p = plan(vec![
            (5, Provenance::fact("Who is X?", "b")),
            (1, Provenance::fact("Who is X?", "a")),
            (2, Provenance::text("distractor")),
            (3, Provenance::fact("Where is Y?", "  ")),
            (4, Provenance::fact("Where is Z?", "z")),
        ]);
        assert_eq!(
            p.facts,
            vec![
                (5, Fact::new("Who is X?", "b")),
                (4, Fact::new("Where is Z?", "z"))
            ]
        );
        assert_eq!(p.copies, vec![2, 3]);
        assert_eq!(p.superseded, vec![1]);
    }

    #[test]
    fn an_empty_store_plans_nothing() {
        assert_eq!(plan(Vec::new()), Plan::default());
    }
}
