//! The memorize pipeline: prepare, train, verify, commit, recheck.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use half::f16;

use super::train::{train_batch_with, FrozenPrefix, TrainRow, TuneOptions};
use super::{Fact, FactOutcome, FactStatus, MemorizeEvent, MemorizeReport};
use crate::error::{Error, Result};
use crate::index::{ExpertIndex, Hit};
use crate::model::{AdapterSites, Backbone};
use crate::select::{
    generate_answers, match_fact, CandidateSet, Encoded, OwnedFact, Query, RowPlan, Selection,
    SelectionHook, Selector, Source, StoredFact,
};
use crate::store::{AdapterPair, NewExpert, Provenance};

/// What memory tuning needs of the engine: the backbone, where adapters sit, the
/// index (and through it the store), and the selection path.
pub struct Memorizer<'a> {
    /// The frozen backbone.
    pub backbone: &'a Backbone,
    /// The adapted layers.
    pub sites: &'a AdapterSites,
    /// The index over the store.
    pub index: &'a ExpertIndex,
    /// Stage 1 + the rule, as inference runs them.
    pub selector: &'a Selector,
}

impl std::fmt::Debug for Memorizer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memorizer")
            .field("sites", self.sites)
            .finish_non_exhaustive()
    }
}

/// Checks facts before anything is trained or stored: a prompt and an answer that are
/// not blank, the same prompt at most once, a prompt the rule can recognise (a content
/// word or a name) and prompt + answer inside the model's context. Errors name the
/// fact's position.
pub fn validate_facts(
    backbone: &Backbone,
    selector: &Selector,
    facts: &[Fact],
) -> Result<Vec<(Encoded, Vec<u32>)>> {
    let bad = |index: usize, f: &Fact, reason: String| Error::InvalidFact {
        index,
        prompt: f.prompt.clone(),
        reason,
    };
    let im_end = backbone
        .tokenizer
        .token_id("<|im_end|>")
        .or_else(|| backbone.tokenizer.stop_tokens().first().copied())
        .ok_or_else(|| Error::Training {
            reason: "the tokenizer has no end-of-turn token".into(),
        })?;
    let max = backbone.model.config().max_position_embeddings;
    let mut seen: HashSet<&str> = HashSet::new();
    let mut out = Vec::with_capacity(facts.len());
    for (i, f) in facts.iter().enumerate() {
        if f.prompt.trim().is_empty() {
            return Err(bad(i, f, "the prompt is empty".into()));
        }
        if f.answer.trim().is_empty() {
            return Err(bad(i, f, "the answer is empty".into()));
        }
        if !seen.insert(f.prompt.trim()) {
            return Err(bad(
                i,
                f,
                "the same prompt appears earlier in the same call".into(),
            ));
        }
        let tokens = selector.encoder().chat_tokens(backbone, &f.prompt)?;
        let mut targets = backbone.tokenizer.encode(&f.answer)?;
        targets.push(im_end);
        if tokens.len() + targets.len() > max {
            return Err(bad(
                i,
                f,
                format!(
                    "prompt and answer need {} tokens; the model's context is {max}",
                    tokens.len() + targets.len()
                ),
            ));
        }
        let enc = selector.encoder().encode_tokens(backbone, tokens)?;
        if !enc.query.is_distinctive() {
            return Err(bad(
                i,
                f,
                "the prompt has no content word or name to recognise it by".into(),
            ));
        }
        out.push((enc, targets));
    }
    Ok(out)
}

/// One fact of a batch on its way through the pipeline.
struct Prepared {
    index: usize,
    enc: Encoded,
    targets: Vec<u32>,
    key: Vec<f32>,
    /// Stored neighbours the new expert may be selected with (the replaced excluded).
    stored: Vec<StoredFact>,
    hits: Vec<Hit>,
    /// Experts of the same prompt with another answer.
    replaces: Vec<u64>,
}

