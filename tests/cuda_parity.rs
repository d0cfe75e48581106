//! Parity of the CUDA fused operator with the candle-ops reference (and the CPU kernel),
//! on the shapes of `tests/fused_op_parity.rs`, plus the device expert cache.
//!
//! Built only with `--features cuda`. Without a driver or GPU every test prints
//! "SKIPPED: no CUDA driver/GPU" and passes — unless `MOME_REQUIRE_GPU=1`, which turns
//! that into a failure (the GPU check script sets it).
//!
//! Cases, inputs, comparisons and the tolerance are shared with `fused_op_parity.rs`
//! (`tests/common/parity.rs`: `1e-3 · max|delta_row| + 1e-6`, plus one ulp of the
//! output type); rows whose tokens select nothing are compared bit for bit. When a
//! tile's experts are split over several CTAs the GPU adds their shares with atomics,
//! in no fixed order: that changes the f32 rounding, not the tolerance.

#[path = "common/parity.rs"]
mod parity;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use half::f16;
use mome::cuda::{
    CudaError, CudaFusedApply, DeviceExpertCache, DeviceInputs, DeviceRecord, ExpertLayout,
    ExpertSource,
};
use mome::{
    fused_apply, fused_apply_with, reference_apply, AdapterWeights, FusedOptions, KernelError,
    OwnedAdapters,
};
use mome::{SelectError, TokenAssignments};
use parity::{assert_close, bits, build, check_selection, rows_f32, well_separated, Case, Inputs};
use rand::{Rng, SeedableRng};

/// The launcher, or `None` (after printing why) when this machine has no usable GPU.
fn gpu(test: &str) -> Option<&'static CudaFusedApply> {
    match CudaFusedApply::global() {
        Ok(rt) => {
            eprintln!("{test}: running on {}", rt.info());
            Some(rt)
        }
        Err(e) => {
            if std::env::var("MOME_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("MOME_REQUIRE_GPU=1 but the CUDA path is unavailable: {e}");
            }
            println!("SKIPPED: no CUDA driver/GPU ({e}) — {test}");
            None
        }
    }
}

/// Reports the device (or why there is none). tools/gpu-check.sh runs it first, alone,
/// with `MOME_REQUIRE_GPU=1`, to fail fast on a machine without a GPU.
#[test]
fn probe_device() {
    let Some(rt) = gpu("probe_device") else {
        return;
    };
    let info = rt.info();
    println!("device: {info}");
    let (driver, nvrtc) = mome::cuda::runtime::library_versions();
    println!("libraries: driver API {driver:?}, NVRTC {nvrtc:?}");
    println!("limits: {:?}", info.limits);
    println!(
        "peak bandwidth: attributes {:?} B/s, table {:?}",
        info.peak_bandwidth_attr(),
        info.peak_bandwidth_table()
    );
    assert!(info.limits.sm_count > 0);
}

fn reference(inp: &Inputs) -> Tensor {
    reference_apply(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        &inp.a,
        &inp.b,
        &inp.params,
    )
    .unwrap()
}

/// The CPU kernel (forced with `portable`, which the CUDA dispatch leaves alone).
fn cpu(inp: &Inputs) -> Tensor {
    let opts = FusedOptions {
        portable: true,
        ..FusedOptions::default()
    };
    fused_apply_with(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        inp.weights.clone(),
        &inp.params,
        &opts,
    )
    .unwrap()
    .0
}

fn run_gpu(rt: &CudaFusedApply, inp: &Inputs) -> (Tensor, TokenAssignments) {
    let (out, asg) = rt
        .apply_host(
            &inp.h,
            &inp.h_norm,
            &inp.scores,
            inp.weights.as_ref(),
            &inp.params,
            true,
        )
        .unwrap();
    (out, asg.unwrap())
}

/// GPU vs the candle reference (and the selection); with `via_cpu`, vs the CPU kernel
/// instead (for shapes whose reference would gather gigabytes).
fn run_case_with(rt: &CudaFusedApply, c: &Case, via_cpu: bool) -> TokenAssignments {
    let inp = build(c);
    let (out, asg) = run_gpu(rt, &inp);
    let expected = if via_cpu { cpu(&inp) } else { reference(&inp) };
    assert_close(&inp, &out, &expected, &asg, &format!("{c:?}"));
    check_selection(&inp, &asg, "cuda");
    asg
}

