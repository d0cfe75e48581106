//! The apply operator from ordinary candle ops: the oracle for the fused kernels and
//! the path that memory tuning differentiates through.
//!
//! Every op used has a backward in candle (no `softmax_last_dim`, no fused norms —
//! see NOTES-backbone.md), so gradients reach `A`, `B` (and `h`, `h_norm`, `q`,
//! `keys`). The discrete choice (sort, top-k, threshold) carries no gradient, as
//! intended. Memory is `O(T · k · rank · d_model)` for the gathered weights: fine
//! for training batches, not meant for inference.
//!
//! Split in two so that a batched training step can build its own selection (each
//! row its own expert: `indices` `[T, 1]`, `weights` 1) and call [`reference_mix`].

use candle_core::{DType, Tensor, D};

use super::{check_activations, KernelError};
use crate::select::{SelectError, SelectionParams};

/// Selection as tensors (see [`crate::select`] for the definition).
#[derive(Debug, Clone)]
pub struct ReferenceSelection {
    /// `[T, s]` u32 candidate indices, best first (`s = min(top_k, K)`). Slots of
    /// abstaining candidates hold some index with weight 0.
    pub indices: Tensor,
    /// `[T, s]` f32 softmax weights, 0 in abstaining slots.
    pub weights: Tensor,
    /// `[T]` u8: 1 where the token has at least one expert. Rows with 0 are returned
    /// unchanged by [`reference_mix`].
    pub active: Tensor,
}

/// Index of the first row of `t` (`[N, D]`) that contains NaN or ±inf, if any.
fn first_non_finite_row(t: &Tensor) -> Result<Option<usize>, KernelError> {
    // |x| < inf is false exactly for NaN and ±inf; the row minimum finds any.
    let finite = t.to_dtype(DType::F32)?.abs()?.lt(f64::INFINITY)?;
    let rows = finite.min(1)?.to_vec1::<u8>()?;
    Ok(rows.iter().position(|&v| v == 0))
}

/// Row-normalises `x` (`[N, D]`, f32); zero rows stay zero.
fn normalize_rows(x: &Tensor) -> Result<Tensor, KernelError> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
    // Dividing a zero row by 1 instead of 0 gives a zero cosine instead of NaN.
    let safe = (&norm + norm.eq(0.0)?.to_dtype(DType::F32)?)?;
    Ok(x.broadcast_div(&safe)?)
}

/// Stage-2 selection from candle ops: cosine, penalty, strict τ, top-k, softmax.
///
/// `q`: `[T, key_dim]`, `keys`: `[K, key_dim]`, any float dtype.
pub fn reference_select(
    q: &Tensor,
    keys: &Tensor,
    params: &SelectionParams,
) -> Result<ReferenceSelection, KernelError> {
    let bad = |name, t: &Tensor, expected| KernelError::BadRank {
        name,
        shape: t.dims().to_vec(),
        expected,
    };
    let (tokens, key_dim) = q.dims2().map_err(|_| bad("queries", q, "[T, key_dim]"))?;
    let (candidates, kd) = keys
        .dims2()
        .map_err(|_| bad("keys", keys, "[K, key_dim]"))?;
    if kd != key_dim {
        return Err(KernelError::shape("queries", q.dims(), "keys", keys.dims()));
    }
    if key_dim == 0 {
        return Err(SelectError::ZeroKeyDim.into());
    }
    params.validate(candidates)?;
    if let Some(token) = first_non_finite_row(q)? {
        return Err(SelectError::NonFiniteQuery { token }.into());
    }
    if let Some(candidate) = first_non_finite_row(keys)? {
        return Err(SelectError::NonFiniteKey { candidate }.into());
    }
    let device = q.device();
    let slots = params.slots(candidates);
    if slots == 0 || tokens == 0 {
        return Ok(ReferenceSelection {
            indices: Tensor::zeros((tokens, slots), DType::U32, device)?,
            weights: Tensor::zeros((tokens, slots), DType::F32, device)?,
            active: Tensor::zeros(tokens, DType::U8, device)?,
        });
    }

    let qn = normalize_rows(&q.to_dtype(DType::F32)?)?;
    let kn = normalize_rows(&keys.to_dtype(DType::F32)?)?;
    let mut scores = qn.matmul(&kn.t()?)?;
    if let Some(p) = &params.penalty {
        let p = Tensor::from_slice(p, (1, candidates), device)?;
        scores = scores.broadcast_sub(&p)?;
    }
    // candle's arg sort is stable, so equal scores keep the lower index first.
    let indices = scores
        .arg_sort_last_dim(false)?
        .narrow(1, 0, slots)?
        .contiguous()?;
    let top = scores.gather(&indices, 1)?;
    let valid = top.gt(params.tau as f64)?;
    // Shift by the best score before dividing by the temperature: tiny temperatures
    // give one-hot weights instead of inf − inf.
    let best = top.narrow(1, 0, 1)?;
    let logits = (top.broadcast_sub(&best)? / params.temperature as f64)?;
    // Keep column 0 even when it abstains so that no row is all −inf (NaN softmax);
    // the validity mask zeroes such rows afterwards.
    let mut first = vec![0u8; slots];
    first[0] = 1;
    let first = Tensor::from_vec(first, (1, slots), device)?;
    let keep = valid.broadcast_maximum(&first)?;
    let neg_inf = Tensor::full(f32::NEG_INFINITY, (tokens, slots), device)?;
    let masked = keep.where_cond(&logits, &neg_inf)?;
    let weights = (candle_nn::ops::softmax(&masked, D::Minus1)? * valid.to_dtype(DType::F32)?)?;
    let active = valid.narrow(1, 0, 1)?.squeeze(1)?;
    Ok(ReferenceSelection {
        indices,
        weights,
        active,
    })
}

