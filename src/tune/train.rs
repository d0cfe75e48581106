//! Training one new expert per fact against the frozen backbone.
//!
//! A batch of facts trains at once, each row its own expert. For every row:
//!
//! * the input is the chat-formatted prompt followed by the answer tokens (teacher
//!   forcing); the targets are the answer tokens and `<|im_end|>`;
//! * the row's experts act where inference will make them act: the row's
//!   [`RowPlan`] (the same plan the inference hook runs) over its candidates — column
//!   0 the new expert, then any stored fact the rule selects together with it — through
//!   the operator's reference ([`reference_apply`], batched: one call per adapted
//!   layer); only the new expert's `A` (small random) and `B` (zero) train;
//! * the backbone below the first adapted layer runs once and is cached
//!   ([`Llama::run_layers`] + [`Hidden::detach`]); each step reruns only the adapted
//!   part in [`Mode::Differentiable`] and computes the LM head only at the positions
//!   that predict answer tokens;
//! * the loss is the mean cross-entropy of the row's answer tokens; rows' losses are
//!   summed, so each expert's gradient is that of training it alone (AdamW).
//!
//! A row has converged when every teacher-forced argmax equals its target (which is
//! what greedy decoding of the prompt produces) and its loss is below the threshold;
//! its weights are snapshotted at that step. [`super::Memorizer`] then verifies with
//! the inference operator before committing.

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use half::f16;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::kernels::reference_apply;
use crate::model::{AdapterHook, AdapterSites, Adapters, Hidden, Llama, Logits, Mode, Pass};
use crate::select::plan::gate_params;
use crate::select::{CandidateSet, RowPlan, SelectionParams};
use crate::store::AdapterPair;

/// Hyper-parameters of memory tuning.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneOptions {
    /// AdamW learning rate.
    pub lr: f64,
    /// Most optimizer steps per batch; rows not converged by then are reported.
    pub max_steps: usize,
    /// A row converges only when its mean answer loss is below this (nats/token).
    pub loss_threshold: f32,
    /// Half-width of the uniform initialisation of `A`.
    pub init_scale: f32,
    /// Seed of the initialisation.
    pub seed: u64,
    /// Facts per training batch.
    pub batch_size: usize,
}

impl Default for TuneOptions {
    fn default() -> Self {
        Self {
            lr: 0.05,
            max_steps: 120,
            loss_threshold: 0.05,
            init_scale: 0.05,
            seed: 0x6d6f6d65,
            batch_size: 10,
        }
    }
}

/// One fact ready for training.
#[derive(Debug, Clone)]
pub struct TrainRow {
    /// The chat-formatted prompt (what `ask` feeds the model).
    pub prompt: Vec<u32>,
    /// Answer tokens followed by the end-of-turn token (the targets).
    pub targets: Vec<u32>,
    /// Stored experts the rule selects together with the new one on this prompt
    /// (frozen; columns 1.. of the plan). Usually none.
    pub neighbours: CandidateSet,
    /// Where the experts act: column 0 is the new expert.
    pub plan: RowPlan,
}

/// What training made of one row.
#[derive(Debug, Clone)]
pub struct TrainedRow {
    /// One pair per adapted layer (fp16), from the step at which the row converged,
    /// or the last step if it never did.
    pub layers: Vec<AdapterPair>,
    /// The row's mean answer loss at that step.
    pub loss: f32,
    /// Steps taken until then.
    pub steps: u32,
    /// Whether the row met the stopping rule.
    pub converged: bool,
}

fn kerr(e: candle_core::Error) -> Error {
    Error::Kernel(e.into())
}

/// The frozen part of a batch, computed once and shared by training and verification:
/// each row's input (prompt ++ answer tokens but the last, right-padded) and the
/// backbone's hidden states below the first adapted layer, cut from the autograd graph.
/// Adapters cannot change those layers, and right padding cannot change the states of
/// earlier positions (causal attention).
pub struct FrozenPrefix {
    /// Unpadded inputs, one per row.
    seqs: Vec<Vec<u32>>,
    /// `[rows, longest input, d_model]` at the first adapted layer.
    hidden: Hidden,
}