fn run_case(rt: &CudaFusedApply, c: &Case) -> TokenAssignments {
    run_case_with(rt, c, false)
}

#[test]
fn single_token() {
    let Some(rt) = gpu("single_token") else {
        return;
    };
    let asg = run_case(rt, &Case::new(1, 576, 32, 8, 4));
    assert_eq!(asg.tokens(), 1);
    let mut c = Case::new(1, 4096, 256, 16, 32);
    c.tau = -1.0;
    c.absent = 0.0;
    let asg = run_case(rt, &c);
    assert_eq!(asg.total(), 32);
}

#[test]
fn k_larger_than_candidates_above_tau() {
    let Some(rt) = gpu("k_larger_than_candidates_above_tau") else {
        return;
    };
    let mut c = Case::new(24, 64, 12, 8, 10);
    c.tau = 0.3;
    let asg = run_case(rt, &c);
    assert!(asg.iter().all(|s| s.len() < 10));
    assert!(asg.total() > 0);
    let mut c = Case::new(5, 33, 3, 4, 50);
    c.tau = -1.0;
    c.absent = 0.0;
    let asg = run_case(rt, &c);
    assert!(asg.iter().all(|s| s.len() == 3));
}

#[test]
fn no_candidate_above_tau_returns_input_bits() {
    let Some(rt) = gpu("no_candidate_above_tau_returns_input_bits") else {
        return;
    };
    for h_f16 in [false, true] {
        let mut c = Case::new(9, 77, 8, 8, 4);
        c.tau = 1.0;
        c.h_f16 = h_f16;
        let inp = build(&c);
        let (out, asg) = run_gpu(rt, &inp);
        assert_eq!(asg.total(), 0);
        assert_eq!(bits(&out), bits(&inp.h), "{c:?}");
    }
    // Every candidate absent (−inf), even with τ = −1: input bits, never NaN.
    let mut c = Case::new(3, 16, 4, 2, 2);
    c.tau = -1.0;
    let mut inp = build(&c);
    inp.scores = Tensor::full(f32::NEG_INFINITY, (3, 4), &Device::Cpu).unwrap();
    let (out, asg) = run_gpu(rt, &inp);
    assert_eq!(asg.total(), 0);
    assert_eq!(bits(&out), bits(&inp.h));
}

#[test]
fn mixed_active_and_inactive_rows() {
    let Some(rt) = gpu("mixed_active_and_inactive_rows") else {
        return;
    };
    let mut c = Case::new(40, 50, 6, 8, 2);
    c.tau = 0.45;
    let asg = run_case(rt, &c);
    assert!(asg.active_tokens() > 0 && asg.active_tokens() < 40);
}

#[test]
fn rank_one_and_rank_sixty_four() {
    let Some(rt) = gpu("rank_one_and_rank_sixty_four") else {
        return;
    };
    run_case(rt, &Case::new(7, 96, 10, 1, 3));
    run_case(rt, &Case::new(7, 96, 10, 64, 3));
    let mut c = Case::new(64, 40, 3, 64, 3);
    c.tau = -1.0;
    run_case(rt, &c);
    c.rank = 1;
    run_case(rt, &c);
    c.rank = 3; // B rows not 8-byte aligned: scalar path
    run_case(rt, &c);
}

#[test]
fn d_model_not_a_multiple_of_eight() {
    let Some(rt) = gpu("d_model_not_a_multiple_of_eight") else {
        return;
    };
    for d in [1usize, 6, 7, 13, 577, 580] {
        run_case(rt, &Case::new(5, d, 6, 8, 3));
    }
}

#[test]
fn both_h_dtypes_and_many_candidates() {
    let Some(rt) = gpu("both_h_dtypes_and_many_candidates") else {
        return;
    };
    for (h_f16, k) in [(false, 24), (true, 24), (false, 300), (true, 1000)] {
        let mut c = Case::new(20, 200, k, 8, 4);
        c.tau = -0.1;
        c.h_f16 = h_f16;
        c.seed = 100 + k as u64;
        run_case(rt, &c);
    }
}

