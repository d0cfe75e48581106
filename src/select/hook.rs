//! The one adapter hook: at every adapted layer, the fused operator over each batch
//! row's candidates with the per-position scores of the row's plan. The engine runs it
//! for every request, memory tuning verifies through it, and the invariant tests
//! exercise it: a row with no active fact in the positions of a call is returned
//! untouched, so a request that selects nothing is bit-identical to the bare backbone.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::candidates::CandidateSet;
use super::plan::{gate_params, RowPlan};
use super::query::Encoded;
use super::selector::Selection;
use crate::error::{Error, Result};
use crate::kernels::{fused_apply, AdapterWeights, SelectionParams};
use crate::model::{argmax, AdapterHook, AdapterSites, Adapters, Backbone, KvCache};

struct HookRow {
    plan: RowPlan,
    /// One view per adapted layer.
    weights: Vec<Arc<dyn AdapterWeights>>,
}

/// [`AdapterHook`] running the fused operator with each row's [`RowPlan`].
pub struct SelectionHook {
    /// One entry shared by every batch row, or one per row.
    rows: Vec<HookRow>,
    layer_pos: HashMap<usize, usize>,
    params: SelectionParams,
}

impl std::fmt::Debug for SelectionHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectionHook")
            .field(
                "rows",
                &self.rows.iter().map(|r| &r.plan).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl SelectionHook {
    /// A hook for batch rows, each with its candidates and plan (one entry: shared by
    /// every row). `layers` are the store's adapted layers, in store order.
    pub fn new(
        rows: Vec<(CandidateSet, RowPlan)>,
        layers: &[u32],
        rank: usize,
        d_model: usize,
    ) -> Result<Self> {
        let mut max = 1;
        let mut out = Vec::with_capacity(rows.len());
        for (i, (set, plan)) in rows.into_iter().enumerate() {
            if plan.candidates != set.len() {
                return Err(Error::InvalidArgument {
                    name: "plan",
                    reason: format!(
                        "row {i}: a plan over {} candidates for a set of {}",
                        plan.candidates,
                        set.len()
                    ),
                });
            }
            max = max.max(plan.max_active());
            out.push(HookRow {
                weights: (0..layers.len())
                    .map(|l| set.layer_weights(l, rank, d_model))
                    .collect(),
                plan,
            });
        }
        Ok(Self {
            rows: out,
            layer_pos: layers
                .iter()
                .enumerate()
                .map(|(i, &l)| (l as usize, i))
                .collect(),
            params: gate_params(max),
        })
    }

    /// The plan of batch row `i`.
    pub fn plan(&self, i: usize) -> Option<&RowPlan> {
        self.rows.get(i).or(self.rows.last()).map(|r| &r.plan)
    }
}

impl AdapterHook for SelectionHook {
    fn apply(
        &self,
        layer: usize,
        pos: usize,
        h: &Tensor,
        h_norm: &Tensor,
        _queries: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some(&lp) = self.layer_pos.get(&layer) else {
            return Ok(h.clone());
        };
        let (b, t, _) = h.dims3()?;
        let active = |i: usize| {
            self.rows
                .get(i)
                .or(self.rows.last())
                .is_some_and(|r| r.plan.any_active(pos, t))
        };
        if !(0..b).any(active) {
            return Ok(h.clone());
        }
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let row = match self.rows.get(i).or(self.rows.last()) {
                Some(r) if r.plan.any_active(pos, t) => r,
                _ => {
                    out.push(h.get(i)?);
                    continue;
                }
            };
            let Some(weights) = row.weights.get(lp) else {
                out.push(h.get(i)?);
                continue;
            };
            let k = row.plan.candidates;
            let scores = Tensor::from_vec(row.plan.scores(pos, t), (t, k), &Device::Cpu)?
                .to_device(h.device())?;
            let y = fused_apply(
                &h.get(i)?.contiguous()?,
                &h_norm.get(i)?.contiguous()?,
                &scores,
                weights.clone(),
                &self.params,
            )
            .map_err(candle_core::Error::wrap)?;
            out.push(y);
        }
        Tensor::stack(&out, 0)
    }
}

/// Greedy answers to an encoded question under a selection: one token list per
/// branch of its plan, in the order the chosen facts become active (one for a
/// one-fact question; only its own when the plan names a branch). The system prompt and the user message run once with every
/// chosen fact active where its plan says; each branch then continues from that
/// cache with only its own fact after the user message. With nothing selected it is
/// the bare backbone's answer, computed as the bare backbone computes it.
pub fn generate_answers(
    backbone: &Backbone,
    sites: &AdapterSites,
    rank: usize,
    enc: &Encoded,
    sel: &Selection,
    max_tokens: usize,
) -> Result<Vec<Vec<u32>>> {
    generate_answers_streaming(backbone, sites, rank, enc, sel, max_tokens, &mut |_, _| {
        ControlFlow::Continue(())
    })
}

/// [`generate_answers`], calling `on_token(branch, token)` with each new token as it is
/// generated (stop tokens are not passed). `ControlFlow::Break` ends generation: the
/// branches hold the tokens made until then, the branches not started are left out.
pub fn generate_answers_streaming(
    backbone: &Backbone,
    sites: &AdapterSites,
    rank: usize,
    enc: &Encoded,
    sel: &Selection,
    max_tokens: usize,
    on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
) -> Result<Vec<Vec<u32>>> {
    let model = &backbone.model;
    let opts = backbone.greedy_options(max_tokens);
    if sel.is_empty() {
        let g = model.generate(&enc.tokens, &opts, None, &mut |t| on_token(0, t))?;
        return Ok(vec![g.tokens]);
    }
    let layers: Vec<u32> = sites.adapted_layers().iter().map(|&l| l as u32).collect();
    let d = model.d_model();
    let hook = SelectionHook::new(vec![(sel.set.clone(), sel.plan.clone())], &layers, rank, d)?;
    let end = enc.user_end().min(enc.tokens.len().saturating_sub(1));
    let mut shared = KvCache::new(model);
    if end > 0 {
        model.forward(
            &enc.tokens[..end],
            &mut shared,
            Some(Adapters { sites, hook: &hook }),
        )?;
    }
    let max_ctx = model.config().max_position_embeddings;
    let columns: Vec<usize> = match sel.plan.branch {
        Some(b) => vec![b],
        None => sel.plan.active.iter().map(|&(c, _)| c).collect(),
    };
    let mut out = Vec::with_capacity(columns.len());
    let mut stopped = false;
    for (branch, column) in columns.into_iter().enumerate() {
        if stopped {
            break;
        }
        let hook = SelectionHook::new(
            vec![(sel.set.clone(), sel.plan.branch(column))],
            &layers,
            rank,
            d,
        )?;
        let mut cache = shared.clone();
        let mut input = enc.tokens[end..].to_vec();
        let mut tokens = Vec::new();
        while tokens.len() < max_tokens && cache.len() + input.len() <= max_ctx {
            let logits =
                model.forward(&input, &mut cache, Some(Adapters { sites, hook: &hook }))?;
            let next = argmax(&logits)?;
            tokens.push(next);
            if opts.stop_tokens.contains(&next) {
                break;
            }
            if on_token(branch, next).is_break() {
                stopped = true;
                break;
            }
            input = vec![next];
        }
        out.push(tokens);
    }
    Ok(out)
}
