//! CUDA fused apply: achieved weight bandwidth against the GPU's peak and a
//! device-to-device copy measured in the same run, time per call against a floor
//! measured in the same run, the CPU kernel and the candle-ops reference (on the CPU:
//! candle's CUDA backend is not built, see docs/CUDA.md).
//!
//! Run: `cargo bench --features cuda --bench cuda_fused` (prints Markdown). Without a
//! GPU it prints "SKIPPED: no CUDA driver/GPU" and exits 0.
//!
//! * K = 256 candidates, f32 activations, `T × K` f32 scores uniform in [−1, 1] with
//!   τ = −1, so every token uses exactly k experts; T ∈ {1, 64, 2048}, k ∈ {8, 32},
//!   rank ∈ {8, 16}, d_model ∈ {576, 4096}.
//! * "gathered" = distinct experts used by the launch × (A + B) bytes: the issue's
//!   bandwidth definition. "read" adds the re-reads of an expert by every token tile that
//!   uses it (from L2 or HBM) plus the score rows each CTA reads.
//! * "floor" = an empty kernel launch plus one read of the gathered bytes (a plain
//!   vectorised read kernel over a buffer of that size, timed like the fused kernel):
//!   the decode goal is fused ≤ 2 × floor.
//! * GPU time: kernel only, inputs and weights resident on the device, from CUDA events
//!   around a batch of launches (the kernel accumulates into the same output each time).
//!   "host call": the whole `apply_host` (uploads of activations and weights, launch,
//!   download), what `fused_apply` costs with CPU tensors.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use cudarc::driver::sys::CUevent_flags;
use mome::cuda::expert_bytes;
use mome::cuda::runtime::FloorKernels;
use mome::cuda::{CudaFusedApply, DeviceAdapters, DeviceInputs, DeviceRecord};
use mome::SelectionParams;
use mome::{reference_apply, AdapterWeights, FusedApplyOp, OwnedAdapters};
use rand::{Rng, SeedableRng};

const CANDIDATES: usize = 256;
/// Largest f32 weight gather (T·k·2·r·d·4 bytes) the CPU reference is timed at.
const REFERENCE_MAX_BYTES: usize = 1 << 29;

fn events(rt: &CudaFusedApply) -> (cudarc::driver::CudaEvent, cudarc::driver::CudaEvent) {
    let ctx = rt.context();
    let f = Some(CUevent_flags::CU_EVENT_DEFAULT);
    (ctx.new_event(f).unwrap(), ctx.new_event(f).unwrap())
}

/// Device-to-device copy bandwidth, bytes moved (read + write) per second.
fn d2d_bandwidth(rt: &CudaFusedApply) -> f64 {
    let s = rt.stream();
    let n = (rt.info().total_memory / 16).min(1 << 30) / 4;
    let src = s.alloc_zeros::<f32>(n).unwrap();
    let mut dst = s.alloc_zeros::<f32>(n).unwrap();
    let (a, b) = events(rt);
    let mut best = 0.0f64;
    for _ in 0..2 {
        s.memcpy_dtod(&src, &mut dst).unwrap();
    }
    for _ in 0..5 {
        a.record(s).unwrap();
        for _ in 0..4 {
            s.memcpy_dtod(&src, &mut dst).unwrap();
        }
        b.record(s).unwrap();
        b.synchronize().unwrap();
        let ms = a.elapsed_ms(&b).unwrap() as f64;
        best = best.max(4.0 * 2.0 * (n * 4) as f64 / (ms / 1e3));
    }
    best
}

/// Seconds per (empty launch + one read of `bytes`), timed like the fused kernel.
fn floor_seconds(rt: &CudaFusedApply, floor: &FloorKernels, bytes: usize) -> f64 {
    let s = rt.stream();
    let words = bytes.div_ceil(16).max(1);
    let buf = s.alloc_zeros::<u32>(words * 4).unwrap();
    let mut sink = s.alloc_zeros::<u32>(1).unwrap();
    timed(rt, || {
        floor.launch_empty(rt).unwrap();
        floor.launch_read(rt, &buf, &mut sink).unwrap();
    })
}

