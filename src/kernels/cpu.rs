//! Hand-tuned CPU kernel of the fused apply operator.
//!
//! Per token block (see [`super::plan`]):
//!
//! 1. **Gate**: the block's rows of the score matrix (computed by the selection rule,
//!    [`crate::select`]) → penalty, threshold, top-k, softmax — [`super::gate`]'s
//!    `finish_token`, writing straight into the call's [`TokenAssignments`].
//! 2. **Invert**: a counting sort turns "token → experts" into "expert → (token,
//!    weight)" so that each used expert is visited once per block.
//! 3. **Shrink**: for each row of `A_j`, dot it with the `h̃` row of every token
//!    using `j`, scaled by that token's weight; with few users straight from fp16,
//!    with more after converting the row once (F16C) into an L1-sized buffer.
//! 4. **Expand**: with one or two users (decode), dot each fp16 row of `B_j` with
//!    `z` straight from the weights (eight rows per `vhaddps` tree); with more,
//!    convert a chunk of rows, transpose it once and run register-blocked axpys,
//!    which is several times cheaper per user.
//! 5. **Finish**: `out = h + delta` in f32, converted to `h`'s dtype; rows with no
//!    expert are copied bit for bit.
//!
//! The block logic is written once, generic over a `Simd` implementation, and
//! instantiated twice: portable (baseline target; fp16 through `half`'s slice
//! conversions) and, chosen at run time, inside
//! `#[target_feature(enable = "avx2,fma,f16c")]` functions whose inner loops are
//! the hand-written micro-kernels of `x86.rs` (LLVM's auto-vectorisation of the
//! generic loops measured 2–3× slower: 128-bit shuffles, a call per 8 fp16 values
//! in `half`). Scratch buffers come from process-wide pools, so a call allocates
//! nothing but its output once the pools are warm.

// One of the named modules allowed `unsafe` (workspace lints): calls into the `#[target_feature]` micro-kernels of `cpu/x86.rs`, each behind a CPU-detection token.
#![allow(unsafe_code)]

use half::f16;
use half::slice::HalfFloatSliceExt;
use parking_lot::Mutex;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod x86;

use super::gate::{check_scores, finish_token, Selected, SelectionParams, TokenAssignments};
use super::math::{dot, madd};
use super::plan::{self, PlanInput};
use super::{AdapterWeights, KernelError};

/// Rows of `B` converted per expand step: ≈16 KiB of f32 whatever the rank.
const B_CHUNK_VALUES: usize = 4096;
/// Users of one expert in a block from which the shrink converts `A` once and the
/// expand transposes its `B` chunk; below, both stream fp16 straight into the dots.
/// Measured on rank 8: equal at 2 users, the transposed form ~20 % faster at 4.
const TRANSPOSE_MIN_USERS: usize = 3;
/// Width of the register-blocked axpy in the transposed expand.
const AXPY_BLOCK: usize = 32;

/// An element type of activations: f32 or f16.
pub trait Elem: Copy + Send + Sync + 'static {
    /// Converts `src` into `dst` (equal lengths; extra elements are ignored).
    fn to_f32(src: &[Self], dst: &mut [f32]);
    /// Converts `src` into `dst` (equal lengths; extra elements are ignored).
    fn from_f32(src: &[f32], dst: &mut [Self]);
    /// `src` itself when it already is f32, so it can be read without a copy.
    fn as_f32(src: &[Self]) -> Option<&[f32]>;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
    #[inline(always)]
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
    #[inline(always)]
    fn as_f32(src: &[Self]) -> Option<&[f32]> {
        Some(src)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(src: &[Self], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        src[..n].convert_to_f32_slice(&mut dst[..n]);
    }
    #[inline(always)]
    fn from_f32(src: &[f32], dst: &mut [Self]) {
        let n = src.len().min(dst.len());
        dst[..n].convert_from_f32_slice(&src[..n]);
    }
    #[inline(always)]
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

/// Instruction set the hot loops run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Whatever the build target guarantees (SSE2 on x86-64).
    Portable,
    /// AVX2 + FMA + F16C (re-checked at run time before use).
    Avx2Fma,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if Avx2Fma::detect().is_some() {
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }
}

