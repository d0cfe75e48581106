//! Parity of the fused apply operator against the candle-ops reference, edge cases,
//! bad input, and gradients through the reference. Cases, inputs, the tolerance and
//! its reasoning are in `tests/common/parity.rs` (shared with `tests/cuda_parity.rs`).

#[path = "common/parity.rs"]
mod parity;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use half::f16;
use mome::{
    fused_apply, fused_apply_explain, fused_apply_with, reference_apply, reference_select,
    AdapterWeights, FusedApplyOp, FusedOptions, KernelError, OwnedAdapters,
};
use mome::{SelectError, SelectionParams, TokenAssignments};
use parity::{assert_close, bits, build, check_selection, rows_f32, well_separated, Case};
use proptest::prelude::*;

/// Asserts fused ≈ reference under the tolerance of `parity`; inactive rows bit for
/// bit (in the reference too). Returns the fused assignments.
fn check_parity(inp: &parity::Inputs, options: FusedOptions) -> TokenAssignments {
    let opts = FusedOptions {
        record: true,
        ..options
    };
    let (fused, asg) = fused_apply_with(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        inp.weights.clone(),
        &inp.params,
        &opts,
    )
    .unwrap();
    let asg = asg.unwrap();
    let reference = reference_apply(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        &inp.a,
        &inp.b,
        &inp.params,
    )
    .unwrap();
    assert_close(inp, &fused, &reference, &asg, "fused");
    let (hb, rb) = (bits(&inp.h), bits(&reference));
    for (t, sel) in asg.iter().enumerate() {
        if sel.is_empty() {
            assert_eq!(rb[t], hb[t], "reference row {t}: no expert, input bits");
        }
    }
    asg
}

fn all_options() -> [FusedOptions; 3] {
    [
        FusedOptions::default(),
        FusedOptions {
            portable: true,
            ..FusedOptions::default()
        },
        FusedOptions {
            max_threads: Some(1),
            ..FusedOptions::default()
        },
    ]
}

fn run_case(c: &Case) -> TokenAssignments {
    let inp = build(c);
    let mut last = None;
    for o in all_options() {
        let asg = check_parity(&inp, o);
        check_selection(&inp, &asg, "fused");
        last = Some(asg);
    }
    last.unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn fused_matches_reference_on_random_shapes(
        tokens in 1usize..40,
        d_model in 1usize..200,
        candidates in 1usize..24,
        rank in prop::sample::select(vec![1usize, 2, 3, 8, 16, 64]),
        top_k in 1usize..10,
        tau in -0.3f32..0.4,
        temperature in 0.05f32..2.0,
        h_f16 in any::<bool>(),
        absent in 0.0f32..0.8,
        penalty in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let c = Case { tokens, d_model, candidates, rank, top_k, tau, temperature, h_f16, absent, penalty, seed };
        let inp = build(&c);
        prop_assume!(well_separated(&inp, 1e-4));
        for o in all_options() {
            let asg = check_parity(&inp, o);
            check_selection(&inp, &asg, "fused");
        }
    }
}

#[test]
fn single_token() {
    let asg = run_case(&Case::new(1, 576, 32, 8, 4));
    assert_eq!(asg.tokens(), 1);
}

#[test]
fn k_larger_than_candidates_above_tau() {
    // τ = 0.3 with scores uniform in [-1, 1]: about a third of the 12 candidates pass.
    let mut c = Case::new(24, 64, 12, 8, 10);
    c.tau = 0.3;
    let asg = run_case(&c);
    assert!(asg.iter().all(|s| s.len() < 10));
    assert!(asg.total() > 0);
    // k above K itself.
    let mut c = Case::new(5, 33, 3, 4, 50);
    c.tau = -1.0;
    c.absent = 0.0;
    let asg = run_case(&c);
    assert!(asg.iter().all(|s| s.len() == 3));
}