/// Scores from a few levels, so that many are exactly equal: the GPU must rank ties
/// like the CPU (lower candidate first) — compared slot by slot, not as sets.
#[test]
fn equal_scores_go_to_the_lower_candidate() {
    let Some(rt) = gpu("equal_scores_go_to_the_lower_candidate") else {
        return;
    };
    let mut c = Case::new(17, 64, 40, 4, 5);
    c.tau = -0.5;
    let mut inp = build(&c);
    let levels: Vec<Vec<f32>> = rows_f32(&inp.scores)
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| {
                    if v.is_finite() {
                        (v * 3.0).round() / 3.0
                    } else {
                        v
                    }
                })
                .collect()
        })
        .collect();
    inp.scores = Tensor::new(levels, &Device::Cpu).unwrap();
    let (out, asg) = run_gpu(rt, &inp);
    assert_close(&inp, &out, &reference(&inp), &asg, "ties");
    let flat: Vec<f32> = rows_f32(&inp.scores).concat();
    let pure = mome::gate(&flat, 40, &inp.params).unwrap();
    for t in 0..17 {
        let got: Vec<u32> = asg.get(t).unwrap().iter().map(|s| s.candidate).collect();
        let want: Vec<u32> = pure.get(t).unwrap().iter().map(|s| s.candidate).collect();
        assert_eq!(got, want, "token {t}");
    }
}

#[test]
fn long_prompts_up_to_4096_tokens() {
    let Some(rt) = gpu("long_prompts_up_to_4096_tokens") else {
        return;
    };
    let mut c = Case::new(300, 576, 32, 8, 4);
    c.tau = -0.2;
    c.h_f16 = true;
    run_case(rt, &c);
    let mut c = Case::new(4096, 64, 16, 8, 4);
    c.tau = -0.1;
    run_case(rt, &c);
    // Wide and long: against the CPU kernel (the reference would gather gigabytes).
    let mut c = Case::new(4096, 576, 64, 8, 8);
    c.tau = -0.1;
    run_case_with(rt, &c, true);
    let mut c = Case::new(64, 4096, 256, 16, 32);
    c.tau = -1.0;
    run_case_with(rt, &c, true);
}

#[test]
fn short_prompt_with_many_experts_and_penalty() {
    let Some(rt) = gpu("short_prompt_with_many_experts_and_penalty") else {
        return;
    };
    let mut c = Case::new(2, 2048, 40, 8, 32);
    c.tau = -1.0;
    c.absent = 0.0;
    c.penalty = true;
    let asg = run_case(rt, &c);
    assert_eq!(asg.total(), 64);
}

