//! The apply operator from ordinary candle ops: the oracle for the fused kernels and
//! the path that memory tuning differentiates through.
//!
//! Every op used has a backward in candle (no `softmax_last_dim`, no fused norms —
//! see NOTES-backbone.md), so gradients reach `A`, `B` (and `h`, `h_norm`). The
//! discrete choice (sort, top-k, threshold) carries no gradient, as intended.
//!
//! Both functions take one row (`h`: `[T, d]`, `scores`: `[T, K]`, `A`: `[K, r, d]`)
//! or a batch of rows, each with its own K candidates (`[B, T, d]`, `[B, T, K]`,
//! `[B, K, r, d]`): memory tuning trains a batch of facts, each row its own expert
//! and its own neighbours, through one call per adapted layer.

use candle_core::{DType, Tensor, D};

use super::gate::{SelectError, SelectionParams};
use super::KernelError;

/// The gate's result as tensors (see [`super::gate`] for the definition).
#[derive(Debug, Clone)]
pub struct ReferenceSelection {
    /// `[.., T, s]` u32 candidate indices, best first; `s` is the most experts any
    /// token uses (at most `min(top_k, K)`). Slots of abstaining candidates hold some
    /// index with weight 0.
    pub indices: Tensor,
    /// `[.., T, s]` f32 softmax weights, 0 in abstaining slots.
    pub weights: Tensor,
    /// `[.., T]` u8: 1 where the token has at least one expert. Rows with 0 are
    /// returned unchanged by [`reference_mix`].
    pub active: Tensor,
}

fn bad(name: &'static str, t: &Tensor, expected: &'static str) -> KernelError {
    KernelError::BadRank {
        name,
        shape: t.dims().to_vec(),
        expected,
    }
}

/// The gate from candle ops: penalty, strict τ, top-k, softmax.
///
/// `scores`: `[T, K]` or `[B, T, K]`, f32; `−inf` abstains, NaN and `+inf` are errors.
pub fn reference_select(
    scores: &Tensor,
    params: &SelectionParams,
) -> Result<ReferenceSelection, KernelError> {
    let lead: Vec<usize> = match scores.rank() {
        2 | 3 => scores.dims()[..scores.rank() - 1].to_vec(),
        _ => return Err(bad("scores", scores, "[T, K] or [B, T, K]")),
    };
    let candidates = scores.dims()[scores.rank() - 1];
    let rows: usize = lead.iter().product();
    params.validate(candidates)?;
    let s2 = scores.to_dtype(DType::F32)?.reshape((rows, candidates))?;
    let flat = s2.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = flat.iter().position(|s| s.is_nan() || *s == f32::INFINITY) {
        let tokens = lead.last().copied().unwrap_or(1).max(1);
        return Err(SelectError::NonFiniteScore {
            token: (i / candidates.max(1)) % tokens,
            candidate: i % candidates.max(1),
            value: flat[i],
        }
        .into());
    }
    let device = scores.device();
    let slots = params.slots(candidates);
    let shaped = |t: Tensor, last: Option<usize>| -> candle_core::Result<Tensor> {
        let mut dims = lead.clone();
        dims.extend(last);
        t.reshape(dims)
    };
    let empty = || -> Result<ReferenceSelection, KernelError> {
        Ok(ReferenceSelection {
            indices: shaped(Tensor::zeros((rows, 0), DType::U32, device)?, Some(0))?,
            weights: shaped(Tensor::zeros((rows, 0), DType::F32, device)?, Some(0))?,
            active: shaped(Tensor::zeros(rows, DType::U8, device)?, None)?,
        })
    };
    if slots == 0 || rows == 0 {
        return empty();
    }
    let mut s2 = s2;
    if let Some(p) = &params.penalty {
        let p = Tensor::from_slice(p, (1, candidates), device)?;
        s2 = s2.broadcast_sub(&p)?;
    }
    // candle's arg sort is stable, so equal scores keep the lower index first.
    let indices = s2
        .arg_sort_last_dim(false)?
        .narrow(1, 0, slots)?
        .contiguous()?;
    let top = s2.gather(&indices, 1)?;
    let valid = top.gt(params.tau as f64)?;
    // Only as many slots as the busiest token uses: training batches mostly use one.
    let used = valid
        .to_dtype(DType::U32)?
        .sum(1)?
        .max(0)?
        .to_scalar::<u32>()? as usize;
    if used == 0 {
        return empty();
    }
    let (indices, top, valid) = (
        indices.narrow(1, 0, used)?.contiguous()?,
        top.narrow(1, 0, used)?,
        valid.narrow(1, 0, used)?,
    );
    // −inf scores of abstaining slots would make (s − best) NaN: replace them first.
    let zero = Tensor::zeros((rows, used), DType::F32, device)?;
    let top = valid.where_cond(&top, &zero)?;
    // Shift by the best score before dividing by the temperature: tiny temperatures
    // give one-hot weights instead of inf − inf.
    let best = top.narrow(1, 0, 1)?;
    let logits = (top.broadcast_sub(&best)? / params.temperature as f64)?;
    // Keep column 0 even when it abstains so that no row is all −inf (NaN softmax);
    // the validity mask zeroes such rows afterwards.
    let mut first = vec![0u8; used];
    first[0] = 1;
    let first = Tensor::from_vec(first, (1, used), device)?;
    let keep = valid.broadcast_maximum(&first)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (rows, used), device)?;
    let masked = keep.where_cond(&logits, &neg_inf)?;
    let weights = (candle_nn::ops::softmax(&masked, D::Minus1)? * valid.to_dtype(DType::F32)?)?;
    let active = valid.narrow(1, 0, 1)?.squeeze(1)?;
    Ok(ReferenceSelection {
        indices: shaped(indices, Some(used))?,
        weights: shaped(weights, Some(used))?,
        active: shaped(active, None)?,
    })
}