#[test]
fn no_candidate_above_tau_returns_input_bits() {
    for h_f16 in [false, true] {
        let mut c = Case::new(9, 77, 8, 8, 4);
        c.tau = 1.0; // scores ≤ 1, strict threshold: nobody passes
        c.h_f16 = h_f16;
        let inp = build(&c);
        for o in all_options() {
            let out = fused_apply_with(
                &inp.h,
                &inp.h_norm,
                &inp.scores,
                inp.weights.clone(),
                &inp.params,
                &o,
            )
            .unwrap()
            .0;
            assert_eq!(bits(&out), bits(&inp.h));
        }
        let r = reference_apply(
            &inp.h,
            &inp.h_norm,
            &inp.scores,
            &inp.a,
            &inp.b,
            &inp.params,
        )
        .unwrap();
        assert_eq!(bits(&r), bits(&inp.h));
    }
    // Every candidate absent (−inf), even with τ = −1: input bits, never NaN.
    let mut c = Case::new(3, 16, 4, 2, 2);
    c.tau = -1.0;
    let inp = build(&c);
    let absent = Tensor::full(f32::NEG_INFINITY, (3, 4), &Device::Cpu).unwrap();
    let out = fused_apply(
        &inp.h,
        &inp.h_norm,
        &absent,
        inp.weights.clone(),
        &inp.params,
    )
    .unwrap();
    assert_eq!(bits(&out), bits(&inp.h));
    let r = reference_apply(&inp.h, &inp.h_norm, &absent, &inp.a, &inp.b, &inp.params).unwrap();
    assert_eq!(bits(&r), bits(&inp.h));
}

#[test]
fn mixed_active_and_inactive_rows() {
    let mut c = Case::new(40, 50, 6, 8, 2);
    c.tau = 0.45;
    let asg = run_case(&c);
    assert!(
        asg.active_tokens() > 0 && asg.active_tokens() < 40,
        "{}",
        asg.active_tokens()
    );
}

#[test]
fn rank_one_and_rank_sixty_four() {
    run_case(&Case::new(7, 96, 10, 1, 3));
    run_case(&Case::new(7, 96, 10, 64, 3));
    // Many users per expert: exercises the transposed expand at both ranks.
    let mut c = Case::new(64, 40, 3, 64, 3);
    c.tau = -1.0;
    run_case(&c);
    c.rank = 1;
    run_case(&c);
}

#[test]
fn d_model_not_a_multiple_of_eight() {
    for d in [1usize, 7, 13, 577] {
        run_case(&Case::new(5, d, 6, 8, 3));
    }
}

#[test]
fn long_prompt_uses_parallel_token_blocks() {
    let mut c = Case::new(300, 576, 32, 8, 4);
    c.tau = -0.2;
    c.h_f16 = true;
    run_case(&c);
}

#[test]
fn short_prompt_with_many_experts_splits_experts() {
    let mut c = Case::new(2, 2048, 40, 8, 32);
    c.tau = -1.0;
    c.absent = 0.0;
    c.penalty = true;
    let asg = run_case(&c);
    assert_eq!(asg.total(), 64);
}

#[test]
fn zero_tokens() {
    let c = Case::new(0, 8, 4, 2, 2);
    let inp = build(&c);
    let out = fused_apply(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        inp.weights.clone(),
        &inp.params,
    )
    .unwrap();
    assert_eq!(out.dims(), [0, 8]);
}

#[test]
fn explain_returns_the_selection() {
    let inp = build(&Case::new(6, 32, 8, 4, 3));
    let (out, asg) = fused_apply_explain(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        inp.weights.clone(),
        &inp.params,
    )
    .unwrap();
    assert_eq!(out.dims(), [6, 32]);
    assert_eq!(asg.tokens(), 6);
    check_selection(&inp, &asg, "fused");
}

// ---------------------------------------------------------------- bad input