impl std::fmt::Debug for FrozenPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenPrefix")
            .field("rows", &self.seqs.len())
            .field("next_layer", &self.hidden.next_layer)
            .finish_non_exhaustive()
    }
}

impl FrozenPrefix {
    /// Runs the layers below `sites`' first adapted layer over `rows` (fast ops).
    pub fn compute(model: &Llama, sites: &AdapterSites, rows: &[TrainRow]) -> Result<Self> {
        let Some(first) = rows.first() else {
            return Err(Error::EmptyBatch {
                what: "memory tuning",
            });
        };
        for (i, r) in rows.iter().enumerate() {
            if r.targets.is_empty() || r.prompt.is_empty() {
                return Err(Error::InvalidArgument {
                    name: "rows",
                    reason: format!("row {i}: empty prompt or targets"),
                });
            }
        }
        let seqs: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| {
                let mut s = r.prompt.clone();
                s.extend_from_slice(&r.targets[..r.targets.len() - 1]);
                s
            })
            .collect();
        let t_max = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let pad = first.targets[first.targets.len() - 1];
        let padded: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| {
                let mut p = s.clone();
                p.resize(t_max, pad);
                p
            })
            .collect();
        let refs: Vec<&[u32]> = padded.iter().map(Vec::as_slice).collect();
        let hidden = model.embed(&refs, 0)?;
        let hidden = model
            .run_layers(
                hidden,
                sites.first_adapted(),
                None,
                &Pass::queries_only(sites, Mode::Fast),
            )?
            .detach();
        Ok(Self { seqs, hidden })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub(crate) fn check_rows(&self, rows: &[TrainRow]) -> Result<()> {
        let same = rows.len() == self.seqs.len()
            && rows.iter().zip(&self.seqs).all(|(r, s)| {
                s.len() + 1 == r.prompt.len() + r.targets.len() && s.starts_with(&r.prompt)
            });
        if same {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                name: "prefix",
                reason: "the frozen prefix was computed for other rows".into(),
            })
        }
    }

    /// The rows `idx` (a u32 index tensor), trimmed to `t` positions.
    fn pick(&self, idx: &Tensor, t: usize) -> candle_core::Result<Hidden> {
        let pick =
            |x: &Tensor| -> candle_core::Result<Tensor> { x.index_select(idx, 0)?.narrow(1, 0, t) };
        Ok(Hidden {
            h: pick(&self.hidden.h)?,
            queries: self.hidden.queries.as_ref().map(pick).transpose()?,
            next_layer: self.hidden.next_layer,
            pos: 0,
        })
    }

    /// Greedy decoding of the prompts of rows `which`, checked in one teacher-forced
    /// pass through the *inference* operator: runs the adapted layers with `hook`
    /// (fast ops) from the cached prefix and returns, per row, the argmax token at every
    /// answer position. Greedy decoding of a prompt yields exactly `targets` if and
    /// only if these argmaxes equal `targets` (each step's input is then the
    /// teacher-forced prefix, and the selection is fixed per request), so this replaces
    /// decoding token by token through all layers.
    pub fn teacher_forced_argmax(
        &self,
        model: &Llama,
        sites: &AdapterSites,
        rows: &[TrainRow],
        which: &[usize],
        hook: &dyn AdapterHook,
    ) -> Result<Vec<Vec<u32>>> {
        self.check_rows(rows)?;
        if which.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(&bad) = which.iter().find(|&&i| i >= rows.len()) {
            return Err(Error::InvalidArgument {
                name: "which",
                reason: format!("row {bad} of a batch of {}", rows.len()),
            });
        }
        let device = model.device().clone();
        let t_act = which.iter().map(|&i| self.seqs[i].len()).max().unwrap_or(1);
        let mut positions = Vec::new();
        for (k, &i) in which.iter().enumerate() {
            let r = &rows[i];
            for j in 0..r.targets.len() {
                positions.push((k * t_act + r.prompt.len() - 1 + j) as u32);
            }
        }
        let idx = Tensor::from_vec(
            which.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            which.len(),
            &device,
        )
        .map_err(kerr)?;
        let hidden = self.pick(&idx, t_act).map_err(kerr)?;
        let pass = Pass::adapted(Adapters { sites, hook }, Mode::Fast);
        let hidden = model.run_layers(hidden, model.num_layers(), None, &pass)?;
        let n_pred = positions.len();
        let pos_t = Tensor::from_vec(positions, n_pred, &device).map_err(kerr)?;
        let logits = answer_logits(model, &hidden, which.len() * t_act, &pos_t, Mode::Fast)?;
        let argmax = logits
            .squeeze(0)
            .and_then(|l| l.argmax(D::Minus1))
            .and_then(|a| a.to_vec1::<u32>())
            .map_err(kerr)?;
        let mut out = Vec::with_capacity(which.len());
        let mut at = 0;
        for &i in which {
            let n = rows[i].targets.len();
            out.push(argmax[at..at + n].to_vec());
            at += n;
        }
        Ok(out)
    }
}

