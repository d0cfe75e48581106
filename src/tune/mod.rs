//! Memory tuning: training one new expert per fact against the frozen backbone.
//!
//! A batch of facts trains at once, each row its own expert (the batched-adapter
//! shape of the fused operator). For every row:
//!
//! * the input is the chat-formatted prompt followed by the answer tokens (teacher
//!   forcing); the targets are the answer tokens and `<|im_end|>`;
//! * the row's selection is the one inference will make: stage-2 selection of the
//!   row's request query over its candidates = {the new expert} ∪ {its real
//!   neighbours retrieved from the index}. Neighbours are frozen constants; the new
//!   expert's `A` (small random) and `B` (zero) are the only trainable tensors;
//! * the backbone below the first adapted layer runs once and is cached
//!   ([`Llama::run_layers`] + [`Hidden::detach`]); each step reruns only the adapted
//!   part in [`Mode::Differentiable`] and computes the LM head only at the positions
//!   that predict answer tokens;
//! * the loss is the mean cross-entropy of the row's answer tokens; rows' losses are
//!   summed, so each expert's gradient is that of training it alone (AdamW).
//!
//! A row has converged when every teacher-forced argmax equals its target (which is
//! what greedy decoding of the prompt produces) and its loss is below the threshold;
//! its weights are snapshotted at that step. The caller then verifies with the
//! inference path before committing (see [`crate::engine::Engine::memorize`]).

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use half::f16;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::{AdapterHook, AdapterSites, Adapters, Hidden, Llama, Logits, Mode, Pass};
use crate::select::{select, SelectionParams};
use crate::store::{AdapterPair, ExpertRef};

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

/// One fact ready for training: token ids and its request query.
#[derive(Debug, Clone)]
pub struct TrainRow {
    /// The chat-formatted prompt (what `ask` feeds the model).
    pub prompt: Vec<u32>,
    /// Answer tokens followed by the end-of-turn token (the targets).
    pub targets: Vec<u32>,
    /// The request-level query (`key_dim`, unit norm); the new expert's key is its
    /// fp16 rounding.
    pub query: Vec<f32>,
    /// Frozen neighbours retrieved from the index for this prompt.
    pub neighbours: Vec<ExpertRef>,
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
    /// The weight selection gives the new expert (0: shadowed by a neighbour, not trained).
    pub own_weight: f32,
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