fn err_of(r: Result<Tensor, KernelError>) -> KernelError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn shape_mismatches_name_both_shapes() {
    let inp = build(&Case::new(5, 576, 4, 8, 2));
    let dev = Device::Cpu;
    let w = || -> Arc<dyn AdapterWeights> { inp.weights.clone() };
    let hn577 = Tensor::zeros((5, 577), DType::F32, &dev).unwrap();
    let e = err_of(fused_apply(&inp.h, &hn577, &inp.scores, w(), &inp.params));
    assert_eq!(
        e.to_string(),
        "shape mismatch: hidden states [5, 576] vs h_norm [5, 577]"
    );

    let s4 = Tensor::zeros((4, 4), DType::F32, &dev).unwrap();
    let e = err_of(fused_apply(&inp.h, &inp.h_norm, &s4, w(), &inp.params));
    assert!(
        e.to_string()
            .contains("hidden states [5, 576] vs scores [4, 4]"),
        "{e}"
    );

    let s3 = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
    let e = err_of(fused_apply(&inp.h, &inp.h_norm, &s3, w(), &inp.params));
    assert!(
        e.to_string()
            .contains("scores [T, K] [5, 3] vs adapter weights [K, rank, d_model] [4, 8, 576]"),
        "{e}"
    );

    let other = Arc::new(OwnedAdapters::random(4, 8, 512, 0.1, 1));
    let e = err_of(fused_apply(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        other,
        &inp.params,
    ));
    assert!(
        e.to_string()
            .contains("hidden states [5, 576] vs adapter weights"),
        "{e}"
    );

    let h3 = Tensor::zeros((1, 5, 576), DType::F32, &dev).unwrap();
    let e = err_of(fused_apply(&h3, &h3, &inp.scores, w(), &inp.params));
    assert!(matches!(e, KernelError::BadRank { .. }), "{e}");

    // The reference path checks the same things, plus A/B shapes.
    let e = err_of(reference_apply(
        &inp.h,
        &hn577,
        &inp.scores,
        &inp.a,
        &inp.b,
        &inp.params,
    ));
    assert_eq!(
        e.to_string(),
        "shape mismatch: hidden states [5, 576] vs h_norm [5, 577]"
    );
    let bt = inp.b.transpose(1, 2).unwrap();
    let e = err_of(reference_apply(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        &inp.a,
        &bt,
        &inp.params,
    ));
    assert!(
        e.to_string().contains(
            "A [.., K, rank, d_model] [4, 8, 576] vs B [.., K, d_model, rank] [4, 8, 576]"
        ),
        "{e}"
    );
}