#[test]
fn random_shapes() {
    let Some(rt) = gpu("random_shapes") else {
        return;
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let mut ran = 0;
    for i in 0..120u64 {
        let ranks = [1usize, 2, 3, 8, 16, 64];
        let c = Case {
            tokens: rng.random_range(1..40),
            d_model: rng.random_range(1..200),
            candidates: rng.random_range(1..40),
            rank: ranks[rng.random_range(0..ranks.len())],
            top_k: rng.random_range(1..10),
            tau: rng.random_range(-0.3..0.4),
            temperature: rng.random_range(0.05..2.0),
            h_f16: rng.random(),
            absent: rng.random_range(0.0..0.6),
            penalty: rng.random(),
            seed: i,
        };
        let inp = build(&c);
        if !well_separated(&inp, 1e-4) {
            continue;
        }
        let (out, asg) = run_gpu(rt, &inp);
        assert_close(&inp, &out, &reference(&inp), &asg, &format!("{c:?}"));
        check_selection(&inp, &asg, "cuda");
        ran += 1;
        if ran == 60 {
            break;
        }
    }
    assert!(ran >= 30, "only {ran} well-separated cases");
}

#[test]
fn dispatch_uses_the_gpu_and_matches() {
    let Some(_rt) = gpu("dispatch_uses_the_gpu_and_matches") else {
        return;
    };
    let mut c = Case::new(33, 128, 16, 8, 4);
    c.tau = -0.2;
    let inp = build(&c);
    let (out, asg) = fused_apply_with(
        &inp.h,
        &inp.h_norm,
        &inp.scores,
        inp.weights.clone(),
        &inp.params,
        &FusedOptions {
            record: true,
            ..FusedOptions::default()
        },
    )
    .unwrap();
    let asg = asg.unwrap();
    assert_close(&inp, &out, &reference(&inp), &asg, "dispatch");
    check_selection(&inp, &asg, "cuda");
    // Degenerate calls stay on the CPU path and keep its contract.
    let inp0 = build(&Case::new(0, 8, 4, 2, 2));
    let out = fused_apply(
        &inp0.h,
        &inp0.h_norm,
        &inp0.scores,
        inp0.weights.clone(),
        &inp0.params,
    )
    .unwrap();
    assert_eq!(out.dims(), [0, 8]);
}

#[test]
fn non_finite_scores_are_typed_errors() {
    let Some(rt) = gpu("non_finite_scores_are_typed_errors") else {
        return;
    };
    let inp = build(&Case::new(3, 8, 4, 2, 2));
    let call = |scores: &Tensor| {
        rt.apply_host(
            &inp.h,
            &inp.h_norm,
            scores,
            inp.weights.as_ref(),
            &inp.params,
            false,
        )
        .unwrap_err()
    };
    let mut sv = rows_f32(&inp.scores);
    sv[1][3] = f32::NAN;
    sv[2][1] = f32::INFINITY;
    let e = call(&Tensor::new(sv, &Device::Cpu).unwrap());
    assert!(
        matches!(
            e,
            KernelError::Select(SelectError::NonFiniteScore {
                token: 1,
                candidate: 3,
                value,
            }) if value.is_nan()
        ),
        "{e}"
    );
    let mut sv = rows_f32(&inp.scores);
    sv[2][0] = f32::INFINITY;
    let e = call(&Tensor::new(sv, &Device::Cpu).unwrap());
    assert!(
        matches!(
            e,
            KernelError::Select(SelectError::NonFiniteScore {
                token: 2,
                candidate: 0,
                value,
            }) if value == f32::INFINITY
        ),
        "{e}"
    );
}

/// Experts of `layers` layers, each layer laid out `A` then `B` (the cache's slot layout).
struct Store {
    layout: ExpertLayout,
    experts: Vec<Vec<f16>>,
}

impl ExpertSource for Store {
    fn expert_weights(&self, id: u64) -> Option<&[f16]> {
        self.experts.get(id as usize).map(Vec::as_slice)
    }
}

impl Store {
    fn new(n: usize, layout: ExpertLayout) -> Self {
        let experts = (0..n)
            .map(|i| {
                let o = OwnedAdapters::random(
                    layout.layers,
                    layout.rank,
                    layout.d_model,
                    0.5,
                    i as u64,
                );
                (0..layout.layers)
                    .flat_map(|l| o.a(l).iter().chain(o.b(l)).copied().collect::<Vec<_>>())
                    .collect()
            })
            .collect();
        Self { layout, experts }
    }

    /// The candidates' weights at `layer` as a CPU provider.
    fn owned(&self, ids: &[u64], layer: usize) -> OwnedAdapters {
        let per = self.layout.rank * self.layout.d_model;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for &id in ids {
            let e = &self.experts[id as usize];
            let l = &e[layer * 2 * per..(layer + 1) * 2 * per];
            a.extend_from_slice(&l[..per]);
            b.extend_from_slice(&l[per..]);
        }
        OwnedAdapters::new(ids.len(), self.layout.rank, self.layout.d_model, a, b).unwrap()
    }
}

#[test]
fn expert_cache_hits_misses_pins_and_parity() {
    let Some(rt) = gpu("expert_cache_hits_misses_pins_and_parity") else {
        return;
    };
    let layout = ExpertLayout {
        layers: 3,
        rank: 8,
        d_model: 96,
    };
    let store = Store::new(12, layout);
    let mut cache = DeviceExpertCache::new(rt, layout, 6).unwrap();

    let ids = [3u64, 7, 1, 9];
    let lease = cache.acquire(&ids, &store).unwrap();
    let s = cache.stats();
    assert_eq!((s.counters.misses, s.counters.hits, s.resident), (4, 0, 4));
    assert_eq!(s.bytes_copied, 4 * layout.slot_values() as u64 * 2);

    // Apply layer 2 from the cache and compare with the CPU kernel on the same weights.
    let mut c = Case::new(17, 96, 4, 8, 3);
    c.tau = -0.3;
    let mut inp = build(&c);
    inp.weights = Arc::new(store.owned(&ids, 2));
    let mut dev = DeviceInputs::upload(rt, &inp.h, &inp.h_norm, &inp.scores, None).unwrap();
    let adapters = cache.adapters(rt, &lease, 2).unwrap();
    let mut rec = DeviceRecord::new(rt, 17, 3).unwrap();
    rt.launch(&mut dev, &adapters, &inp.params, Some(&mut rec))
        .unwrap();
    dev.check(rt).unwrap();
    let out = Tensor::from_vec(dev.download(rt).unwrap(), (17, 96), &Device::Cpu).unwrap();
    let asg = rec.download(rt).unwrap();
    assert_close(&inp, &out, &cpu(&inp), &asg, "cache layer 2");
    assert!(cache.adapters(rt, &lease, 3).is_err(), "layer out of range");

    // Pinned experts survive pressure; released ones are evicted LRU-first.
    let lease2 = cache.acquire(&[3, 4, 5], &store).unwrap();
    let s = cache.stats();
    assert_eq!((s.counters.hits, s.counters.misses), (1, 6));
    // 6 slots: {3,7,1,9,4,5} all pinned → a new expert does not fit.
    let e = cache.acquire(&[11], &store).unwrap_err();
    assert!(matches!(e, CudaError::CacheFull { slots: 6 }), "{e}");
    cache.release(lease);
    let lease3 = cache.acquire(&[11, 10], &store).unwrap();
    assert!(
        !cache.contains(7) && !cache.contains(1),
        "oldest unpinned evicted first"
    );
    assert!(cache.contains(3) && cache.contains(9));
    assert_eq!(cache.stats().counters.evictions, 2);
    cache.release(lease2);
    cache.release(lease3);
    // An unknown expert is a typed error and leaves nothing pinned.
    let e = cache.acquire(&[0, 99], &store).unwrap_err();
    assert!(matches!(e, CudaError::Expert { id: 99, .. }), "{e}");
    let all: Vec<u64> = (0..6).collect();
    let lease4 = cache.acquire(&all, &store).unwrap();
    cache.release(lease4);
    rt.synchronize().unwrap();
}

/// The run-time compile (NVRTC only, no GPU needed): every variant, sm_80 and sm_90.
/// Skipped where libnvrtc cannot be loaded (point LD_LIBRARY_PATH at it to run it).
#[test]
fn nvrtc_compiles_every_variant() {
    use mome::cuda::runtime::{compile_variant, VARIANTS};
    for cc in [(8, 0), (9, 0)] {
        for v in VARIANTS {
            match compile_variant(v, cc) {
                Ok(ptx) => {
                    let src = ptx.to_src();
                    assert!(src.contains(&format!(".entry mome_fused_apply_{v}")), "{v}");
                    assert_eq!(src.matches(".entry ").count(), 1, "one variant per compile");
                }
                Err(CudaError::NoNvrtc) => {
                    println!("SKIPPED: no NVRTC library — nvrtc_compiles_every_variant");
                    return;
                }
                Err(e) => panic!("{v} sm_{}{}: {e}", cc.0, cc.1),
            }
        }
    }
}

/// The fused operator as the backbone's hook: cosine scores of the per-token queries
/// against `keys`, then `fused_apply_with` (CUDA dispatch, or the CPU kernel with
/// `portable`).
struct FusedHook {
    keys: Tensor,
    layers: Vec<(usize, Arc<OwnedAdapters>)>,
    params: mome::SelectionParams,
    portable: bool,
}

impl mome::AdapterHook for FusedHook {
    fn apply(
        &self,
        layer: usize,
        _pos: usize,
        h: &Tensor,
        h_norm: &Tensor,
        queries: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let Some((_, w)) = self.layers.iter().find(|(l, _)| *l == layer) else {
            return Ok(h.clone());
        };
        let (b, t, d) = h.dims3()?;
        let q = queries.reshape((b * t, queries.dim(2)?))?;
        let qn = q.broadcast_div(&q.sqr()?.sum_keepdim(1)?.sqrt()?)?;
        let scores = qn.matmul(&self.keys.t()?)?.contiguous()?;
        let opts = FusedOptions {
            portable: self.portable,
            ..FusedOptions::default()
        };
        let (out, _) = fused_apply_with(
            &h.reshape((b * t, d))?,
            &h_norm.reshape((b * t, d))?,
            &scores,
            w.clone(),
            &self.params,
            &opts,
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        out.reshape((b, t, d))
    }
}

/// Whole forward with experts attached, the fused operator on the GPU (the backbone
/// stays on the CPU: candle's CUDA backend is not built, docs/CUDA.md): a tiny random
/// model's greedy tokens equal those with the portable CPU kernel, and the prompt's
/// logits agree within `1e-3 · max|logit| + 1e-4` (f32 summation order only). Without a
/// GPU the default path is the AVX2 CPU kernel, so the same comparison still runs.
#[test]
fn whole_forward_with_experts_gpu_operator_equals_cpu() {
    let on_gpu = match CudaFusedApply::global() {
        Ok(_) => true,
        Err(e) if std::env::var("MOME_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("MOME_REQUIRE_GPU=1 but the CUDA path is unavailable: {e}")
        }
        Err(_) => false,
    };
    println!(
        "whole forward: default fused path on the {}",
        if on_gpu { "GPU" } else { "CPU (no GPU found)" }
    );
    let cfg = mome::LlamaConfig::tiny(300);
    let model = mome::Llama::random(&cfg, 5, &Device::Cpu).unwrap();
    let d = model.d_model();
    let n = 12;
    let sites = mome::AdapterSites::new(1, &[1, 3]).unwrap();
    let keys_v: Vec<f32> = parity::randn(&mut rand::rngs::StdRng::seed_from_u64(3), n * d, 1.0);
    let keys = Tensor::from_vec(keys_v, (n, d), &Device::Cpu).unwrap();
    let keys = keys
        .broadcast_div(&keys.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
        .unwrap();
    let hook = |portable| FusedHook {
        keys: keys.clone(),
        layers: [1usize, 3]
            .iter()
            .map(|&l| {
                (
                    l,
                    Arc::new(OwnedAdapters::random(n, 4, d, 0.3, 40 + l as u64)),
                )
            })
            .collect(),
        params: mome::SelectionParams::new(0.0, 2, 0.5),
        portable,
    };
    let (gpu_hook, cpu_hook) = (hook(false), hook(true));
    let prompt: Vec<u32> = (0..24u32).map(|i| (i * 37 + 11) % 300).collect();
    let run = |h: &FusedHook| {
        let adapters = mome::Adapters {
            sites: &sites,
            hook: h,
        };
        let mut cache = mome::KvCache::new(&model);
        let logits = model
            .forward(&prompt, &mut cache, Some(adapters))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let generated = model
            .generate(
                &prompt,
                &mome::GenerateOptions::greedy(16, vec![]),
                Some(adapters),
                &mut |_| std::ops::ControlFlow::Continue(()),
            )
            .unwrap();
        (logits, generated.tokens)
    };
    let (gl, gt) = run(&gpu_hook);
    let (cl, ct) = run(&cpu_hook);
    assert_eq!(gt, ct, "greedy tokens, GPU operator vs CPU kernel");
    let scale = cl.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = gl
        .iter()
        .zip(&cl)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("whole forward: max |Δlogit| {worst:e} of max |logit| {scale}");
    assert!(worst <= 1e-3 * scale + 1e-4, "{worst} vs scale {scale}");
    // The experts did act: the bare model's logits differ.
    let mut cache = mome::KvCache::new(&model);
    let bare = model
        .forward(&prompt, &mut cache, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        bare.iter().zip(&cl).any(|(a, b)| a != b),
        "experts changed nothing"
    );
}