/// `h + Σ_s w_ts · B_{i_ts} (A_{i_ts} h̃_t)` for a given selection, in f32, cast to
/// `h`'s dtype; inactive rows are `h` exactly.
///
/// One row: `h`, `h_norm` `[T, d]`, `a` `[K, rank, d]`, `b` `[K, d, rank]`; a batch:
/// `[B, T, d]` and `[B, K, rank, d]`, `[B, K, d, rank]`, each row indexing its own
/// candidates. Any float dtype (f32 `Var`s when training).
pub fn reference_mix(
    h: &Tensor,
    h_norm: &Tensor,
    a: &Tensor,
    b: &Tensor,
    sel: &ReferenceSelection,
) -> Result<Tensor, KernelError> {
    let batched = h.rank() == 3;
    let (batch, tokens, d_model) = match *h.dims() {
        [t, d] => (1, t, d),
        [bs, t, d] => (bs, t, d),
        _ => return Err(bad("hidden states", h, "[T, d_model] or [B, T, d_model]")),
    };
    if h_norm.dims() != h.dims() {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "h_norm",
            h_norm.dims(),
        ));
    }
    let want_a = if batched { 4 } else { 3 };
    if a.rank() != want_a {
        return Err(bad(
            "A",
            a,
            if batched {
                "[B, K, rank, d_model]"
            } else {
                "[K, rank, d_model]"
            },
        ));
    }
    let ad = a.dims();
    let (k, rank, a_d) = (ad[want_a - 3], ad[want_a - 2], ad[want_a - 1]);
    if a_d != d_model || (batched && ad[0] != batch) {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "A [.., K, rank, d_model]",
            a.dims(),
        ));
    }
    let mut want_b = ad[..want_a - 3].to_vec();
    want_b.extend([k, d_model, rank]);
    if b.dims() != want_b.as_slice() {
        return Err(KernelError::shape(
            "A [.., K, rank, d_model]",
            a.dims(),
            "B [.., K, d_model, rank]",
            b.dims(),
        ));
    }
    let slots = sel.indices.dims().last().copied().unwrap_or(0);
    let mut want_sel = h.dims()[..h.rank() - 1].to_vec();
    let want_active = want_sel.clone();
    want_sel.push(slots);
    if sel.indices.dims() != want_sel.as_slice()
        || sel.weights.dims() != sel.indices.dims()
        || sel.active.dims() != want_active.as_slice()
    {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "selection indices",
            sel.indices.dims(),
        ));
    }
    if slots == 0 || tokens == 0 || batch == 0 {
        return Ok(h.clone());
    }
    let n = batch * tokens * slots;
    // Row b's candidates start at b·K in the flattened weights.
    let offsets: Vec<u32> = (0..batch)
        .flat_map(|r| std::iter::repeat_n((r * k) as u32, tokens * slots))
        .collect();
    let offsets = Tensor::from_vec(offsets, n, h.device())?;
    let flat = (sel.indices.flatten_all()? + offsets)?;
    let a_flat = a.reshape((batch * k, rank, d_model))?;
    let b_flat = b.reshape((batch * k, d_model, rank))?;
    // Gather first, then convert: only the selected weights are widened to f32.
    let a_sel = a_flat.index_select(&flat, 0)?.to_dtype(DType::F32)?;
    let b_sel = b_flat.index_select(&flat, 0)?.to_dtype(DType::F32)?;
    let x = h_norm
        .to_dtype(DType::F32)?
        .reshape((batch * tokens, 1, d_model))?
        .broadcast_as((batch * tokens, slots, d_model))?
        .reshape((n, d_model, 1))?;
    let z = a_sel.matmul(&x)?; // [n, rank, 1]
    let y = b_sel
        .matmul(&z)?
        .reshape((batch * tokens, slots, d_model))?;
    let w = sel.weights.reshape((batch * tokens, slots, 1))?;
    let delta = y.broadcast_mul(&w)?.sum(1)?.reshape(h.dims())?;
    let out = (h.to_dtype(DType::F32)? + delta)?.to_dtype(h.dtype())?;
    let active = sel.active.unsqueeze(D::Minus1)?.broadcast_as(h.dims())?;
    Ok(active.where_cond(&out, h)?)
}

/// The whole operator from candle ops, with autograd: [`reference_select`] then
/// [`reference_mix`].
///
/// One row: `h`, `h_norm` `[T, d]`, `scores` `[T, K]`, `a` `[K, rank, d]`, `b`
/// `[K, d, rank]`; or a batch with a leading `B` on every argument.
pub fn reference_apply(
    h: &Tensor,
    h_norm: &Tensor,
    scores: &Tensor,
    a: &Tensor,
    b: &Tensor,
    params: &SelectionParams,
) -> Result<Tensor, KernelError> {
    if scores.rank() != h.rank() || scores.dims()[..scores.rank() - 1] != h.dims()[..h.rank() - 1] {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "scores",
            scores.dims(),
        ));
    }
    let k = scores.dims().last().copied().unwrap_or(0);
    let ka = a.dims().get(a.rank().saturating_sub(3)).copied();
    if ka != Some(k) {
        return Err(KernelError::shape(
            "scores [.., T, K]",
            scores.dims(),
            "A [.., K, rank, d_model]",
            a.dims(),
        ));
    }
    let sel = reference_select(scores, params)?;
    reference_mix(h, h_norm, a, b, &sel)
}