/// What the generic hot loops need from an instruction set.
///
/// Whether `mul_add` is one instruction is passed separately as a `const FMA: bool`
/// (an associated const cannot be a const-generic argument on stable Rust).
trait Simd: Copy {
    /// fp16 → f32 of equally long slices.
    fn f16_to_f32(self, src: &[f16], dst: &mut [f32]);
    /// `a · x` for fp16 `a`, converting on the fly.
    fn dot_f16(self, a: &[f16], x: &[f32]) -> f32;
    /// `out[i] += b[i, :] · z` for fp16 `b` (`out.len() × rank`), converting on the fly.
    fn expand_f16(self, b: &[f16], rank: usize, z: &[f32], out: &mut [f32]);
    /// `out[i][j] = a[i] · x[j]`: a 2 × 4 block of dots sharing their loads.
    fn dot_2x4(self, a: [&[f32]; 2], x: [&[f32]; 4]) -> [[f32; 4]; 2];
    /// `a · b`.
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
    /// Widens fp16 `b` (`rows × rank`) into rank-major `bt` (`rank × rows`);
    /// `tmp` is scratch of at least `rows × rank`.
    fn transpose_f16(self, b: &[f16], rank: usize, bt: &mut [f32], tmp: &mut [f32]) {
        let n = b.len().min(tmp.len());
        let rows = n / rank.max(1);
        let tmp = &mut tmp[..rows * rank];
        self.f16_to_f32(&b[..rows * rank], tmp);
        for (i, brow) in tmp.chunks_exact(rank).enumerate() {
            for (r, v) in brow.iter().enumerate() {
                if let Some(dst) = bt.get_mut(r * rows + i) {
                    *dst = *v;
                }
            }
        }
    }
}

/// Values converted per step by the portable fp16 helpers (a stack buffer).
const PORTABLE_CHUNK: usize = 256;

#[derive(Clone, Copy)]
struct Portable;

impl Simd for Portable {
    #[inline(always)]
    fn f16_to_f32(self, src: &[f16], dst: &mut [f32]) {
        <f16 as Elem>::to_f32(src, dst);
    }
    #[inline(always)]
    fn dot_f16(self, a: &[f16], x: &[f32]) -> f32 {
        let mut buf = [0.0f32; PORTABLE_CHUNK];
        let mut s = 0.0;
        for (ac, xc) in a.chunks(PORTABLE_CHUNK).zip(x.chunks(PORTABLE_CHUNK)) {
            let b = &mut buf[..ac.len()];
            <f16 as Elem>::to_f32(ac, b);
            s += dot::<false>(b, xc);
        }
        s
    }
    #[inline(always)]
    fn expand_f16(self, b: &[f16], rank: usize, z: &[f32], out: &mut [f32]) {
        if rank == 0 {
            return;
        }
        let mut buf = [0.0f32; PORTABLE_CHUNK];
        let rows_per = PORTABLE_CHUNK / rank;
        if rows_per == 0 {
            // Ranks above the buffer: one value at a time.
            for (row, o) in b.chunks_exact(rank).zip(out.iter_mut()) {
                *o += row.iter().zip(z).map(|(w, v)| w.to_f32() * v).sum::<f32>();
            }
            return;
        }
        for (bc, oc) in b.chunks(rows_per * rank).zip(out.chunks_mut(rows_per)) {
            let f = &mut buf[..bc.len()];
            <f16 as Elem>::to_f32(bc, f);
            expand_rows::<false>(f, rank, z, oc);
        }
    }
    #[inline(always)]
    fn dot_2x4(self, a: [&[f32]; 2], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
        a.map(|ai| x.map(|xj| dot::<false>(ai, xj)))
    }
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        dot::<false>(a, b)
    }
}

/// Proof that the CPU supports AVX2, FMA and F16C: only [`Avx2Fma::detect`] makes one.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2Fma(());

