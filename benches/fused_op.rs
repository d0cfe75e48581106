//! Fused apply operator vs the candle-ops reference, and achieved weight bandwidth
//! against this machine's streaming read bandwidth, all measured in the same run.
//!
//! Run: `cargo bench --bench fused_op` (prints a Markdown table).
//!
//! * K = 64 candidates, rank 8, τ = −1 and `T × K` f32 scores uniform in [−1, 1]
//!   (every candidate passes, so each token uses exactly k experts), T ∈ {1, 16, 256},
//!   k ∈ {4, 16, 32}, d_model ∈ {576, 2048}, f32 activations.
//! * "weight BW" counts adapter weight bytes only (the goal's definition); the
//!   last column adds the `T × K` f32 scores every call also reads for its gate.
//! * "Weights in RAM": the calls rotate over enough independent candidate sets
//!   (≈ 256 MiB of fp16 weights, 8× the LLC) that every call reads its experts
//!   from DRAM, not cache.
//! * Bytes read per call = distinct experts used × (A + B) bytes; each is read once
//!   per call by the fused kernel's blocking (plus L3 re-reads across token blocks).
//! * Streaming bandwidth: best of several sums of a 512 MiB buffer, one thread and
//!   all threads.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use mome::SelectionParams;
use mome::{fused_apply, fused_apply_explain, reference_apply, AdapterWeights, OwnedAdapters};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const CANDIDATES: usize = 64;
const RANK: usize = 8;
const POOL_BYTES: usize = 256 << 20;
const STREAM_BYTES: usize = 512 << 20;

fn sum_u64(chunk: &[u64]) -> u64 {
    // Eight independent lanes so the adds are not one dependency chain.
    let mut acc = [0u64; 8];
    let mut it = chunk.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    it.remainder()
        .iter()
        .fold(acc.iter().fold(0, |a, b| a.wrapping_add(*b)), |a, b| {
            a.wrapping_add(*b)
        })
}

/// Streaming read bandwidth in bytes/s: (one thread, all threads).
fn stream_bandwidth() -> (f64, f64) {
    let buf: Vec<u64> = (0..STREAM_BYTES / 8).map(|i| i as u64).collect();
    let best = |f: &dyn Fn() -> u64| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                black_box(f());
                STREAM_BYTES as f64 / t.elapsed().as_secs_f64()
            })
            .fold(0.0f64, f64::max)
    };
    let one = best(&|| sum_u64(&buf));
    let threads = rayon::current_num_threads();
    let all = best(&|| {
        buf.par_chunks(buf.len().div_ceil(threads))
            .map(sum_u64)
            .reduce(|| 0, u64::wrapping_add)
    });
    (one, all)
}

/// Median seconds per call of `f`, run for about `budget` (at least `min` calls).
fn time_calls(budget: Duration, min: usize, mut f: impl FnMut(usize)) -> f64 {
    f(0);
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut i = 1;
    while samples.len() < min || (start.elapsed() < budget && samples.len() < 100_000) {
        let t = Instant::now();
        f(i);
        samples.push(t.elapsed().as_secs_f64());
        i += 1;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn tensor(rng: &mut rand::rngs::StdRng, rows: usize, cols: usize, scale: f32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-scale..=scale))
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("tensor")
}

