//! Cases, inputs and comparisons shared by the parity tests of the fused operator:
//! `tests/fused_op_parity.rs` (CPU kernel) and `tests/cuda_parity.rs` (CUDA kernel),
//! both against the candle-ops reference. Included with `#[path]` by those two only.
//!
//! # Tolerance
//!
//! Every path reads the same fp16 weights (exactly representable in f32) and the same
//! activations and scores; they differ only in f32 summation order (dots of length
//! `d_model` and `rank`, blocked differently) and in ulp-level differences of the
//! softmax. For f32 `h` an element may therefore differ by a few `d_model · ε`
//! relative to the magnitude of the row's adapter delta: we allow
//! `1e-3 · max|delta_row| + 1e-6`, 10–100× above what the arithmetic can produce
//! and far below what a wrong expert, weight or row would give (O(1) relative).
//! Each output element is `h + delta` rounded to the output type, and the two paths'
//! deltas differ in the last bits, so the rounded sums can straddle a rounding
//! boundary: one ulp of the output is added to the bound — `2⁻¹⁰ · |out|` for f16,
//! `2⁻²³ · |out|` for f32 (with `|h|` ≈ 49 and a delta of 0.002 that ulp, 3.8e-6, is
//! above the relative term: proptest found such a case). Rows whose tokens select no
//! expert are compared bit for bit.
//!
//! Selection is discontinuous (threshold, top-k), so random cases whose scores lie
//! within 1e-4 of τ or of each other at the top-k boundary are skipped
//! ([`well_separated`]); they are ulp-level coin flips, not bugs.
#![allow(dead_code)]

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::f16;
use mome::{gate, reference_select, OwnedAdapters};
use mome::{SelectionParams, TokenAssignments};
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct Case {
    pub tokens: usize,
    pub d_model: usize,
    pub candidates: usize,
    pub rank: usize,
    pub top_k: usize,
    pub tau: f32,
    pub temperature: f32,
    pub h_f16: bool,
    /// Share of scores that are `−inf` (the candidate is not one at that token).
    pub absent: f32,
    pub penalty: bool,
    pub seed: u64,
}

impl Case {
    pub fn new(
        tokens: usize,
        d_model: usize,
        candidates: usize,
        rank: usize,
        top_k: usize,
    ) -> Self {
        Case {
            tokens,
            d_model,
            candidates,
            rank,
            top_k,
            tau: 0.0,
            temperature: 0.5,
            h_f16: false,
            absent: 0.2,
            penalty: false,
            seed: 7,
        }
    }
}

pub struct Inputs {
    pub h: Tensor,
    pub h_norm: Tensor,
    /// `[T, K]` f32 scores.
    pub scores: Tensor,
    pub weights: Arc<OwnedAdapters>,
    /// `weights` as the reference's `A [K, rank, d]` and `B [K, d, rank]` tensors.
    pub a: Tensor,
    pub b: Tensor,
    pub params: SelectionParams,
}

pub fn randn(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..=scale)).collect()
}

pub fn build(c: &Case) -> Inputs {
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed);
    let dt = |f16: bool| if f16 { DType::F16 } else { DType::F32 };
    let t = |v: Vec<f32>, r: usize, cols: usize, d: DType| {
        Tensor::from_vec(v, (r, cols), &dev)
            .unwrap()
            .to_dtype(d)
            .unwrap()
    };
    // Residual rows are large, normalised rows are O(1): as in the backbone.
    let h = t(
        randn(&mut rng, c.tokens * c.d_model, 50.0),
        c.tokens,
        c.d_model,
        dt(c.h_f16),
    );
    let h_norm = t(
        randn(&mut rng, c.tokens * c.d_model, 1.0),
        c.tokens,
        c.d_model,
        dt(c.h_f16),
    );
    let scores: Vec<f32> = (0..c.tokens * c.candidates)
        .map(|_| {
            if rng.random_range(0.0..1.0) < c.absent {
                f32::NEG_INFINITY
            } else {
                rng.random_range(-1.0..=1.0)
            }
        })
        .collect();
    let scores = t(scores, c.tokens, c.candidates, DType::F32);
    let weights = Arc::new(OwnedAdapters::random(
        c.candidates,
        c.rank,
        c.d_model,
        0.5,
        c.seed ^ 0x5eed,
    ));
    let (a, b) = weights.to_tensors(&dev).unwrap();
    let mut params = SelectionParams::new(c.tau, c.top_k, c.temperature);
    if c.penalty {
        params = params.with_penalty(randn(&mut rng, c.candidates, 0.1));
    }
    Inputs {
        h,
        h_norm,
        scores,
        weights,
        a,
        b,
        params,
    }
}