#[cfg(target_arch = "x86_64")]
impl Avx2Fma {
    fn detect() -> Option<Self> {
        // std caches the CPUID result; this is a few atomic loads.
        (std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c"))
        .then_some(Avx2Fma(()))
    }
}

#[cfg(target_arch = "x86_64")]
// SAFETY (every method): an `Avx2Fma` value exists only if `Avx2Fma::detect`
// found avx2, fma and f16c, which is everything the `x86` functions enable.
impl Simd for Avx2Fma {
    #[inline(always)]
    fn f16_to_f32(self, src: &[f16], dst: &mut [f32]) {
        // SAFETY: see the impl.
        unsafe { x86::f16_to_f32(src, dst) }
    }
    #[inline(always)]
    fn dot_f16(self, a: &[f16], x: &[f32]) -> f32 {
        // SAFETY: see the impl.
        unsafe { x86::dot_f16(a, x) }
    }
    #[inline(always)]
    fn expand_f16(self, b: &[f16], rank: usize, z: &[f32], out: &mut [f32]) {
        // SAFETY: see the impl.
        if unsafe { x86::expand_f16(b, rank, z, out) } {
            return;
        }
        Portable.expand_f16(b, rank, z, out);
    }
    #[inline(always)]
    fn dot_2x4(self, a: [&[f32]; 2], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
        // SAFETY: see the impl.
        unsafe { x86::dot_2x4(a, x) }
    }
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: see the impl.
        unsafe { x86::dot(a, b) }
    }
    #[inline(always)]
    fn transpose_f16(self, b: &[f16], rank: usize, bt: &mut [f32], tmp: &mut [f32]) {
        // SAFETY: see the impl.
        if !unsafe { x86::transpose_f16(b, rank, bt) } {
            Portable.transpose_f16(b, rank, bt, tmp);
        }
    }
}

/// Inputs of one CPU call, already validated (shapes agree, slices are long enough).
pub(crate) struct CpuArgs<'a, H> {
    pub h: &'a [H],
    pub h_norm: &'a [H],
    /// `T × K` row-major.
    pub scores: &'a [f32],
    pub tokens: usize,
    pub d_model: usize,
    pub candidates: usize,
    pub weights: &'a dyn AdapterWeights,
    pub params: &'a SelectionParams,
    pub isa: Isa,
    pub threads: usize,
}

/// Experts used by a block, each with its users' range in `BlockScratch::users`.
#[derive(Debug, Clone, Copy, Default)]
struct ExpertUses {
    candidate: usize,
    start: usize,
    len: usize,
}

/// (token within the block, softmax weight).
#[derive(Debug, Clone, Copy, Default)]
struct User {
    token: usize,
    weight: f32,
}

/// Per-accumulator scratch: one per thread that accumulates a delta.
#[derive(Default)]
struct MixScratch {
    delta: Vec<f32>,
    arow: Vec<f32>,
    bchunk: Vec<f32>,
    bt: Vec<f32>,
    z: Vec<f32>,
}

/// Per-block scratch.
#[derive(Default)]
struct BlockScratch {
    hn: Vec<f32>,
    hrow: Vec<f32>,
    scores: Vec<f32>,
    counts: Vec<usize>,
    experts: Vec<ExpertUses>,
    users: Vec<User>,
    costs: Vec<usize>,
    bounds: Vec<usize>,
    mix: MixScratch,
}

/// Per-call scratch.
#[derive(Default)]
struct CallScratch {
    assignments: TokenAssignments,
    groups: Vec<MixScratch>,
}

static CALL_POOL: Mutex<Vec<CallScratch>> = Mutex::new(Vec::new());
static BLOCK_POOL: Mutex<Vec<BlockScratch>> = Mutex::new(Vec::new());

/// Runs `f` with a scratch from `pool`, creating one if the pool is empty, and puts
/// it back afterwards. A pool rather than thread-locals because rayon may run one
/// call's blocks on a thread that is itself waiting inside another call.
fn with_pooled<T: Default, R>(pool: &Mutex<Vec<T>>, f: impl FnOnce(&mut T) -> R) -> R {
    let mut s = pool.lock().pop().unwrap_or_default();
    let r = f(&mut s);
    pool.lock().push(s);
    r
}

/// Grows `v` to at least `n` elements (never shrinks, so capacity is reused) and
/// returns the first `n`.
fn grown<T: Default + Clone>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// One token block of a multi-block call: (index, (output rows, (counts, slots))).
type BlockItem<'a, H> = (usize, (&'a mut [H], (&'a mut [u32], &'a mut [Selected])));