fn fmt_time(s: f64) -> String {
    if s.is_nan() {
        "—".into()
    } else if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

/// `cargo bench --bench fused_op -- d=576 t=1 k=4 noref` narrows the sweep.
fn filter(name: &str, v: usize) -> bool {
    let args: Vec<String> = std::env::args().collect();
    let want: Vec<usize> = args
        .iter()
        .filter_map(|a| {
            a.strip_prefix(&format!("{name}="))
                .and_then(|x| x.parse().ok())
        })
        .collect();
    want.is_empty() || want.contains(&v)
}

fn main() {
    let no_ref = std::env::args().any(|a| a == "noref");
    // `MOME_BENCH_FUSED_MS` lengthens the fused timing loop (for profiling).
    let fused_budget = Duration::from_millis(
        std::env::var("MOME_BENCH_FUSED_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400),
    );
    let threads = rayon::current_num_threads();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (bw1, bw_all) = stream_bandwidth();
    println!(
        "CPU: {cpu}, {threads} threads (rayon); load average at start: {}",
        load.trim()
    );
    println!(
        "Streaming read bandwidth (sum of a {} MiB buffer): {:.1} GB/s one thread, {:.1} GB/s all threads\n",
        STREAM_BYTES >> 20,
        bw1 / 1e9,
        bw_all / 1e9
    );
    println!("| d_model | T | k | experts read | weight KiB/call | fused | reference | speedup | weight BW | % of 1-thread stream | % of all-thread stream | weights+scores BW |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for d in [576usize, 2048] {
        if !filter("d", d) {
            continue;
        }
        let set_bytes = CANDIDATES * 2 * RANK * d * 2;
        // `hot` keeps one set, so weights stay in cache (for comparison only).
        let sets = if std::env::args().any(|a| a == "hot") {
            1
        } else {
            POOL_BYTES.div_ceil(set_bytes)
        };
        let pool: Vec<Arc<OwnedAdapters>> = (0..sets)
            .map(|s| Arc::new(OwnedAdapters::random(CANDIDATES, RANK, d, 0.05, s as u64)))
            .collect();
        // The reference needs weights as tensors; rotate over a smaller set of them
        // (its own gathers and conversions dwarf the weight reads anyway).
        let ref_sets: Vec<(Tensor, Tensor)> = pool
            .iter()
            .take(8)
            .map(|w| w.to_tensors(&Device::Cpu).expect("tensors"))
            .collect();
        for t in [1usize, 16, 256] {
            if !filter("t", t) {
                continue;
            }
            let h = tensor(&mut rng, t, d, 20.0);
            let h_norm = tensor(&mut rng, t, d, 1.0);
            let scores = tensor(&mut rng, t, CANDIDATES, 1.0);
            let score_bytes = t * CANDIDATES * 4;
            for k in [4usize, 16, 32] {
                if !filter("k", k) {
                    continue;
                }
                let params = SelectionParams::new(-1.0, k, 1.0);
                let (_, asg) = fused_apply_explain(&h, &h_norm, &scores, pool[0].clone(), &params)
                    .expect("fused");
                let mut used = [false; CANDIDATES];
                for s in asg.iter().flatten() {
                    used[s.candidate as usize] = true;
                }
                let experts = used.iter().filter(|u| **u).count();
                let per_expert = 2 * pool[0].rank() * pool[0].d_model() * 2;
                let bytes = experts * per_expert;

                let fused = time_calls(fused_budget, 20, |i| {
                    let w: Arc<dyn AdapterWeights> = pool[i % sets].clone();
                    black_box(fused_apply(&h, &h_norm, &scores, w, &params).expect("fused"));
                });
                let reference = if no_ref {
                    f64::NAN
                } else {
                    time_calls(Duration::from_millis(600), 3, |i| {
                        let (a, b) = &ref_sets[i % ref_sets.len()];
                        black_box(
                            reference_apply(&h, &h_norm, &scores, a, b, &params)
                                .expect("reference"),
                        );
                    })
                };
                let bw = bytes as f64 / fused;
                let bw_total = (bytes + score_bytes) as f64 / fused;
                println!(
                    "| {d} | {t} | {k} | {experts} | {} | {} | {} | {} | {:.1} GB/s | {:.0} % | {:.0} % | {:.1} GB/s |",
                    bytes / 1024,
                    fmt_time(fused),
                    fmt_time(reference),
                    if reference.is_nan() {
                        "—".to_string()
                    } else {
                        format!("{:.1}×", reference / fused)
                    },
                    bw / 1e9,
                    100.0 * bw / bw1,
                    100.0 * bw / bw_all,
                    bw_total / 1e9
                );
            }
        }
        drop(ref_sets);
        drop(pool);
    }
}