/// Logits `[1, positions, vocab]` at `positions` of the flattened `[rows, t, d]` final
/// hidden state (`rows_t = rows · t`): the LM head runs only where answers are predicted.
fn answer_logits(
    model: &Llama,
    hidden: &Hidden,
    rows_t: usize,
    positions: &Tensor,
    mode: Mode,
) -> Result<Tensor> {
    let gathered = hidden
        .h
        .reshape((rows_t, model.d_model()))
        .and_then(|f| f.index_select(positions, 0))
        .and_then(|g| g.unsqueeze(0))
        .map_err(kerr)?;
    model
        .logits(
            &Hidden {
                h: gathered,
                queries: None,
                next_layer: model.num_layers(),
                pos: 0,
            },
            Logits::All,
            mode,
        )
        .map_err(Into::into)
}

/// The training hook: at each adapted layer, the operator's reference over every
/// row's candidates (its trainable new expert and frozen neighbours) with the rows'
/// plan scores. Built each step for the rows still training.
struct TrainHook {
    layer_pos: Vec<(usize, usize)>,
    /// Per adapted layer: A `[B, K, r, d]`, B `[B, K, d, r]`.
    weights: Vec<(Tensor, Tensor)>,
    /// `[B, T, K]` plan scores of positions `0..T`.
    scores: Tensor,
    params: SelectionParams,
}

impl AdapterHook for TrainHook {
    fn apply(
        &self,
        layer: usize,
        _pos: usize,
        h: &Tensor,
        h_norm: &Tensor,
        _queries: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some(&(_, lp)) = self.layer_pos.iter().find(|(l, _)| *l == layer) else {
            return Ok(h.clone());
        };
        let (a, b) = &self.weights[lp];
        reference_apply(h, h_norm, &self.scores, a, b, &self.params)
            .map_err(candle_core::Error::wrap)
    }
}

/// Trains one batch of rows (see the module docs). `sites` are the store's adapted
/// layers, `rank` its rank. `on_step(step, converged)` reports progress. Rows leave the
/// batch as they converge, so later steps only pay for the rows still training.
pub fn train_batch(
    model: &Llama,
    sites: &AdapterSites,
    rank: usize,
    rows: &[TrainRow],
    opts: &TuneOptions,
    on_step: impl FnMut(usize, usize),
) -> Result<Vec<TrainedRow>> {
    let prefix = FrozenPrefix::compute(model, sites, rows)?;
    train(model, sites, rank, false, rows, &prefix, opts, on_step)
}

/// [`train_batch`] over a prefix computed by the caller, who can then reuse it for
/// [`FrozenPrefix::teacher_forced_argmax`] (verification without rerunning the frozen
/// layers). `prefix` must have been computed for `rows`.
pub fn train_batch_with(
    model: &Llama,
    sites: &AdapterSites,
    rank: usize,
    rows: &[TrainRow],
    prefix: &FrozenPrefix,
    opts: &TuneOptions,
    on_step: impl FnMut(usize, usize),
) -> Result<Vec<TrainedRow>> {
    prefix.check_rows(rows)?;
    train(model, sites, rank, false, rows, prefix, opts, on_step)
}