impl Memorizer<'_> {
    fn store(&self) -> &crate::store::Store {
        self.index.store()
    }

    fn rank(&self) -> usize {
        self.store().config().rank as usize
    }

    /// Memorizes facts: validates them all, then trains one expert per fact in
    /// batches, verifies each through the inference path and commits the exact ones.
    pub fn memorize(
        &self,
        facts: &[Fact],
        opts: &TuneOptions,
        progress: &mut dyn FnMut(MemorizeEvent),
    ) -> Result<MemorizeReport> {
        self.memorize_until(facts, opts, progress, &mut || false)
    }

    /// [`Memorizer::memorize`], asking `stop` between batches (after one is committed
    /// and audited, before the next) whether to go on: `true` ends the call there,
    /// every commit whole, with
    /// [`MemorizeReport::stopped`] set and the outcomes of the facts of the batches
    /// that ran (a prefix of `facts`).
    pub fn memorize_until(
        &self,
        facts: &[Fact],
        opts: &TuneOptions,
        progress: &mut dyn FnMut(MemorizeEvent),
        stop: &mut dyn FnMut() -> bool,
    ) -> Result<MemorizeReport> {
        let start = Instant::now();
        let encoded = validate_facts(self.backbone, self.selector, facts)?;
        let mut outcomes: Vec<Option<FactOutcome>> = vec![None; facts.len()];
        let mut broken = Vec::new();
        // (id, key) of every fact this call committed, audited after each batch.
        let mut committed: Vec<(u64, Vec<f32>)> = Vec::new();
        let indices: Vec<usize> = (0..facts.len()).collect();
        let mut encoded: Vec<Option<(Encoded, Vec<u32>)>> = encoded.into_iter().map(Some).collect();
        // Facts of the batches run so far (a prefix: batches run in input order).
        let mut ran = 0;
        let mut stopped = false;
        for chunk in indices.chunks(opts.batch_size.max(1)) {
            if ran > 0 && stop() {
                stopped = true;
                break;
            }
            ran += chunk.len();
            let mut batch = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let Some((enc, targets)) = encoded[i].take() else {
                    continue;
                };
                match self.prepare(i, &facts[i], enc, targets)? {
                    Ok(p) => batch.push(p),
                    Err(status) => {
                        outcomes[i] = Some(FactOutcome {
                            fact: facts[i].clone(),
                            status,
                            loss: f32::NAN,
                            steps: 0,
                        })
                    }
                }
            }
            if !batch.is_empty() {
                let done = self.run_batch(facts, &batch, opts, progress, &mut broken)?;
                for (p, (outcome, key)) in batch.iter().zip(done) {
                    if let FactStatus::Memorized { id, .. } = outcome.status {
                        committed.push((id, key));
                    }
                    outcomes[p.index] = Some(outcome);
                }
            }
            // Every fact committed by this call must still be retrieved for its own
            // prompt: later inserts can make approximate search miss it, and then the
            // neighbour recheck, which finds stored facts by search, cannot see it.
            let (relinked, lost) = self
                .index
                .ensure_findable(&committed, |key| self.selector.retrieve(self.index, key))?;
            if !relinked.is_empty() {
                tracing::info!(
                    ?relinked,
                    ?lost,
                    "relinked facts that search no longer found"
                );
            }
            broken.extend(lost);
            progress(MemorizeEvent::Done(chunk.len()));
        }
        self.index.save()?;
        broken.sort_unstable();
        broken.dedup();
        outcomes.truncate(ran);
        let outcomes: Vec<FactOutcome> = outcomes
            .into_iter()
            .zip(facts)
            .map(|(o, f)| {
                o.unwrap_or(FactOutcome {
                    fact: f.clone(),
                    status: FactStatus::NotConverged,
                    loss: f32::NAN,
                    steps: 0,
                })
            })
            .collect();
        let count = |p: fn(&FactStatus) -> bool| outcomes.iter().filter(|o| p(&o.status)).count();
        let memorized = count(|s| matches!(s, FactStatus::Memorized { .. }));
        let unchanged = count(|s| matches!(s, FactStatus::AlreadyStored { .. }));
        Ok(MemorizeReport {
            failed: outcomes.len() - memorized - unchanged,
            memorized,
            unchanged,
            outcomes,
            broken,
            seconds: start.elapsed().as_secs_f64(),
            stopped,
        })
    }

    /// Retrieves a fact's neighbours and decides what its commit will do. `Err(status)`
    /// for a fact that needs no training.
    fn prepare(
        &self,
        index: usize,
        fact: &Fact,
        enc: Encoded,
        targets: Vec<u32>,
    ) -> Result<std::result::Result<Prepared, FactStatus>> {
        let key = enc.query.pooled_key();
        let hits = self.selector.retrieve(self.index, &key)?;
        let mut stored = self.selector.resolve(self.backbone, self.index, &hits)?;
        // The same prompt already stored: the same answer is a no-op, another answer
        // is replaced by the new expert in the commit that stores it.
        let mut replaces = Vec::new();
        let mut kept = Vec::with_capacity(stored.len());
        for (e, q) in stored.drain(..) {
            if q.ids() == enc.query.ids() {
                let meta = self.store().meta(e.id())?;
                if meta.provenance.answer.as_deref() == Some(fact.answer.as_str()) {
                    return Ok(Err(FactStatus::AlreadyStored { id: e.id() }));
                }
                replaces.push(e.id());
            } else {
                kept.push((e, q));
            }
        }
        Ok(Ok(Prepared {
            index,
            enc,
            targets,
            key,
            stored: kept,
            hits,
            replaces,
        }))
    }

    /// The training row of a prepared fact: the new expert (column 0) and the stored
    /// facts the rule selects together with it on its prompt, in its own answer
    /// branch. `None` if the rule would not select the new expert.
    fn train_row(&self, p: &Prepared) -> Option<TrainRow> {
        let own: OwnedFact = (Arc::new(p.enc.query.clone()), Arc::new(Vec::new()));
        let sel = self.selector.choose(
            &p.enc,
            &p.stored,
            std::slice::from_ref(&own),
            p.hits.clone(),
        );
        let own_col = sel
            .chosen
            .iter()
            .position(|(src, _)| *src == Source::Owned(0))?;
        // Columns: the new expert first, then the chosen stored facts.
        let stored_refs: Vec<_> = sel.set.stored_refs().to_vec();
        let col = |c: usize| {
            if c == own_col {
                0
            } else {
                c + 1 - usize::from(c > own_col)
            }
        };
        let mut plan = RowPlan {
            active: sel
                .plan
                .active
                .iter()
                .map(|&(c, from)| (col(c), from))
                .collect(),
            candidates: 1 + stored_refs.len(),
            ..sel.plan.clone()
        };
        plan = plan.branch(0);
        Some(TrainRow {
            prompt: p.enc.tokens.clone(),
            targets: p.targets.clone(),
            neighbours: CandidateSet::from_stored(stored_refs),
            plan,
        })
    }

    /// Trains, verifies and commits one batch; returns each fact's outcome and key.
    fn run_batch(
        &self,
        facts: &[Fact],
        batch: &[Prepared],
        opts: &TuneOptions,
        progress: &mut dyn FnMut(MemorizeEvent),
        broken: &mut Vec<u64>,
    ) -> Result<Vec<(FactOutcome, Vec<f32>)>> {
        let model = &self.backbone.model;
        let mut statuses: Vec<Option<FactStatus>> = vec![None; batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        let mut row_of = Vec::with_capacity(batch.len());
        for (b, p) in batch.iter().enumerate() {
            match self.train_row(p) {
                Some(r) => {
                    rows.push(r);
                    row_of.push(b);
                }
                None => statuses[b] = Some(FactStatus::Shadowed),
            }
        }
        let mut trained = Vec::new();
        if !rows.is_empty() {
            let n_rows = rows.len();
            let t_train = Instant::now();
            let prefix = FrozenPrefix::compute(model, self.sites, &rows)?;
            trained = train_batch_with(
                model,
                self.sites,
                self.rank(),
                &rows,
                &prefix,
                opts,
                |step, converged| {
                    progress(MemorizeEvent::Step {
                        step,
                        converged,
                        rows: n_rows,
                    })
                },
            )?;
            let train_secs = t_train.elapsed().as_secs_f64();
            let t_verify = Instant::now();
            self.verify(batch, &rows, &row_of, &trained, &prefix, &mut statuses)?;
            tracing::info!(
                rows = n_rows,
                train_secs,
                verify_secs = t_verify.elapsed().as_secs_f64(),
                "batch trained and verified"
            );
        }
        // Commit the verified experts, with the experts they replace, in one commit.
        let mut new = Vec::new();
        let mut slots = Vec::new();
        let mut replaced = Vec::new();
        for (r, &b) in row_of.iter().enumerate() {
            if !matches!(statuses[b], Some(FactStatus::Memorized { .. })) {
                continue;
            }
            let p = &batch[b];
            let t = &trained[r];
            let f = &facts[p.index];
            new.push(NewExpert {
                key: p.key.iter().map(|&x| f16::from_f32(x)).collect(),
                layers: t.layers.clone(),
                provenance: Provenance::fact(&f.prompt, &f.answer)
                    .with_training(t.loss, t.steps)
                    .with_backbone_digest(model.digest())
                    .with_replaces(p.replaces.clone()),
            });
            slots.push(b);
            replaced.extend(p.replaces.iter().copied());
        }
        let mut new_ids = Vec::new();
        if !new.is_empty() {
            let ids = if replaced.is_empty() {
                self.index.insert_batch(new)?
            } else {
                self.index.replace_batch(new, &replaced)?
            };
            for id in &replaced {
                self.selector.forget(*id);
            }
            for (&b, &id) in slots.iter().zip(&ids) {
                statuses[b] = Some(FactStatus::Memorized {
                    id,
                    replaced: batch[b].replaces.clone(),
                });
            }
            new_ids = ids;
        }
        broken.extend(self.recheck_neighbours(batch, &slots, &new_ids)?);
        let mut out = Vec::with_capacity(batch.len());
        for (b, p) in batch.iter().enumerate() {
            let (loss, steps) = row_of
                .iter()
                .position(|&x| x == b)
                .map_or((f32::NAN, 0), |r| (trained[r].loss, trained[r].steps));
            out.push((
                FactOutcome {
                    fact: facts[p.index].clone(),
                    status: statuses[b].take().unwrap_or(FactStatus::NotConverged),
                    loss,
                    steps,
                },
                p.key.clone(),
            ));
        }
        Ok(out)
    }

    /// Verification through the inference operator: for every converged row, the
    /// selection inference will make once the batch is committed (its stored
    /// neighbours and every new expert of the batch), one teacher-forced pass from the
    /// cached prefix through the fused operator. Greedy decoding yields exactly the
    /// answer iff every teacher-forced argmax is the answer token (each decoding step's
    /// input is then the teacher-forced prefix); a failure is decoded for real to
    /// report what the model says instead.
    fn verify(
        &self,
        batch: &[Prepared],
        rows: &[TrainRow],
        row_of: &[usize],
        trained: &[super::TrainedRow],
        prefix: &FrozenPrefix,
        statuses: &mut [Option<FactStatus>],
    ) -> Result<()> {
        let model = &self.backbone.model;
        let cfg = self.store().config();
        let owned: Vec<OwnedFact> = row_of
            .iter()
            .zip(trained)
            .filter(|(_, t)| t.converged)
            .map(|(&b, t)| {
                (
                    Arc::new(batch[b].enc.query.clone()),
                    Arc::new(t.layers.clone()) as Arc<Vec<AdapterPair>>,
                )
            })
            .collect();
        let owned_row: Vec<usize> = row_of
            .iter()
            .enumerate()
            .filter(|(r, _)| trained[*r].converged)
            .map(|(r, _)| r)
            .collect();
        let mut check = Vec::new();
        let mut hook_rows = Vec::new();
        let mut sels = Vec::new();
        for (r, &b) in row_of.iter().enumerate() {
            if !trained[r].converged {
                statuses[b] = Some(FactStatus::NotConverged);
                continue;
            }
            let p = &batch[b];
            let sel = self
                .selector
                .choose(&p.enc, &p.stored, &owned, p.hits.clone());
            let me = owned_row.iter().position(|&x| x == r);
            let own_col = sel
                .chosen
                .iter()
                .position(|(src, _)| Some(*src) == me.map(Source::Owned));
            let Some(own_col) = own_col else {
                statuses[b] = Some(FactStatus::Shadowed);
                continue;
            };
            let plan = sel.plan.branch(own_col);
            hook_rows.push((sel.set.clone(), plan.clone()));
            sels.push(Selection { plan, ..sel });
            check.push(r);
        }
        if check.is_empty() {
            return Ok(());
        }
        let layers = cfg.layers.clone();
        let hook = SelectionHook::new(hook_rows, &layers, cfg.rank as usize, cfg.d_model as usize)?;
        let argmax = prefix.teacher_forced_argmax(model, self.sites, rows, &check, &hook)?;
        for ((k, &r), sel) in check.iter().enumerate().zip(&sels) {
            let b = row_of[r];
            statuses[b] = Some(if argmax[k] == rows[r].targets {
                FactStatus::Memorized {
                    id: 0,
                    replaced: Vec::new(),
                }
            } else {
                let p = &batch[b];
                let got = generate_answers(
                    self.backbone,
                    self.sites,
                    self.rank(),
                    &p.enc,
                    sel,
                    rows[r].targets.len() + 4,
                )?;
                let got = self
                    .backbone
                    .tokenizer
                    .decode(got.first().map_or(&[][..], |g| &g[..]), true)?;
                tracing::info!(fact = p.index, %got, "verification failed");
                FactStatus::VerifyFailed { got }
            });
        }
        Ok(())
    }

    /// Stored facts whose own question a new expert now matches (the only ones whose
    /// answer it can change) are asked again; a fact whose own expert is no longer
    /// retrieved is relinked in the index first (an approximate-search miss, not a
    /// weight conflict). Returns the ids that still do not answer exactly.
    fn recheck_neighbours(
        &self,
        batch: &[Prepared],
        slots: &[usize],
        new_ids: &[u64],
    ) -> Result<Vec<u64>> {
        let mut broken = Vec::new();
        let mut seen = HashSet::new();
        let new_queries: Vec<&Query> = slots.iter().map(|&b| &batch[b].enc.query).collect();
        for &b in slots {
            for (e, q) in &batch[b].stored {
                let id = e.id();
                if new_ids.contains(&id) || !seen.insert(id) {
                    continue;
                }
                let rule = self.selector.rule();
                if !new_queries
                    .iter()
                    .any(|nq| match_fact(q, nq, rule).matches(rule))
                {
                    continue;
                }
                let meta = self.store().meta(id)?;
                let (Some(prompt), Some(answer)) = (meta.provenance.prompt, meta.provenance.answer)
                else {
                    continue;
                };
                let enc = self.selector.encoder().encode(self.backbone, &prompt)?;
                let mut got = self.ask(&enc)?;
                if got.0 != answer && !got.1.contains(&id) {
                    self.index.relink(id)?;
                    got = self.ask(&enc)?;
                }
                if got.0 != answer {
                    tracing::warn!(id, %prompt, got = %got.0, "stored fact broken by a new insert");
                    broken.push(id);
                }
            }
        }
        Ok(broken)
    }

    /// Greedy answer (all branches joined) and the candidate ids retrieved.
    fn ask(&self, enc: &Encoded) -> Result<(String, Vec<u64>)> {
        let sel = self.selector.select(self.backbone, self.index, enc)?;
        let ids = sel.hits.iter().map(|h| h.id).collect();
        let branches = generate_answers(self.backbone, self.sites, self.rank(), enc, &sel, 48)?;
        let texts = branches
            .iter()
            .map(|t| self.backbone.tokenizer.decode(t, true))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((texts.join("\n"), ids))
    }
}