    fn check_rows(&self, rows: &[TrainRow]) -> Result<()> {
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

/// The training hook: per row, `h + w_own·B (A h̃) + Σ_neighbours w_j B_j (A_j h̃)`.
/// Built each step for the rows still training.
struct TrainHook {
    layer_pos: Vec<(usize, usize)>,
    /// Per adapted layer: A `[B, r, d]`, B `[B, d, r]` (stacked per-row `Var`s), or
    /// 2-D `[r, d]`, `[d, r]` for one adapter shared by every row.
    weights: Vec<(Tensor, Tensor)>,
    /// `[B, 1, 1]` weight of each row's own expert.
    own_w: Tensor,
    /// Per adapted layer: neighbours folded into one low-rank pair per row,
    /// `A [B, s·r, d]`, `B [B, d, s·r]` (weights folded into B), or `None`.
    neighbours: Vec<Option<(Tensor, Tensor)>>,
}

impl AdapterHook for TrainHook {
    fn apply(
        &self,
        layer: usize,
        h: &Tensor,
        h_norm: &Tensor,
        _queries: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some(&(_, pos)) = self.layer_pos.iter().find(|(l, _)| *l == layer) else {
            return Ok(h.clone());
        };
        let (a, b) = &self.weights[pos];
        let y = if a.rank() == 2 {
            h_norm
                .broadcast_matmul(&a.t()?)?
                .broadcast_matmul(&b.t()?)?
        } else {
            let z = h_norm.matmul(&a.transpose(1, 2)?)?; // [B, T, r]
            z.matmul(&b.transpose(1, 2)?)? // [B, T, d]
        };
        let mut out = (h + y.broadcast_mul(&self.own_w)?)?;
        if let Some((na, nb)) = &self.neighbours[pos] {
            let z = h_norm.matmul(&na.transpose(1, 2)?)?;
            out = (out + z.matmul(&nb.transpose(1, 2)?)?)?;
        }
        Ok(out)
    }
}

/// Trains one batch of rows (see the module docs). `params` is the inference
/// selection; `sites` the store's adapted layers, `rank` its rank. `on_step(step,
/// converged)` reports progress. Rows leave the batch as they converge, so later
/// steps only pay for the rows still training.
pub fn train_batch(
    model: &Llama,
    sites: &AdapterSites,
    rank: usize,
    params: &SelectionParams,
    rows: &[TrainRow],
    opts: &TuneOptions,
    on_step: impl FnMut(usize, usize),
) -> Result<Vec<TrainedRow>> {
    let prefix = FrozenPrefix::compute(model, sites, rows)?;
    train(
        model,
        sites,
        rank,
        Some(params),
        rows,
        &prefix,
        opts,
        on_step,
    )
}

/// [`train_batch`] over a prefix computed by the caller, who can then reuse it for
/// [`FrozenPrefix::teacher_forced_argmax`] (verification without rerunning the frozen
/// layers). `prefix` must have been computed for `rows`.
#[allow(clippy::too_many_arguments)]
pub fn train_batch_with(
    model: &Llama,
    sites: &AdapterSites,
    rank: usize,
    params: &SelectionParams,
    rows: &[TrainRow],
    prefix: &FrozenPrefix,
    opts: &TuneOptions,
    on_step: impl FnMut(usize, usize),
) -> Result<Vec<TrainedRow>> {
    prefix.check_rows(rows)?;
    train(
        model,
        sites,
        rank,
        Some(params),
        rows,
        prefix,
        opts,
        on_step,
    )
}

/// The peer baseline: one adapter of the same shape *shared* by all rows and applied
/// unconditionally (a plain LoRA fine-tune), trained for exactly `opts.max_steps`
/// steps on all rows. Returns its layers and the final mean loss.
pub fn train_shared(
    model: &Llama,
    sites: &AdapterSites,
    rank: usize,
    rows: &[TrainRow],
    opts: &TuneOptions,
) -> Result<(Vec<AdapterPair>, f32)> {
    let prefix = FrozenPrefix::compute(model, sites, rows)?;
    let out = train(model, sites, rank, None, rows, &prefix, opts, |_, _| {})?;
    let first = out.into_iter().next().ok_or(Error::EmptyBatch {
        what: "memory tuning",
    })?;
    Ok((first.layers, first.loss))
}

#[allow(clippy::too_many_arguments)]
fn train(
    model: &Llama,
    sites: &AdapterSites,
    rank: usize,
    params: Option<&SelectionParams>,
    rows: &[TrainRow],
    prefix: &FrozenPrefix,
    opts: &TuneOptions,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Vec<TrainedRow>> {
    let Some(first) = rows.first() else {
        return Err(Error::EmptyBatch {
            what: "memory tuning",
        });
    };
    let shared = params.is_none();
    let d = model.d_model();
    let key_dim = first.query.len();
    let layers = sites.adapted_layers().to_vec();
    let n_layers = layers.len();
    let device = model.device().clone();
    // Stage-2 selection per row: constant over tokens and steps (request-level query,
    // frozen keys).
    let mut own_w = Vec::with_capacity(rows.len());
    let mut picked: Vec<Vec<(usize, f32)>> = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if r.query.len() != key_dim || r.targets.is_empty() || r.prompt.is_empty() {
            return Err(Error::InvalidArgument {
                name: "rows",
                reason: format!("row {i}: empty prompt/targets or query of the wrong length"),
            });
        }
        let Some(params) = params else {
            own_w.push(1.0);
            picked.push(Vec::new());
            continue;
        };
        let mut keys: Vec<f32> = r.query.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
        for n in &r.neighbours {
            keys.extend(n.key().iter().map(|x| x.to_f32()));
        }
        let sel = select(&r.query, &keys, key_dim, params)?;
        let chosen = sel.get(0).unwrap_or(&[]);
        own_w.push(
            chosen
                .iter()
                .find(|s| s.candidate == 0)
                .map_or(0.0, |s| s.weight),
        );
        picked.push(
            chosen
                .iter()
                .filter(|s| s.candidate != 0)
                .map(|s| (s.candidate as usize - 1, s.weight))
                .collect(),
        );
    }

    let seqs = &prefix.seqs;
    let b = rows.len();

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
    // Frozen neighbour mixes, per layer `[B, s·r, d]` / `[B, d, s·r]`.
    let s_max = picked.iter().map(Vec::len).max().unwrap_or(0);
    let mut neighbours = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        if s_max == 0 {
            neighbours.push(None);
            continue;
        }
        let w = s_max * rank;
        let mut na = vec![0f32; b * w * d];
        let mut nb = vec![0f32; b * d * w];
        for (i, p) in picked.iter().enumerate() {
            for (s, &(j, weight)) in p.iter().enumerate() {
                let e = &rows[i].neighbours[j];
                let (ea, eb) = (e.a(l), e.b(l));
                for rr in 0..rank {
                    for c in 0..d {
                        na[(i * w + s * rank + rr) * d + c] =
                            ea.get(rr * d + c).map_or(0.0, |x| x.to_f32());
                    }
                }
                for c in 0..d {
                    for rr in 0..rank {
                        nb[(i * d + c) * w + s * rank + rr] =
                            weight * eb.get(c * rank + rr).map_or(0.0, |x| x.to_f32());
                    }
                }
            }
        }
        neighbours.push(Some((
            Tensor::from_vec(na, (b, w, d), &device).map_err(kerr)?,
            Tensor::from_vec(nb, (b, d, w), &device).map_err(kerr)?,
        )));
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
    for (i, w) in own_w.iter().enumerate() {
        if *w == 0.0 {
            out[i] = Some(TrainedRow {
                layers: Vec::new(),
                loss: f32::NAN,
                steps: 0,
                converged: false,
                own_weight: 0.0,
            });
        }
    }
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
        let f = || -> candle_core::Result<_> {
            let idx = Tensor::from_vec(
                active.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                ba,
                &device,
            )?;
            let hidden = prefix.pick(&idx, t_act)?;
            let mut weights = Vec::with_capacity(n_layers);
            for (l, (a0, b0)) in vars[0].iter().enumerate() {
                if shared {
                    weights.push((a0.as_tensor().clone(), b0.as_tensor().clone()));
                } else {
                    let a: Vec<&Tensor> =
                        active.iter().map(|&i| vars[i][l].0.as_tensor()).collect();
                    let bm: Vec<&Tensor> =
                        active.iter().map(|&i| vars[i][l].1.as_tensor()).collect();
                    weights.push((Tensor::stack(&a, 0)?, Tensor::stack(&bm, 0)?));
                }
            }
            let nbs = neighbours
                .iter()
                .map(|o| {
                    o.as_ref()
                        .map(|(a, bm)| {
                            Ok::<_, candle_core::Error>((
                                a.index_select(&idx, 0)?,
                                bm.index_select(&idx, 0)?,
                            ))
                        })
                        .transpose()
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let w: Vec<f32> = active.iter().map(|&i| own_w[i]).collect();
            let hook = TrainHook {
                layer_pos: layer_pos.clone(),
                weights,
                own_w: Tensor::from_vec(w, (ba, 1, 1), &device)?,
                neighbours: nbs,
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
                    own_weight: own_w[i],
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
                                "{which} of row {i} at adapted layer {} received no gradient: an op without backward is on the path",
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
                own_weight: own_w[i],
            },
        });
    }
    Ok(result)
}