/// The peer baseline: one adapter of the same shape *shared* by all rows and applied
/// unconditionally at every position (a plain LoRA fine-tune; the rows' plans are
/// ignored), trained for exactly `opts.max_steps` steps on all rows. Returns its
/// layers and the final mean loss.
pub fn train_shared(
    model: &Llama,
    sites: &AdapterSites,
    rank: usize,
    rows: &[TrainRow],
    opts: &TuneOptions,
) -> Result<(Vec<AdapterPair>, f32)> {
    let prefix = FrozenPrefix::compute(model, sites, rows)?;
    let out = train(model, sites, rank, true, rows, &prefix, opts, |_, _| {})?;
    let first = out.into_iter().next().ok_or(Error::EmptyBatch {
        what: "memory tuning",
    })?;
    Ok((first.layers, first.loss))
}

/// A row's frozen neighbour weights at one adapted layer as f32 tensors
/// `[n, r, d]`, `[n, d, r]`.
fn neighbour_tensors(
    set: &CandidateSet,
    layer: usize,
    rank: usize,
    d: usize,
    device: &candle_core::Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = set.len();
    let mut a = Vec::with_capacity(n * rank * d);
    let mut b = Vec::with_capacity(n * rank * d);
    for j in 0..n {
        a.extend(set.a(j, layer).iter().map(|x| x.to_f32()));
        b.extend(set.b(j, layer).iter().map(|x| x.to_f32()));
    }
    if a.len() != n * rank * d || b.len() != n * rank * d {
        candle_core::bail!("a neighbour's weights do not have rank {rank} × d_model {d}");
    }
    Ok((
        Tensor::from_vec(a, (n, rank, d), device)?,
        Tensor::from_vec(b, (n, d, rank), device)?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn train(
    model: &Llama,
    sites: &AdapterSites,
    rank: usize,
    shared: bool,
    rows: &[TrainRow],
    prefix: &FrozenPrefix,
    opts: &TuneOptions,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Vec<TrainedRow>> {
    if rows.is_empty() {
        return Err(Error::EmptyBatch {
            what: "memory tuning",
        });
    }
    let d = model.d_model();
    let layers = sites.adapted_layers().to_vec();
    let n_layers = layers.len();
    let device = model.device().clone();
    for (i, r) in rows.iter().enumerate() {
        if r.targets.is_empty() || r.prompt.is_empty() {
            return Err(Error::InvalidArgument {
                name: "rows",
                reason: format!("row {i}: empty prompt or targets"),
            });
        }
        if !shared && r.plan.candidates != 1 + r.neighbours.len() {
            return Err(Error::InvalidArgument {
                name: "rows",
                reason: format!(
                    "row {i}: a plan over {} candidates for the new expert and {} neighbours",
                    r.plan.candidates,
                    r.neighbours.len()
                ),
            });
        }
    }
    let seqs = &prefix.seqs;
    let b = rows.len();
    // Columns of the batched operator: the new expert, then each row's neighbours,
    // padded to the widest row (padding scores −inf, weights zero).
    let k_max = if shared {
        1
    } else {
        rows.iter().map(|r| r.plan.candidates).max().unwrap_or(1)
    };
    let max_active = rows.iter().map(|r| r.plan.max_active()).max().unwrap_or(1);
    let params = gate_params(max_active);
    // Frozen neighbour weights per row and layer, padded: `[k_max − 1, r, d]`.
    let mut frozen: Vec<Vec<(Tensor, Tensor)>> = Vec::with_capacity(b);
    for r in rows {
        let mut per = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let (mut na, mut nb) =
                neighbour_tensors(&r.neighbours, l, rank, d, &device).map_err(kerr)?;
            let pad = k_max - 1 - if shared { 0 } else { r.neighbours.len() };
            if pad > 0 {
                let za = Tensor::zeros((pad, rank, d), DType::F32, &device).map_err(kerr)?;
                let zb = Tensor::zeros((pad, d, rank), DType::F32, &device).map_err(kerr)?;
                na = Tensor::cat(&[&na, &za], 0).map_err(kerr)?;
                nb = Tensor::cat(&[&nb, &zb], 0).map_err(kerr)?;
            }
            per.push((na, nb));
        }
        frozen.push(per);
    }
    let always = RowPlan::always(1);

    // Trainable weights, one pair of Vars per row and layer (one in all for `shared`).
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let n_sets = if shared { 1 } else { b };
    let mut vars: Vec<Vec<(Var, Var)>> = Vec::with_capacity(n_sets);
    let mut all_vars = Vec::with_capacity(2 * n_layers * n_sets);
    for _ in 0..n_sets {
        let mut per = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            let a: Vec<f32> = (0..rank * d)
                .map(|_| rng.random_range(-opts.init_scale..=opts.init_scale))
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (rank, d), &device).map_err(kerr)?)
                .map_err(kerr)?;
            let bm = Var::zeros((d, rank), DType::F32, &device).map_err(kerr)?;
            all_vars.push(a.clone());
            all_vars.push(bm.clone());
            per.push((a, bm));
        }
        vars.push(per);
    }
    let mut opt = AdamW::new(
        all_vars.clone(),
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .map_err(kerr)?;

    let snapshot = |set: usize| -> Result<Vec<AdapterPair>> {
        vars[set]
            .iter()
            .map(|(a, bm)| {
                let to16 = |t: &Tensor| -> candle_core::Result<Vec<f16>> {
                    t.to_dtype(DType::F16)?.flatten_all()?.to_vec1::<f16>()
                };
                Ok(AdapterPair {
                    a: to16(a.as_tensor()).map_err(kerr)?,
                    b: to16(bm.as_tensor()).map_err(kerr)?,
                })
            })
            .collect()
    };
    let mut out: Vec<Option<TrainedRow>> = vec![None; b];
    let n = model.num_layers();
    let layer_pos: Vec<(usize, usize)> = layers.iter().enumerate().map(|(p, &l)| (l, p)).collect();
    let mut last = vec![f32::NAN; b];
    let mut last_step = 0usize;
    for step in 1..=opts.max_steps {
        // The rows still training (all of them for a shared adapter).
        let active: Vec<usize> = (0..b).filter(|&i| shared || out[i].is_none()).collect();
        if active.is_empty() {
            break;
        }
        last_step = step;
        let ba = active.len();
        let t_act = active.iter().map(|&i| seqs[i].len()).max().unwrap_or(1);
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        let mut row_of = Vec::new();
        for (k, &i) in active.iter().enumerate() {
            let r = &rows[i];
            for (j, &t) in r.targets.iter().enumerate() {
                positions.push((k * t_act + r.prompt.len() - 1 + j) as u32);
                targets.push(t);
                row_of.push(k);
            }
        }
        let n_pred = positions.len();
        let mut mean_m = vec![0f32; ba * n_pred];
        for (j, &k) in row_of.iter().enumerate() {
            mean_m[k * n_pred + j] = 1.0 / rows[active[k]].targets.len() as f32;
        }
        let mut scores = Vec::with_capacity(ba * t_act * k_max);
        for &i in &active {
            let plan = if shared { &always } else { &rows[i].plan };
            let s = plan.scores(0, t_act);
            for p in 0..t_act {
                let row = &s[p * plan.candidates..(p + 1) * plan.candidates];
                scores.extend_from_slice(row);
                scores.extend(std::iter::repeat_n(
                    f32::NEG_INFINITY,
                    k_max - plan.candidates,
                ));
            }
        }
        let f = || -> candle_core::Result<_> {
            let idx = Tensor::from_vec(
                active.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                ba,
                &device,
            )?;
            let hidden = prefix.pick(&idx, t_act)?;
            let mut weights = Vec::with_capacity(n_layers);
            for l in 0..n_layers {
                let mut a_rows = Vec::with_capacity(ba);
                let mut b_rows = Vec::with_capacity(ba);
                for &i in &active {
                    let (va, vb) = &vars[if shared { 0 } else { i }][l];
                    let (na, nb) = &frozen[i][l];
                    a_rows.push(Tensor::cat(&[&va.as_tensor().unsqueeze(0)?, na], 0)?);
                    b_rows.push(Tensor::cat(&[&vb.as_tensor().unsqueeze(0)?, nb], 0)?);
                }
                weights.push((Tensor::stack(&a_rows, 0)?, Tensor::stack(&b_rows, 0)?));
            }
            let hook = TrainHook {
                layer_pos: layer_pos.clone(),
                weights,
                scores: Tensor::from_vec(scores.clone(), (ba, t_act, k_max), &device)?,
                params: params.clone(),
            };
            Ok((
                hidden,
                hook,
                Tensor::from_vec(positions.clone(), n_pred, &device)?,
                Tensor::from_vec(targets.clone(), n_pred, &device)?,
                Tensor::from_vec(mean_m.clone(), (ba, n_pred), &device)?,
            ))
        };
        let (hidden, hook, pos_t, tgt_t, mean_t) = f().map_err(kerr)?;
        let pass = Pass::adapted(Adapters { sites, hook: &hook }, Mode::Differentiable);
        let hidden = model.run_layers(hidden, n, None, &pass)?;
        let logits = answer_logits(model, &hidden, ba * t_act, &pos_t, Mode::Differentiable)?;
        let f = || -> candle_core::Result<(Tensor, Vec<f32>, Vec<u32>)> {
            let logits = logits.squeeze(0)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let nll = logp.gather(&tgt_t.unsqueeze(1)?, 1)?.neg()?; // [N, 1]
            let row_loss = mean_t.matmul(&nll)?.squeeze(1)?; // [Ba]
            let argmax = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let total = if shared {
                row_loss.mean_all()?
            } else {
                row_loss.sum_all()?
            };
            Ok((total, row_loss.to_vec1::<f32>()?, argmax))
        };
        let (loss, row_loss, argmax) = f().map_err(kerr)?;
        let mut exact = vec![true; ba];
        for (j, &k) in row_of.iter().enumerate() {
            if argmax[j] != targets[j] {
                exact[k] = false;
            }
        }
        for (k, &i) in active.iter().enumerate() {
            last[i] = row_loss[k];
            if !shared && exact[k] && row_loss[k] < opts.loss_threshold {
                tracing::debug!(row = i, step, loss = row_loss[k], "row converged");
                out[i] = Some(TrainedRow {
                    layers: snapshot(i)?,
                    loss: row_loss[k],
                    steps: step as u32,
                    converged: true,
                });
            }
        }
        on_step(step, out.iter().filter(|o| o.is_some()).count());
        if step == opts.max_steps || out.iter().all(Option::is_some) {
            break;
        }
        let grads = loss.backward().map_err(kerr)?;
        for &i in &active {
            let set = if shared { 0 } else { i };
            for (l, (a, bm)) in vars[set].iter().enumerate() {
                for (which, v) in [("A", a), ("B", bm)] {
                    if grads.get(v.as_tensor()).is_none() {
                        return Err(Error::Training {
                            reason: format!(
                                "{which} of row {i} at adapted layer {} received no gradient: an op without backward is on the path, or the plan never activates the expert",
                                layers[l]
                            ),
                        });
                    }
                }
            }
        }
        opt.step(&grads).map_err(kerr)?;
    }
    tracing::debug!(?last, "batch done");
    let mut result = Vec::with_capacity(b);
    for i in 0..b {
        let done = out[i].take();
        result.push(match done {
            Some(r) => r,
            None => TrainedRow {
                layers: snapshot(if shared { 0 } else { i })?,
                loss: last[i],
                steps: last_step as u32,
                converged: false,
            },
        });
    }
    Ok(result)
}