/// Seconds per call of `f` (which enqueues work on the launcher's stream), from CUDA
/// events around batches grown until a batch lasts 20 ms (or 1000 calls).
fn timed(rt: &CudaFusedApply, mut f: impl FnMut()) -> f64 {
    let (a, b) = events(rt);
    for _ in 0..3 {
        f();
    }
    let mut iters = 10usize;
    loop {
        a.record(rt.stream()).unwrap();
        for _ in 0..iters {
            f();
        }
        b.record(rt.stream()).unwrap();
        b.synchronize().unwrap();
        let secs = a.elapsed_ms(&b).unwrap() as f64 / 1e3 / iters as f64;
        if secs * iters as f64 > 0.02 || iters >= 1000 {
            return secs;
        }
        iters *= 4;
    }
}

struct Shape {
    d: usize,
    rank: usize,
    k: usize,
    t: usize,
}

fn rand_tensor(
    rng: &mut rand::rngs::StdRng,
    rows: usize,
    cols: usize,
    scale: f32,
    dt: DType,
) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-scale..=scale))
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap()
}

fn time_cpu(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    let started = Instant::now();
    let rt = match CudaFusedApply::global() {
        Ok(rt) => rt,
        Err(e) => {
            println!("SKIPPED: no CUDA driver/GPU ({e})");
            return;
        }
    };
    let info = rt.info();
    let attr = info.peak_bandwidth_attr();
    let table = info.peak_bandwidth_table();
    let (peak_label, peak) = match (table, attr) {
        (Some((label, bw)), _) => (format!("{label}, datasheet"), bw),
        (None, Some(bw)) => ("memory clock × bus width × 2".to_string(), bw),
        (None, None) => ("unknown".to_string(), f64::NAN),
    };
    let d2d = d2d_bandwidth(rt);
    println!("## CUDA fused apply — {info}\n");
    println!(
        "* peak memory bandwidth: {:.0} GB/s ({peak_label}); from device attributes: {}",
        peak / 1e9,
        attr.map_or("n/a".to_string(), |b| format!("{:.0} GB/s", b / 1e9))
    );
    println!(
        "* device-to-device copy, same run: {:.0} GB/s (read + write), {:.0}% of peak",
        d2d / 1e9,
        100.0 * d2d / peak
    );
    println!(
        "* CPU for the CPU columns: {} threads",
        rayon::current_num_threads()
    );
    let floor = FloorKernels::new(rt).unwrap();
    let empty = timed(rt, || floor.launch_empty(rt).unwrap());
    println!("* empty kernel launch, back to back: {:.2} µs", empty * 1e6);
    println!("* K = {CANDIDATES}, f32 activations, f32 scores, τ = −1\n");
    println!("| d_model | rank | k | T | plan | gathered MB | read MB | GPU µs | floor µs | GPU / floor | gathered GB/s | % peak | % D2D | host call µs | CPU fused µs | CPU ref µs | GPU vs CPU ref |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");

    let mut shapes = Vec::new();
    for d in [576usize, 4096] {
        for rank in [8usize, 16] {
            for k in [8usize, 32] {
                for t in [1usize, 64, 2048] {
                    shapes.push(Shape { d, rank, k, t });
                }
            }
        }
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut weights_cache: Option<((usize, usize), Arc<OwnedAdapters>, DeviceAdapters)> = None;
    for sh in &shapes {
        let (d, rank, k, t) = (sh.d, sh.rank, sh.k, sh.t);
        if weights_cache.as_ref().map(|w| w.0) != Some((d, rank)) {
            let w = Arc::new(OwnedAdapters::random(CANDIDATES, rank, d, 0.05, 5));
            let dev = DeviceAdapters::upload(rt, w.as_ref()).unwrap();
            weights_cache = Some(((d, rank), w, dev));
        }
        let Some((_, weights, dev_w)) = weights_cache.as_ref() else {
            continue;
        };
        let h = rand_tensor(&mut rng, t, d, 10.0, DType::F32);
        let hn = rand_tensor(&mut rng, t, d, 1.0, DType::F32);
        let scores = rand_tensor(&mut rng, t, CANDIDATES, 1.0, DType::F32);
        let params = SelectionParams::new(-1.0, k, 1.0);
        let mut inputs = DeviceInputs::upload(rt, &h, &hn, &scores, None).unwrap();

        // One recorded launch: distinct experts and per-tile reads.
        let mut rec = DeviceRecord::new(rt, t, k).unwrap();
        let plan = rt
            .launch(&mut inputs, dev_w, &params, Some(&mut rec))
            .unwrap()
            .unwrap();
        inputs.check(rt).unwrap();
        let asg = rec.download(rt).unwrap();
        let eb = expert_bytes(rank, d) as f64;
        let distinct: HashSet<u32> = asg.iter().flatten().map(|s| s.candidate).collect();
        let gathered = distinct.len() as f64 * eb;
        let mut read = 0.0;
        for tile in 0..plan.tiles {
            let lo = tile * plan.tile;
            let hi = (lo + plan.tile).min(t);
            let set: HashSet<u32> = (lo..hi)
                .filter_map(|u| asg.get(u))
                .flatten()
                .map(|s| s.candidate)
                .collect();
            read += set.len() as f64 * eb;
        }
        let score_rows = (plan.tile * CANDIDATES * 4) as f64;
        read += (plan.tiles * plan.splits) as f64 * score_rows;

        // Kernel time, and the floor for the same bytes.
        let secs = timed(rt, || {
            rt.launch(&mut inputs, dev_w, &params, None).unwrap();
        });
        let floor_s = floor_seconds(rt, &floor, gathered as usize);
        let bw = gathered / secs;

        // Whole host-tensor call.
        let host = time_cpu(2, || {
            black_box(
                rt.apply_host(&h, &hn, &scores, weights.as_ref(), &params, false)
                    .unwrap(),
            );
        });
        // CPU fused kernel (the op applied directly stays on the CPU).
        let op = FusedApplyOp::new(weights.clone(), params.clone());
        let cpu = time_cpu(if t >= 2048 { 1 } else { 3 }, || {
            black_box(h.apply_op3_no_bwd(&hn, &scores, &op).unwrap());
        });
        // candle reference on the CPU, where its gather fits in memory.
        let ref_bytes = t * k * 2 * rank * d * 4;
        let reference = (ref_bytes <= REFERENCE_MAX_BYTES).then(|| {
            let (at, bt) = weights.to_tensors(&Device::Cpu).unwrap();
            time_cpu(1, || {
                black_box(reference_apply(&h, &hn, &scores, &at, &bt, &params).unwrap());
            })
        });
        let us = |s: f64| format!("{:.1}", s * 1e6);
        println!(
            "| {d} | {rank} | {k} | {t} | {}×{}×{} | {:.2} | {:.2} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} |",
            plan.tile,
            plan.tiles,
            plan.splits,
            gathered / 1e6,
            read / 1e6,
            us(secs),
            us(floor_s),
            secs / floor_s,
            bw / 1e9,
            100.0 * bw / peak,
            100.0 * bw / d2d,
            us(host),
            us(cpu),
            reference.map_or("—".to_string(), us),
            reference.map_or("—".to_string(), |r| format!("{:.0}×", r / secs)),
        );
        let _ = weights.num_candidates();
    }
    println!("\nplan = tile × tiles × expert splits. Weights: K × (A + B) fp16, device-resident.");
    println!("benchmark ran {:.0} s", started.elapsed().as_secs_f64());
}