/// Runs the fused operator on validated CPU inputs, writing `T × d_model` values into
/// `out`. When `record` is given, the selection is copied into it.
pub(crate) fn apply<H: Elem>(
    args: &CpuArgs<'_, H>,
    out: &mut [H],
    record: Option<&mut TokenAssignments>,
) -> Result<(), KernelError> {
    let (t, d, k) = (args.tokens, args.d_model, args.candidates);
    let rank = args.weights.rank();
    let need = |name: &'static str, len: usize, want: usize| {
        if len < want {
            Err(KernelError::shape(
                name,
                &[len],
                "required elements",
                &[want],
            ))
        } else {
            Ok(())
        }
    };
    need("hidden states", args.h.len(), t * d)?;
    need("h_norm", args.h_norm.len(), t * d)?;
    need("scores", args.scores.len(), t * k)?;
    need("output", out.len(), t * d)?;
    args.params.validate(k)?;

    with_pooled(&CALL_POOL, |cs| {
        let stride = args.params.slots(k);
        cs.assignments.reset(t, stride);

        let tplan = plan::plan_tokens(&PlanInput {
            tokens: t,
            d_model: d,
            rank,
            candidates: k,
            slots: stride,
            threads: args.threads,
        });

        // d_model = 0 has nothing to apply (and no rows to chunk): one block.
        if tplan.blocks <= 1 || d == 0 {
            let (counts, slots) = cs.assignments.parts_mut();
            with_pooled(&BLOCK_POOL, |bs| {
                single_block(args, counts, slots, &mut out[..t * d], bs, &mut cs.groups)
            })?;
        } else {
            let blocks = out[..t * d]
                .chunks_mut(tplan.block * d)
                .zip(cs.assignments.blocks_mut(tplan.block))
                .enumerate();
            let run = |(b, (out_b, (counts, slots))): BlockItem<'_, H>| {
                with_pooled(&BLOCK_POOL, |bs| {
                    token_block(args, b * tplan.block, counts, slots, out_b, bs)
                })
            };
            if tplan.parallel {
                blocks.par_bridge().try_for_each(run)?;
            } else {
                blocks.into_iter().try_for_each(run)?;
            }
        }
        if let Some(r) = record {
            r.clone_from(&cs.assignments);
        }
        Ok(())
    })
}

/// A whole call as one block, possibly with experts split over threads.
fn single_block<H: Elem>(
    args: &CpuArgs<'_, H>,
    counts: &mut [u32],
    slots: &mut [Selected],
    out: &mut [H],
    bs: &mut BlockScratch,
    groups: &mut Vec<MixScratch>,
) -> Result<(), KernelError> {
    let (n, d) = (args.tokens, args.d_model);
    let rank = args.weights.rank();
    select_block(args, 0, n, counts, slots, bs)?;
    invert(
        counts,
        slots,
        args.params.slots(args.candidates),
        args.candidates,
        bs,
    );
    if bs.users.is_empty() {
        copy_rows(&args.h[..n * d], out);
        return Ok(());
    }
    let hn = block_hn(&args.h_norm[..n * d], &mut bs.hn);
    let n_groups =
        plan::plan_expert_groups(bs.experts.len(), bs.users.len(), d, rank, args.threads);
    if n_groups <= 1 {
        let delta = grown(&mut bs.mix.delta, n * d);
        delta.fill(0.0);
        accumulate(
            args.isa,
            args.weights,
            &bs.experts,
            &bs.users,
            hn,
            d,
            &mut bs.mix,
        );
        finish(
            &args.h[..n * d],
            &bs.mix.delta[..n * d],
            counts,
            d,
            out,
            &mut bs.hrow,
        );
        return Ok(());
    }

    bs.costs.clear();
    // Reading and converting an expert costs about what four users' arithmetic does.
    bs.costs.extend(bs.experts.iter().map(|e| 4 + e.len));
    plan::split_costs(&bs.costs, n_groups, &mut bs.bounds);
    if groups.len() < n_groups {
        groups.resize_with(n_groups, MixScratch::default);
    }
    let (experts, users, bounds) = (&bs.experts, &bs.users, &bs.bounds);
    groups[..n_groups]
        .par_iter_mut()
        .enumerate()
        .for_each(|(g, mix)| {
            let delta = grown(&mut mix.delta, n * d);
            delta.fill(0.0);
            let range =
                bounds.get(g).copied().unwrap_or(0)..bounds.get(g + 1).copied().unwrap_or(0);
            if let Some(ex) = experts.get(range) {
                accumulate(args.isa, args.weights, ex, users, hn, d, mix);
            }
        });
    let (first, rest) = groups[..n_groups].split_at_mut(1);
    let total = &mut first[0].delta[..n * d];
    for g in rest.iter() {
        for (a, b) in total.iter_mut().zip(&g.delta[..n * d]) {
            *a += b;
        }
    }
    finish(&args.h[..n * d], total, counts, d, out, &mut bs.hrow);
    Ok(())
}