#[test]
fn dtype_mismatches_are_typed() {
    let inp = build(&Case::new(2, 8, 3, 2, 2));
    let w = || -> Arc<dyn AdapterWeights> { inp.weights.clone() };
    let hn16 = inp.h_norm.to_dtype(DType::F16).unwrap();
    let e = err_of(fused_apply(&inp.h, &hn16, &inp.scores, w(), &inp.params));
    assert!(matches!(e, KernelError::DtypeMismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("hidden states F32 [2, 8] vs h_norm F16 [2, 8]"),
        "{e}"
    );
    // Scores are f32 whatever the activations' dtype.
    let s16 = inp.scores.to_dtype(DType::F16).unwrap();
    let e = err_of(fused_apply(&inp.h, &inp.h_norm, &s16, w(), &inp.params));
    assert!(
        e.to_string()
            .contains("scores has dtype F16 (shape [2, 3]); expected f32"),
        "{e}"
    );
    let hbf = inp.h.to_dtype(DType::BF16).unwrap();
    let e = err_of(fused_apply(&hbf, &hbf, &inp.scores, w(), &inp.params));
    assert!(matches!(e, KernelError::UnsupportedDtype { .. }), "{e}");
}

#[test]
fn bad_parameters_and_non_finite_inputs_are_typed() {
    let inp = build(&Case::new(3, 8, 4, 2, 2));
    let w = || -> Arc<dyn AdapterWeights> { inp.weights.clone() };
    let call = |p: &SelectionParams| err_of(fused_apply(&inp.h, &inp.h_norm, &inp.scores, w(), p));
    assert!(matches!(
        call(&SelectionParams::new(0.0, 0, 1.0)),
        KernelError::Select(SelectError::ZeroTopK)
    ));
    assert!(matches!(
        call(&SelectionParams::new(1.01, 2, 1.0)),
        KernelError::Select(SelectError::TauOutOfRange(_))
    ));
    assert!(matches!(
        call(&SelectionParams::new(0.0, 2, 0.0)),
        KernelError::Select(SelectError::BadTemperature(_))
    ));
    assert!(matches!(
        call(&SelectionParams::new(0.0, 2, f32::NAN)),
        KernelError::Select(SelectError::BadTemperature(_))
    ));
    assert!(matches!(
        call(&SelectionParams::new(0.0, 2, 1.0).with_penalty(vec![0.0; 3])),
        KernelError::Select(SelectError::PenaltyLength {
            got: 3,
            candidates: 4
        })
    ));

    let mut sv = rows_f32(&inp.scores);
    sv[1][3] = f32::NAN;
    let snan = Tensor::new(sv, &Device::Cpu).unwrap();
    let nan_at = |e: &KernelError| {
        matches!(
            e,
            KernelError::Select(SelectError::NonFiniteScore {
                token: 1,
                candidate: 3,
                ..
            })
        )
    };
    let e = err_of(fused_apply(&inp.h, &inp.h_norm, &snan, w(), &inp.params));
    assert!(nan_at(&e), "{e}");
    let e = err_of(reference_apply(
        &inp.h,
        &inp.h_norm,
        &snan,
        &inp.a,
        &inp.b,
        &inp.params,
    ));
    assert!(nan_at(&e), "{e}");

    let mut sv = rows_f32(&inp.scores);
    sv[2][0] = f32::INFINITY;
    let sinf = Tensor::new(sv, &Device::Cpu).unwrap();
    let e = err_of(fused_apply(&inp.h, &inp.h_norm, &sinf, w(), &inp.params));
    assert!(
        matches!(
            e,
            KernelError::Select(SelectError::NonFiniteScore {
                token: 2,
                candidate: 0,
                ..
            })
        ),
        "{e}"
    );

    // Applied directly as a candle op, the error is a candle error with the same
    // message, and the typed error stays retrievable.
    let op = FusedApplyOp::new(w(), inp.params.clone());
    let e = inp.h.apply_op3_no_bwd(&inp.h_norm, &snan, &op).unwrap_err();
    assert!(
        e.to_string()
            .contains("score of candidate 3 at token 1 is not finite"),
        "{e}"
    );
    assert!(op.take_error().as_ref().is_some_and(nan_at));
}

/// A provider whose slices are shorter than it claims.
struct Truncated(OwnedAdapters);

impl AdapterWeights for Truncated {
    fn num_candidates(&self) -> usize {
        self.0.num_candidates()
    }
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn d_model(&self) -> usize {
        self.0.d_model()
    }
    fn a(&self, j: usize) -> &[f16] {
        self.0.a(j)
    }
    fn b(&self, j: usize) -> &[f16] {
        let b = self.0.b(j);
        if j == 2 {
            &b[..b.len() - 1]
        } else {
            b
        }
    }
}

#[test]
fn short_weight_slices_are_reported_not_read() {
    let inp = build(&Case::new(3, 8, 4, 2, 2));
    let bad = Arc::new(Truncated(OwnedAdapters::random(4, 2, 8, 0.1, 3)));
    let e = err_of(fused_apply(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        bad,
        &inp.params,
    ));
    assert!(
        matches!(
            e,
            KernelError::WeightSlice {
                which: "B",
                candidate: 2,
                len: 15,
                expected: 16,
                ..
            }
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------- autograd

#[test]
fn gradients_reach_a_and_b_through_the_reference() {
    let mut c = Case::new(6, 24, 5, 4, 2);
    c.tau = -1.0; // everyone passes: top-2 of 5
    c.absent = 0.0;
    let inp = build(&c);
    let a = Var::from_tensor(&inp.a.to_dtype(DType::F32).unwrap()).unwrap();
    let b = Var::from_tensor(&inp.b.to_dtype(DType::F32).unwrap()).unwrap();
    let loss = |a: &Tensor, b: &Tensor| {
        // The delta alone keeps the loss O(1), so f32 finite differences are accurate.
        (reference_apply(&inp.h, &inp.h_norm, &inp.scores, a, b, &inp.params).unwrap() - &inp.h)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let l = loss(a.as_tensor(), b.as_tensor());
    let grads = l.backward().unwrap();
    let ga = grads.get(a.as_tensor()).expect("no gradient for A");
    let gb = grads.get(b.as_tensor()).expect("no gradient for B");

    // Candidates nobody selected get exactly zero gradient; selected ones do not.
    let sel = reference_select(&inp.scores, &inp.params).unwrap();
    let used: std::collections::BTreeSet<u32> = sel
        .indices
        .flatten_all()
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .collect();
    for j in 0..5usize {
        let na = ga
            .get(j)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let nb = gb
            .get(j)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        if used.contains(&(j as u32)) {
            assert!(na > 0.0 && nb > 0.0, "candidate {j}: zero gradient");
        } else {
            assert_eq!(
                (na, nb),
                (0.0, 0.0),
                "candidate {j}: unselected but has gradient"
            );
        }
    }

    // One element of each against a central finite difference: the loss is quadratic
    // in any single weight, so the central difference is exact up to f32 rounding.
    let j = *used.iter().next().unwrap() as usize;
    let eps = 1e-2f32;
    for (which, var, g) in [("A", &a, ga), ("B", &b, gb)] {
        let base = var.as_tensor().to_vec3::<f32>().unwrap();
        let bump = |delta: f32| {
            let mut v = base.clone();
            v[j][0][1] += delta;
            Tensor::new(v, &Device::Cpu).unwrap()
        };
        let (plus, minus) = if which == "A" {
            (
                loss(&bump(eps), b.as_tensor()),
                loss(&bump(-eps), b.as_tensor()),
            )
        } else {
            (
                loss(a.as_tensor(), &bump(eps)),
                loss(a.as_tensor(), &bump(-eps)),
            )
        };
        let fd =
            (plus.to_scalar::<f32>().unwrap() - minus.to_scalar::<f32>().unwrap()) / (2.0 * eps);
        let an = g.to_vec3::<f32>().unwrap()[j][0][1];
        assert!(
            (fd - an).abs() <= 0.01 * an.abs().max(1.0),
            "{which}: finite difference {fd} vs autograd {an}"
        );
    }
}

#[test]
fn batched_reference_equals_each_row_alone() {
    // Three rows, each with its own candidates (memory tuning's batched form).
    let rows: Vec<_> = (0..3u64)
        .map(|s| {
            let mut c = Case::new(7, 24, 5, 4, 2);
            c.seed = 100 + s;
            build(&c)
        })
        .collect();
    let stack = |f: &dyn Fn(&parity::Inputs) -> Tensor| {
        Tensor::stack(&rows.iter().map(f).collect::<Vec<_>>(), 0).unwrap()
    };
    let (h, hn) = (stack(&|r| r.h.clone()), stack(&|r| r.h_norm.clone()));
    let (s, a, b) = (
        stack(&|r| r.scores.clone()),
        stack(&|r| r.a.clone()),
        stack(&|r| r.b.clone()),
    );
    let p = rows[0].params.clone();
    let batched = reference_apply(&h, &hn, &s, &a, &b, &p).unwrap();
    for (i, r) in rows.iter().enumerate() {
        let alone = reference_apply(&r.h, &r.h_norm, &r.scores, &r.a, &r.b, &p).unwrap();
        let got = batched.get(i).unwrap();
        let diff = (got - &alone)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-4, "row {i}: batched vs alone differ by {diff}");
    }
}