pub fn rows_f32(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

/// Each row's elements as bit patterns (f32 or f16).
pub fn bits(t: &Tensor) -> Vec<Vec<u32>> {
    match t.dtype() {
        DType::F32 => t
            .to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(f32::to_bits).collect())
            .collect(),
        DType::F16 => t
            .to_vec2::<f16>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|v| v.to_bits() as u32).collect())
            .collect(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Whether selection is well separated: no score within `margin` of τ, and the
/// k-th and (k+1)-th passing scores not within `margin` of each other.
pub fn well_separated(inp: &Inputs, margin: f64) -> bool {
    let tau = inp.params.tau as f64;
    for row in rows_f32(&inp.scores) {
        let mut s: Vec<f64> = row
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(j, v)| *v as f64 - inp.params.penalty.as_ref().map_or(0.0, |p| p[j] as f64))
            .collect();
        if s.iter().any(|v| (v - tau).abs() < margin) {
            return false;
        }
        s.retain(|v| *v > tau);
        s.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let kk = inp.params.top_k;
        if s.len() > kk && (s[kk - 1] - s[kk]).abs() < margin {
            return false;
        }
    }
    true
}

/// `out` (from the path named `what`) ≈ `expected` under the module tolerance; rows
/// whose tokens select no expert must be the input bits.
pub fn assert_close(
    inp: &Inputs,
    out: &Tensor,
    expected: &Tensor,
    asg: &TokenAssignments,
    what: &str,
) {
    assert_eq!(out.dims(), inp.h.dims(), "{what}: output shape");
    assert_eq!(out.dtype(), inp.h.dtype(), "{what}: output dtype");
    let (hf, of, ef) = (rows_f32(&inp.h), rows_f32(out), rows_f32(expected));
    let (hb, ob) = (bits(&inp.h), bits(out));
    let f16_out = inp.h.dtype() == DType::F16;
    for t in 0..hf.len() {
        if asg.get(t).unwrap().is_empty() {
            assert_eq!(ob[t], hb[t], "{what}: token {t} has no expert: input bits");
            continue;
        }
        let scale = hf[t]
            .iter()
            .zip(&ef[t])
            .map(|(h, r)| (r - h).abs())
            .fold(0.0f32, f32::max);
        for i in 0..hf[t].len() {
            let ulp = if f16_out {
                2f32.powi(-10)
            } else {
                2f32.powi(-23)
            };
            let tol = 1e-3 * scale + 1e-6 + ef[t][i].abs() * ulp;
            let diff = (of[t][i] - ef[t][i]).abs();
            assert!(
                diff <= tol,
                "{what}: token {t} elem {i}: got {} vs expected {} (|diff| {diff} > tol {tol}, delta scale {scale})",
                of[t][i],
                ef[t][i]
            );
        }
    }
}

/// The selection a path (named `what`) reports must equal the reference's and the
/// plain `gate` function's: the same experts with weights to 1e-5, scores in
/// non-increasing order, weights summing to 1, abstaining slots of the reference at
/// weight 0. Experts are compared as sets because scores that are equal in exact
/// arithmetic may come out an ulp apart in
/// either order; which one is "first" is then rounding, and the output does not
/// depend on it.
pub fn check_selection(inp: &Inputs, asg: &TokenAssignments, what: &str) {
    let rs = reference_select(&inp.scores, &inp.params).unwrap();
    let idx = rs.indices.to_vec2::<u32>().unwrap();
    let w = rs.weights.to_vec2::<f32>().unwrap();
    let flat: Vec<f32> = rows_f32(&inp.scores).concat();
    let pure = gate(&flat, inp.scores.dims()[1], &inp.params).unwrap();
    assert_eq!(asg.tokens(), inp.scores.dims()[0], "{what}: tokens");
    let sorted = |mut v: Vec<(u32, f32)>| {
        v.sort_by_key(|e| e.0);
        v
    };
    for (t, sel) in asg.iter().enumerate() {
        let got = sorted(sel.iter().map(|e| (e.candidate, e.weight)).collect());
        let p = sorted(
            pure.get(t)
                .unwrap()
                .iter()
                .map(|e| (e.candidate, e.weight))
                .collect(),
        );
        let r = sorted(
            idx.get(t)
                .into_iter()
                .flatten()
                .zip(w.get(t).into_iter().flatten())
                .take(sel.len())
                .map(|(i, w)| (*i, *w))
                .collect(),
        );
        for (other, name) in [(&p, "plain gate"), (&r, "reference")] {
            assert_eq!(
                got.iter().map(|e| e.0).collect::<Vec<_>>(),
                other.iter().map(|e| e.0).collect::<Vec<_>>(),
                "token {t}: {what} vs {name} experts"
            );
            for (x, y) in got.iter().zip(other.iter()) {
                assert!(
                    (x.1 - y.1).abs() < 1e-5,
                    "token {t} expert {}: {what} weight {} vs {name} {}",
                    x.0,
                    x.1,
                    y.1
                );
            }
        }
        for (s, ws) in w.get(t).into_iter().flatten().enumerate().skip(sel.len()) {
            assert_eq!(*ws, 0.0, "token {t} slot {s}: abstaining slot weight");
        }
        assert!(
            sel.windows(2).all(|p| p[0].score >= p[1].score),
            "token {t}: {what} not best first"
        );
        let total: f32 = sel.iter().map(|e| e.weight).sum();
        assert!(sel.is_empty() || (total - 1.0).abs() < 1e-5);
    }
}