/// One block of a multi-block call, start to finish.
fn token_block<H: Elem>(
    args: &CpuArgs<'_, H>,
    t0: usize,
    counts: &mut [u32],
    slots: &mut [Selected],
    out: &mut [H],
    bs: &mut BlockScratch,
) -> Result<(), KernelError> {
    let d = args.d_model;
    let n = counts.len();
    let rows = t0 * d..(t0 + n) * d;
    select_block(args, t0, n, counts, slots, bs)?;
    invert(
        counts,
        slots,
        args.params.slots(args.candidates),
        args.candidates,
        bs,
    );
    let (h, out) = (&args.h[rows.clone()], &mut out[..n * d]);
    if bs.users.is_empty() {
        copy_rows(h, out);
        return Ok(());
    }
    let hn = block_hn(&args.h_norm[rows], &mut bs.hn);
    let delta = grown(&mut bs.mix.delta, n * d);
    delta.fill(0.0);
    accumulate(
        args.isa,
        args.weights,
        &bs.experts,
        &bs.users,
        hn,
        d,
        &mut bs.mix,
    );
    finish(h, &bs.mix.delta[..n * d], counts, d, out, &mut bs.hrow);
    Ok(())
}

fn copy_rows<H: Elem>(h: &[H], out: &mut [H]) {
    let n = h.len().min(out.len());
    out[..n].copy_from_slice(&h[..n]);
}

/// The block's `h̃` rows as f32: borrowed when they already are, converted otherwise.
fn block_hn<'a, H: Elem>(h_norm: &'a [H], buf: &'a mut Vec<f32>) -> &'a [f32] {
    match H::as_f32(h_norm) {
        Some(v) => v,
        None => {
            let dst = grown(buf, h_norm.len());
            H::to_f32(h_norm, dst);
            dst
        }
    }
}

/// `out = h + delta` for tokens with experts, `out = h` (bit for bit) otherwise.
fn finish<H: Elem>(
    h: &[H],
    delta: &[f32],
    counts: &[u32],
    d: usize,
    out: &mut [H],
    hrow: &mut Vec<f32>,
) {
    if d == 0 {
        return;
    }
    let hrow = grown(hrow, d);
    for (((hr, dr), or), &c) in h
        .chunks_exact(d)
        .zip(delta.chunks_exact(d))
        .zip(out.chunks_exact_mut(d))
        .zip(counts)
    {
        if c == 0 {
            or.copy_from_slice(hr);
            continue;
        }
        H::to_f32(hr, hrow);
        for (x, dv) in hrow.iter_mut().zip(dr) {
            *x += dv;
        }
        H::from_f32(hrow, or);
    }
}

/// Builds the expert → users lists of a block (counting sort by candidate).
fn invert(
    counts: &[u32],
    slots: &[Selected],
    stride: usize,
    candidates: usize,
    bs: &mut BlockScratch,
) {
    let per = grown(&mut bs.counts, candidates + 1);
    per.fill(0);
    let rows = || {
        counts.iter().enumerate().flat_map(move |(u, &c)| {
            slots
                .get(u * stride..u * stride + c as usize)
                .unwrap_or(&[])
                .iter()
                .map(move |s| (u, s))
        })
    };
    for (_, s) in rows() {
        if let Some(c) = per.get_mut(s.candidate as usize) {
            *c += 1;
        }
    }
    bs.experts.clear();
    let mut start = 0usize;
    for (j, c) in per.iter_mut().enumerate().take(candidates) {
        let len = *c;
        if len > 0 {
            bs.experts.push(ExpertUses {
                candidate: j,
                start,
                len,
            });
        }
        // From here on, `per[j]` is the next free position of expert j's users.
        *c = start;
        start += len;
    }
    bs.users.clear();
    bs.users.resize(start, User::default());
    for (u, s) in rows() {
        if let Some(pos) = per.get_mut(s.candidate as usize) {
            if let Some(slot) = bs.users.get_mut(*pos) {
                *slot = User {
                    token: u,
                    weight: s.weight,
                };
            }
            *pos += 1;
        }
    }
}