/// `h + Σ_s w_ts · B_{i_ts} (A_{i_ts} h̃_t)` for a given selection, in f32, cast to
/// `h`'s dtype; inactive rows are `h` exactly.
///
/// `a`: `[K, rank, d_model]`, `b`: `[K, d_model, rank]`, any float dtype (f32 `Var`s
/// when training).
pub fn reference_mix(
    h: &Tensor,
    h_norm: &Tensor,
    a: &Tensor,
    b: &Tensor,
    sel: &ReferenceSelection,
) -> Result<Tensor, KernelError> {
    let (tokens, d_model) = h.dims2().map_err(|_| KernelError::BadRank {
        name: "hidden states",
        shape: h.dims().to_vec(),
        expected: "[T, d_model]",
    })?;
    if h_norm.dims() != h.dims() {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "h_norm",
            h_norm.dims(),
        ));
    }
    let (k, rank, ad) = a.dims3().map_err(|_| KernelError::BadRank {
        name: "A",
        shape: a.dims().to_vec(),
        expected: "[K, rank, d_model]",
    })?;
    if ad != d_model {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "A [K, rank, d_model]",
            a.dims(),
        ));
    }
    if b.dims() != [k, d_model, rank] {
        return Err(KernelError::shape(
            "A [K, rank, d_model]",
            a.dims(),
            "B [K, d_model, rank]",
            b.dims(),
        ));
    }
    let (st, slots) = sel.indices.dims2()?;
    if st != tokens || sel.weights.dims() != sel.indices.dims() || sel.active.dims() != [tokens] {
        return Err(KernelError::shape(
            "hidden states",
            h.dims(),
            "selection indices",
            sel.indices.dims(),
        ));
    }
    if slots == 0 || tokens == 0 {
        return Ok(h.clone());
    }
    let flat = sel.indices.flatten_all()?;
    // Gather first, then convert: only the selected weights are widened to f32.
    let a_sel = a.index_select(&flat, 0)?.to_dtype(DType::F32)?;
    let b_sel = b.index_select(&flat, 0)?.to_dtype(DType::F32)?;
    let x = h_norm
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_as((tokens, slots, d_model))?
        .reshape((tokens * slots, d_model, 1))?;
    let z = a_sel.matmul(&x)?; // [T·s, rank, 1]
    let y = b_sel.matmul(&z)?.reshape((tokens, slots, d_model))?;
    let delta = y.broadcast_mul(&sel.weights.unsqueeze(2)?)?.sum(1)?;
    let out = (h.to_dtype(DType::F32)? + delta)?.to_dtype(h.dtype())?;
    let active = sel.active.unsqueeze(1)?.broadcast_as((tokens, d_model))?;
    Ok(active.where_cond(&out, h)?)
}

/// The whole operator from candle ops, with autograd: [`reference_select`] then
/// [`reference_mix`].
///
/// `h`, `h_norm`: `[T, d_model]`; `q`: `[T, key_dim]`; `keys`: `[K, key_dim]`;
/// `a`: `[K, rank, d_model]`; `b`: `[K, d_model, rank]`.
pub fn reference_apply(
    h: &Tensor,
    h_norm: &Tensor,
    q: &Tensor,
    keys: &Tensor,
    a: &Tensor,
    b: &Tensor,
    params: &SelectionParams,
) -> Result<Tensor, KernelError> {
    let dims = check_activations(h, h_norm, q, keys)?;
    if a.dims().first() != Some(&dims.candidates) {
        return Err(KernelError::shape(
            "keys",
            keys.dims(),
            "A [K, rank, d_model]",
            a.dims(),
        ));
    }
    let sel = reference_select(q, keys, params)?;
    reference_mix(h, h_norm, a, b, &sel)
}