/// Gate of tokens `t0 .. t0 + n` into `counts`/`slots`: each token's score row, copied
/// (the penalty is subtracted in place), through [`finish_token`].
fn select_block<H: Elem>(
    args: &CpuArgs<'_, H>,
    t0: usize,
    n: usize,
    counts: &mut [u32],
    slots: &mut [Selected],
    bs: &mut BlockScratch,
) -> Result<(), KernelError> {
    let k = args.candidates;
    let rows = &args.scores[t0 * k..(t0 + n) * k];
    check_scores(rows, k, t0)?;
    let scores = grown(&mut bs.scores, n * k);
    scores.copy_from_slice(rows);
    let stride = slots.len().checked_div(n).unwrap_or(0);
    for (u, count) in counts.iter_mut().enumerate() {
        let row = &mut scores[u * k..(u + 1) * k];
        let sel = slots
            .get_mut(u * stride..(u + 1) * stride)
            .unwrap_or(&mut []);
        *count = finish_token(row, args.params, sel) as u32;
    }
    Ok(())
}

/// Adds `Σ_j w_uj · B_j (A_j h̃_u)` over `experts` into `mix.delta` (`n × d`).
fn accumulate(
    isa: Isa,
    weights: &dyn AdapterWeights,
    experts: &[ExpertUses],
    users: &[User],
    hn: &[f32],
    d: usize,
    mix: &mut MixScratch,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => match Avx2Fma::detect() {
            // SAFETY: `tok` proves the CPU has every feature `accumulate_avx2` enables.
            Some(tok) => unsafe { accumulate_avx2(tok, weights, experts, users, hn, d, mix) },
            None => accumulate_impl::<_, false>(Portable, weights, experts, users, hn, d, mix),
        },
        _ => accumulate_impl::<_, false>(Portable, weights, experts, users, hn, d, mix),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate_avx2(
    tok: Avx2Fma,
    weights: &dyn AdapterWeights,
    experts: &[ExpertUses],
    users: &[User],
    hn: &[f32],
    d: usize,
    mix: &mut MixScratch,
) {
    accumulate_impl::<_, true>(tok, weights, experts, users, hn, d, mix)
}

#[inline(always)]
fn accumulate_impl<S: Simd, const FMA: bool>(
    simd: S,
    weights: &dyn AdapterWeights,
    experts: &[ExpertUses],
    users: &[User],
    hn: &[f32],
    d: usize,
    mix: &mut MixScratch,
) {
    let rank = weights.rank();
    if rank == 0 || d == 0 {
        return;
    }
    let rows_per_chunk = (B_CHUNK_VALUES / rank).clamp(8, d.max(8));
    let arow = grown(&mut mix.arow, 2 * d);
    let bchunk = grown(&mut mix.bchunk, rows_per_chunk * rank);
    let bt = grown(&mut mix.bt, rows_per_chunk * rank);
    let delta = &mut mix.delta;
    let weights_of = |e: &ExpertUses| {
        let (a, b) = (weights.a(e.candidate), weights.b(e.candidate));
        // Validation guarantees the lengths; never read past a short slice anyway.
        (a.len() >= rank * d && b.len() >= rank * d).then(|| (&a[..rank * d], &b[..rank * d]))
    };
    // No software prefetch of upcoming experts: measured (whole lines or one line
    // per page, 1 to 8 experts ahead) it never helped and cost up to 18 % when the
    // weights were already cached; the hardware prefetcher follows each stream.
    for e in experts {
        let Some((a, b)) = weights_of(e) else {
            continue;
        };
        let Some(us) = users.get(e.start..e.start + e.len) else {
            continue;
        };
        let z = grown(&mut mix.z, us.len() * rank);

        if us.len() < TRANSPOSE_MIN_USERS {
            // Few users (decode): stream the fp16 weights straight into the dots;
            // nothing is reused, so converting to a buffer first would only add a
            // store and a load per value.
            for (r, arow) in a.chunks_exact(d).take(rank).enumerate() {
                for (ui, u) in us.iter().enumerate() {
                    let x = &hn[u.token * d..(u.token + 1) * d];
                    z[ui * rank + r] = u.weight * simd.dot_f16(arow, x);
                }
            }
            for (ui, u) in us.iter().enumerate() {
                let zu = &z[ui * rank..(ui + 1) * rank];
                simd.expand_f16(b, rank, zu, &mut delta[u.token * d..(u.token + 1) * d]);
            }
            continue;
        }

        // Shrink: z_u = w_u · A h̃_u, two converted A rows at a time, each pair
        // reused by every user, four users per micro-kernel call.
        let mut r = 0;
        while r < rank {
            let rows = if r + 1 < rank { 2 } else { 1 };
            simd.f16_to_f32(&a[r * d..(r + rows) * d], &mut arow[..rows * d]);
            let a2 = [&arow[..d], &arow[(rows - 1) * d..rows * d]];
            let x_of = |u: &User| &hn[u.token * d..(u.token + 1) * d];
            let mut chunks = us.chunks_exact(4);
            let mut ui = 0;
            for four in &mut chunks {
                let xs: [&[f32]; 4] = std::array::from_fn(|i| x_of(&four[i]));
                let dots = simd.dot_2x4(a2, xs);
                for (rr, row) in dots.iter().enumerate().take(rows) {
                    for (i, u) in four.iter().enumerate() {
                        z[(ui + i) * rank + r + rr] = u.weight * row[i];
                    }
                }
                ui += 4;
            }
            for (i, u) in chunks.remainder().iter().enumerate() {
                for (rr, ar) in a2.iter().enumerate().take(rows) {
                    z[(ui + i) * rank + r + rr] = u.weight * simd.dot(ar, x_of(u));
                }
            }
            r += rows;
        }

        // Expand: delta_u += B z_u, a chunk of B rows at a time, transposed once
        // so that each user's update is a register-blocked axpy.
        let mut i0 = 0usize;
        while i0 < d {
            let rows = rows_per_chunk.min(d - i0);
            let bt = &mut bt[..rows * rank];
            simd.transpose_f16(&b[i0 * rank..(i0 + rows) * rank], rank, bt, bchunk);
            for (ui, u) in us.iter().enumerate() {
                let zu = &z[ui * rank..(ui + 1) * rank];
                let dr = &mut delta[u.token * d + i0..u.token * d + i0 + rows];
                expand_transposed::<FMA>(bt, rows, zu, dr);
            }
            i0 += rows;
        }
    }
}

/// `out[i] += Σ_r bt[r][i] · z[r]` with `bt` rank-major (`rank × rows`), keeping
/// `AXPY_BLOCK` outputs in registers across the whole rank loop.
#[inline(always)]
fn expand_transposed<const FMA: bool>(bt: &[f32], rows: usize, z: &[f32], out: &mut [f32]) {
    let mut c0 = 0usize;
    while c0 + AXPY_BLOCK <= rows {
        let mut acc = [0.0f32; AXPY_BLOCK];
        acc.copy_from_slice(&out[c0..c0 + AXPY_BLOCK]);
        for (r, &zr) in z.iter().enumerate() {
            let col = &bt[r * rows + c0..r * rows + c0 + AXPY_BLOCK];
            for l in 0..AXPY_BLOCK {
                acc[l] = madd::<FMA>(col[l], zr, acc[l]);
            }
        }
        out[c0..c0 + AXPY_BLOCK].copy_from_slice(&acc);
        c0 += AXPY_BLOCK;
    }
    for (i, o) in out.iter_mut().enumerate().take(rows).skip(c0) {
        let mut s = *o;
        for (r, &zr) in z.iter().enumerate() {
            s = madd::<FMA>(bt[r * rows + i], zr, s);
        }
        *o = s;
    }
}

/// `out[i] += dot(b[i, :], z)` for row-major `b` (`rows × rank`), specialised for
/// the common ranks so that the row dot is fully unrolled and vectorised.
#[inline(always)]
fn expand_rows<const FMA: bool>(b: &[f32], rank: usize, z: &[f32], out: &mut [f32]) {
    match rank {
        1 => expand_rows_r::<1, FMA>(b, z, out),
        2 => expand_rows_r::<2, FMA>(b, z, out),
        4 => expand_rows_r::<4, FMA>(b, z, out),
        8 => expand_rows_r::<8, FMA>(b, z, out),
        16 => expand_rows_r::<16, FMA>(b, z, out),
        32 => expand_rows_r::<32, FMA>(b, z, out),
        64 => expand_rows_r::<64, FMA>(b, z, out),
        _ => {
            for (row, o) in b.chunks_exact(rank).zip(out.iter_mut()) {
                *o += dot::<FMA>(row, z);
            }
        }
    }
}

#[inline(always)]
fn expand_rows_r<const R: usize, const FMA: bool>(b: &[f32], z: &[f32], out: &mut [f32]) {
    let Some(z) = z.get(..R) else {
        return;
    };
    // Eight partial sums: one vector register for R ≥ 8, a short chain below.
    const P: usize = 8;
    for (row, o) in b.chunks_exact(R).zip(out.iter_mut()) {
        let mut acc = [0.0f32; P];
        for r in 0..R {
            acc[r % P] = madd::<FMA>(row[r], z[r], acc[r % P]);
        }
        let s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        *o += s;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn expand_paths_agree() {
        for rank in [1usize, 3, 8, 16, 64] {
            for rows in [1usize, 31, 32, 70] {
                let b: Vec<f32> = (0..rows * rank)
                    .map(|i| ((i * 7 % 13) as f32) - 6.0)
                    .collect();
                let z: Vec<f32> = (0..rank).map(|r| r as f32 * 0.5 - 1.0).collect();
                let mut bt = vec![0.0; rows * rank];
                for i in 0..rows {
                    for r in 0..rank {
                        bt[r * rows + i] = b[i * rank + r];
                    }
                }
                let mut o1 = vec![1.0f32; rows];
                let mut o2 = o1.clone();
                expand_rows::<false>(&b, rank, &z, &mut o1);
                expand_transposed::<false>(&bt, rows, &z, &mut o2);
                let naive: Vec<f32> = (0..rows)
                    .map(|i| 1.0 + (0..rank).map(|r| b[i * rank + r] * z[r]).sum::<f32>())
                    .collect();
                assert_eq!(o1, naive, "rank {rank} rows {rows}");
                assert_eq!(o2, naive, "rank {rank} rows {rows}");
            }
        }
    }

    #[test]
    fn invert_groups_users_by_candidate() {
        let sel = |c: u32, w: f32| Selected {
            candidate: c,
            score: 0.0,
            weight: w,
        };
        // 3 tokens, stride 2: t0 → {2, 0}, t1 → {}, t2 → {2}.
        let slots = [
            sel(2, 0.6),
            sel(0, 0.4),
            sel(0, 0.0),
            sel(0, 0.0),
            sel(2, 1.0),
            sel(0, 0.0),
        ];
        let counts = [2u32, 0, 1];
        let mut bs = BlockScratch::default();
        invert(&counts, &slots, 2, 3, &mut bs);
        let ex: Vec<_> = bs
            .experts
            .iter()
            .map(|e| (e.candidate, e.start, e.len))
            .collect();
        assert_eq!(ex, [(0, 0, 1), (2, 1, 2)]);
        let us: Vec<_> = bs.users.iter().map(|u| (u.token, u.weight)).collect();
        assert_eq!(us, [(0, 0.4), (0, 0.6), (2, 1.0)]);
    }

    #[test]
    fn pooled_scratch_is_reused() {
        static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
        with_pooled(&POOL, |v| v.reserve(100));
        let cap = with_pooled(&POOL, |v| v.capacity());
        assert!(cap >= 100);
        assert_eq!(POOL.lock().len(), 1);
    }
}
