//! Launch plan of the CUDA fused kernel (`kernels/fused_apply.cu`): token tile, grid,
//! shared-memory layout and the kernel's parameter block. Pure functions, no GPU needed,
//! unit-tested everywhere; the launcher ([`super::cuda`]) only executes a plan.
//!
//! # Shape of a launch
//!
//! * One CTA of [`BLOCK`] threads per **token tile** of up to [`MAX_TILE`] tokens
//!   (`grid.x`). A CTA selects for its tokens and reads each expert its tokens use once.
//! * The tile's used experts may be split over **`splits`** CTAs (`grid.y`): CTA `y`
//!   applies experts `y, y + splits, …` and adds its share into the output with
//!   `atomicAdd`. Splits exist to fill the GPU when there are few tiles (decode, short
//!   prompts); each split repeats the tile's gate (it re-reads the tile's score rows),
//!   so they are bounded by the weight bytes they spread ([`SCORE_COST_RATIO`]).
//! * Shared memory holds, per tile: the `tile × K` f32 scores during the gate, then (same
//!   bytes) the f32 `h̃` rows and the f32 delta rows during the apply, plus small
//!   selection/expert lists. The tile is the largest that fits the budget (two CTAs per
//!   SM where possible).
//! * The shrink `z = A h̃` gives each warp a (row of `A`, part of `d_model`) item;
//!   `nsplit` parts per row keep all warps busy at low rank.

use std::fmt;

/// Threads per CTA (kernel's `MOME_BLOCK`).
pub const BLOCK: u32 = 256;
/// Warps per CTA.
pub const WARPS: usize = BLOCK as usize / 32;
/// Most tokens per tile (kernel's `MOME_MAX_TILE`: the length of its register arrays).
pub const MAX_TILE: usize = 16;
/// Granule of a shrink part, in elements of `d_model`: 32 lanes × 4 halves.
pub const SHRINK_GRANULE: usize = 128;
/// CTAs per SM the plan aims for (the kernel's `__launch_bounds__` minimum).
pub const CTAS_PER_SM: usize = 2;
/// A split must spread at least `1 / SCORE_COST_RATIO` of the tile's score bytes in
/// weights: every split re-reads the tile's `tile × K` scores for its gate.
pub const SCORE_COST_RATIO: usize = 4;

/// Device properties the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors.
    pub sm_count: usize,
    /// Largest dynamic shared memory one CTA may opt in to, bytes.
    pub smem_per_block_optin: usize,
    /// Shared memory per SM, bytes.
    pub smem_per_sm: usize,
}

impl DeviceLimits {
    /// An H100 SXM (132 SMs, 227 KiB per CTA, 228 KiB per SM): for tests and docs.
    pub const H100: DeviceLimits = DeviceLimits {
        sm_count: 132,
        smem_per_block_optin: 232_448,
        smem_per_sm: 233_472,
    };
    /// An A100 (108 SMs, 163 KiB per CTA, 164 KiB per SM).
    pub const A100: DeviceLimits = DeviceLimits {
        sm_count: 108,
        smem_per_block_optin: 166_912,
        smem_per_sm: 167_936,
    };
}

/// Sizes of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaPlanInput {
    /// Tokens T.
    pub tokens: usize,
    /// Model width.
    pub d_model: usize,
    /// Candidates K (columns of the score matrix).
    pub candidates: usize,
    /// Adapter rank.
    pub rank: usize,
    /// Selection slots per token, `min(top_k, K)`.
    pub slots: usize,
}

/// Why no plan exists for a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Even a one-token tile needs more shared memory than the device has.
    #[error("the CUDA kernel needs {need} bytes of shared memory for one token (d_model {d_model}, K {candidates}); the device allows {have}")]
    SharedMemory {
        /// Bytes needed for a one-token tile.
        need: usize,
        /// Bytes the device allows per CTA.
        have: usize,
        /// Model width of the call.
        d_model: usize,
        /// Candidates of the call.
        candidates: usize,
    },
    /// A size does not fit the kernel's 32-bit indexing.
    #[error("{0} is too large for the CUDA kernel's 32-bit indexing")]
    TooLarge(&'static str),
}

/// Offsets (in 4-byte words, each a multiple of 4 so that float4 accesses are aligned)
/// of the shared-memory regions of one CTA. Mirrors the kernel's `Params::off_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmemLayout {
    /// Scores after the penalty, `tile × K` (gate phase).
    pub scores: usize,
    /// f32 `h̃` rows, `tile × d_model` (apply phase; overlaps `scores`).
    pub hn: usize,
    /// f32 delta rows, `tile × d_model` (apply phase).
    pub delta: usize,
    /// Shrink partial sums, `nsplit × tile × rank`.
    pub zpart: usize,
    /// Weighted `z` of the current expert's users, `tile × rank`.
    pub z: usize,
    /// Experts per token, `tile`.
    pub cnt: usize,
    /// Whether this CTA added anything to a token's row, `tile`.
    pub touched: usize,
    /// Selected candidate per (token, slot), `tile × slots`.
    pub sel_idx: usize,
    /// Softmax weight per (token, slot).
    pub sel_w: usize,
    /// Score per (token, slot).
    pub sel_sc: usize,
    /// Users per candidate, `K`.
    pub ecount: usize,
    /// First user of each candidate, `K`.
    pub eoff: usize,
    /// Used candidates in order, `K`.
    pub used: usize,
    /// User token per (expert, user), `tile × slots`.
    pub users_tok: usize,
    /// User weight per (expert, user).
    pub users_w: usize,
    /// Scalars (number of used experts).
    pub misc: usize,
    /// Total words.
    pub words: usize,
}

impl SmemLayout {
    /// Bytes of dynamic shared memory.
    pub fn bytes(&self) -> usize {
        self.words * 4
    }
}

fn r4(x: usize) -> usize {
    x.div_ceil(4) * 4
}

/// The shared-memory layout of a CTA (see [`SmemLayout`]), or `None` on overflow.
pub fn smem_layout(tile: usize, p: &CudaPlanInput, nsplit: usize) -> Option<SmemLayout> {
    let m = |a: usize, b: usize| a.checked_mul(b).map(r4);
    let (d, k) = (p.d_model, p.candidates);
    let scores = 0;
    let sel_end = scores + m(tile, k)?;
    let hn = 0;
    let delta = hn + m(tile, d)?;
    let apply_end = delta.checked_add(m(tile, d)?)?;
    let zpart = sel_end.max(apply_end);
    let z = zpart.checked_add(m(nsplit.checked_mul(tile)?, p.rank)?)?;
    let cnt = z.checked_add(m(tile, p.rank)?)?;
    let touched = cnt + r4(tile);
    let sel_idx = touched + r4(tile);
    let ts = m(tile, p.slots)?;
    let sel_w = sel_idx.checked_add(ts)?;
    let sel_sc = sel_w.checked_add(ts)?;
    let ecount = sel_sc.checked_add(ts)?;
    let eoff = ecount.checked_add(r4(k))?;
    let used = eoff.checked_add(r4(k))?;
    let users_tok = used.checked_add(r4(k))?;
    let users_w = users_tok.checked_add(ts)?;
    let misc = users_w.checked_add(ts)?;
    let words = misc.checked_add(4)?;
    Some(SmemLayout {
        scores,
        hn,
        delta,
        zpart,
        z,
        cnt,
        touched,
        sel_idx,
        sel_w,
        sel_sc,
        ecount,
        eoff,
        used,
        users_tok,
        users_w,
        misc,
        words,
    })
}

/// Parts each row of `A` is split into for the shrink, and their length (a multiple of
/// [`SHRINK_GRANULE`]): enough (row, part) items to give every warp one.
pub fn shrink_split(d_model: usize, rank: usize) -> (usize, usize) {
    let max_parts = d_model.div_ceil(SHRINK_GRANULE).max(1);
    let nsplit = WARPS.div_ceil(rank.max(1)).clamp(1, max_parts);
    let chunk = d_model.div_ceil(nsplit).div_ceil(SHRINK_GRANULE).max(1) * SHRINK_GRANULE;
    (nsplit, chunk)
}

/// A launch of the fused kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaPlan {
    /// Tokens per tile (the last tile may be shorter).
    pub tile: usize,
    /// Number of tiles, `ceil(T / tile)` (`grid.x`).
    pub tiles: usize,
    /// CTAs sharing one tile's experts (`grid.y`).
    pub splits: usize,
    /// Parts per row of `A` in the shrink.
    pub nsplit: usize,
    /// Length of one part.
    pub chunk: usize,
    /// Shared-memory layout; `layout.bytes()` is the launch's dynamic shared memory.
    pub layout: SmemLayout,
}

impl CudaPlan {
    /// Grid dimensions.
    pub fn grid(&self) -> (u32, u32, u32) {
        (self.tiles as u32, self.splits as u32, 1)
    }

    /// Dynamic shared memory per CTA, bytes.
    pub fn smem_bytes(&self) -> usize {
        self.layout.bytes()
    }
}

/// Bytes of one expert's weights at one layer (`A` and `B`, fp16).
pub fn expert_bytes(rank: usize, d_model: usize) -> usize {
    4usize.saturating_mul(rank).saturating_mul(d_model)
}

/// Chooses tile, splits and layout for a call (`T ≥ 1`, `K ≥ 1` and `slots ≥ 1`; calls
/// without tokens or candidates are not launched).
pub fn plan(p: &CudaPlanInput, limits: &DeviceLimits) -> Result<CudaPlan, PlanError> {
    let (nsplit, chunk) = shrink_split(p.d_model, p.rank);
    for (what, v) in [
        ("tokens × d_model", p.tokens.checked_mul(p.d_model)),
        ("tokens × candidates", p.tokens.checked_mul(p.candidates)),
        ("tokens × slots", p.tokens.checked_mul(p.slots)),
        ("rank × d_model", p.rank.checked_mul(p.d_model)),
    ] {
        if v.is_none_or(|v| v > i32::MAX as usize) {
            return Err(PlanError::TooLarge(what));
        }
    }
    let fits = |tile: usize, budget: usize| {
        smem_layout(tile, p, nsplit).filter(|l| l.bytes() <= budget && l.words <= i32::MAX as usize)
    };
    let shared = limits.smem_per_sm / CTAS_PER_SM;
    let two_per_sm = shared.saturating_sub(1024).min(limits.smem_per_block_optin);
    // Two CTAs per SM if a one-token tile allows it, else whatever one CTA may have.
    let budget = if fits(1, two_per_sm).is_some() {
        two_per_sm
    } else {
        limits.smem_per_block_optin
    };
    let Some(one) = fits(1, budget) else {
        return Err(PlanError::SharedMemory {
            need: smem_layout(1, p, nsplit).map_or(usize::MAX, |l| l.bytes()),
            have: limits.smem_per_block_optin,
            d_model: p.d_model,
            candidates: p.candidates,
        });
    };
    let cap = p.tokens.clamp(1, MAX_TILE);
    let (mut tile, mut layout) = (1, one);
    for t in 2..=cap {
        match fits(t, budget) {
            Some(l) => (tile, layout) = (t, l),
            None => break,
        }
    }
    let tiles = p.tokens.max(1).div_ceil(tile);
    // Balance: as many tiles as a full tile would give, spread evenly.
    let tile = p.tokens.max(1).div_ceil(tiles);
    let layout = fits(tile, budget).unwrap_or(layout);

    // Splits: fill the GPU when tiles are few, never more than the tile's experts, and
    // each split must carry enough weight bytes to pay for re-reading the tile's scores.
    let experts = tile.saturating_mul(p.slots).min(p.candidates).max(1);
    let target = limits.sm_count.max(1) * CTAS_PER_SM;
    let mut splits = target.div_ceil(tiles).clamp(1, experts);
    let score_bytes = tile.saturating_mul(p.candidates).saturating_mul(4).max(1);
    let weight_bytes = experts.saturating_mul(expert_bytes(p.rank, p.d_model));
    let by_scores = (weight_bytes.saturating_mul(SCORE_COST_RATIO) / score_bytes).max(1);
    splits = splits.min(by_scores).min(u16::MAX as usize);
    Ok(CudaPlan {
        tile,
        tiles,
        splits,
        nsplit,
        chunk,
        layout,
    })
}

/// The kernel's parameter block, passed by value (`struct Params` in
/// `kernels/fused_apply.cu`; same fields, same order, all 4 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KernelParams {
    /// Tokens T.
    pub tokens: i32,
    /// Model width.
    pub d_model: i32,
    /// Candidates K.
    pub candidates: i32,
    /// Adapter rank.
    pub rank: i32,
    /// Selection slots per token.
    pub slots: i32,
    /// Tokens per tile.
    pub tile: i32,
    /// Parts per row of `A`.
    pub nsplit: i32,
    /// Length of a part.
    pub chunk: i32,
    /// Threshold τ.
    pub tau: f32,
    /// Softmax temperature.
    pub temperature: f32,
    /// Shared-memory offsets in words (see [`SmemLayout`]).
    pub off_scores: i32,
    #[allow(missing_docs)]
    pub off_hn: i32,
    #[allow(missing_docs)]
    pub off_delta: i32,
    #[allow(missing_docs)]
    pub off_zpart: i32,
    #[allow(missing_docs)]
    pub off_z: i32,
    #[allow(missing_docs)]
    pub off_cnt: i32,
    #[allow(missing_docs)]
    pub off_touched: i32,
    #[allow(missing_docs)]
    pub off_sel_idx: i32,
    #[allow(missing_docs)]
    pub off_sel_w: i32,
    #[allow(missing_docs)]
    pub off_sel_sc: i32,
    #[allow(missing_docs)]
    pub off_ecount: i32,
    #[allow(missing_docs)]
    pub off_eoff: i32,
    #[allow(missing_docs)]
    pub off_used: i32,
    #[allow(missing_docs)]
    pub off_users_tok: i32,
    #[allow(missing_docs)]
    pub off_users_w: i32,
    #[allow(missing_docs)]
    pub off_misc: i32,
}

/// Field names of [`KernelParams`] in order (checked against the `.cu` in a test; only
/// the tests read it now that the module is private).
#[cfg_attr(not(test), allow(dead_code))]
pub const KERNEL_PARAM_FIELDS: [&str; 26] = [
    "tokens",
    "d_model",
    "candidates",
    "rank",
    "slots",
    "tile",
    "nsplit",
    "chunk",
    "tau",
    "temperature",
    "off_scores",
    "off_hn",
    "off_delta",
    "off_zpart",
    "off_z",
    "off_cnt",
    "off_touched",
    "off_sel_idx",
    "off_sel_w",
    "off_sel_sc",
    "off_ecount",
    "off_eoff",
    "off_used",
    "off_users_tok",
    "off_users_w",
    "off_misc",
];

impl CudaPlan {
    /// The parameter block for this plan. Sizes were checked to fit `i32` by [`plan`].
    pub fn params(&self, p: &CudaPlanInput, tau: f32, temperature: f32) -> KernelParams {
        let i = |v: usize| i32::try_from(v).unwrap_or(i32::MAX);
        let l = &self.layout;
        KernelParams {
            tokens: i(p.tokens),
            d_model: i(p.d_model),
            candidates: i(p.candidates),
            rank: i(p.rank),
            slots: i(p.slots),
            tile: i(self.tile),
            nsplit: i(self.nsplit),
            chunk: i(self.chunk),
            tau,
            temperature,
            off_scores: i(l.scores),
            off_hn: i(l.hn),
            off_delta: i(l.delta),
            off_zpart: i(l.zpart),
            off_z: i(l.z),
            off_cnt: i(l.cnt),
            off_touched: i(l.touched),
            off_sel_idx: i(l.sel_idx),
            off_sel_w: i(l.sel_w),
            off_sel_sc: i(l.sel_sc),
            off_ecount: i(l.ecount),
            off_eoff: i(l.eoff),
            off_used: i(l.used),
            off_users_tok: i(l.users_tok),
            off_users_w: i(l.users_w),
            off_misc: i(l.misc),
        }
    }
}

impl fmt::Display for CudaPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tile {} × {} tiles, {} split(s), shrink {}×{}, {} B smem",
            self.tile,
            self.tiles,
            self.splits,
            self.nsplit,
            self.chunk,
            self.smem_bytes()
        )
    }
}

/// The `.cu` source of the fused kernel, as compiled at run time.
pub const FUSED_APPLY_SRC: &str = include_str!("../../kernels/fused_apply.cu");

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn input(tokens: usize, d: usize, k: usize, rank: usize, slots: usize) -> CudaPlanInput {
        CudaPlanInput {
            tokens,
            d_model: d,
            candidates: k,
            rank,
            slots,
        }
    }

    fn regions(
        l: &SmemLayout,
        tile: usize,
        p: &CudaPlanInput,
        nsplit: usize,
    ) -> Vec<(usize, usize)> {
        let ts = tile * p.slots;
        vec![
            (l.zpart, nsplit * tile * p.rank),
            (l.z, tile * p.rank),
            (l.cnt, tile),
            (l.touched, tile),
            (l.sel_idx, ts),
            (l.sel_w, ts),
            (l.sel_sc, ts),
            (l.ecount, p.candidates),
            (l.eoff, p.candidates),
            (l.used, p.candidates),
            (l.users_tok, ts),
            (l.users_w, ts),
            (l.misc, 1),
        ]
    }

    #[test]
    fn layout_regions_are_aligned_and_disjoint() {
        for (tile, d, k, rank, slots) in [
            (1usize, 576usize, 64usize, 8usize, 8usize),
            (3, 7, 5, 3, 2),
            (16, 577, 24, 64, 9),
            (16, 16, 600, 8, 9),
            (5, 1, 1, 1, 1),
        ] {
            let p = CudaPlanInput {
                tokens: 100,
                d_model: d,
                candidates: k,
                rank,
                slots,
            };
            let (nsplit, _) = shrink_split(d, rank);
            let l = smem_layout(tile, &p, nsplit).unwrap();
            // Gate phase: scores; apply phase: hn then delta; both end before the
            // persistent regions.
            assert_eq!((l.scores, l.hn), (0, 0));
            assert!(l.delta >= tile * d);
            assert!(l.zpart >= l.scores + tile * k && l.zpart >= l.delta + tile * d);
            let mut rs = regions(&l, tile, &p, nsplit);
            for (off, _) in &rs {
                assert_eq!(off % 4, 0, "{l:?}");
            }
            for off in [l.scores, l.delta] {
                assert_eq!(off % 4, 0);
            }
            rs.sort();
            for w in rs.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "overlap {w:?} in {l:?}");
            }
            let last = rs.last().unwrap();
            assert!(last.0 + last.1 <= l.words);
        }
    }

    /// The same offsets are asserted by the C++ port of this layout in
    /// tools/kernel-emu/main.cpp, which runs the kernel on the CPU.
    #[test]
    fn layout_matches_the_emulator_fixture() {
        let offsets = |l: SmemLayout| {
            [
                l.scores,
                l.hn,
                l.delta,
                l.zpart,
                l.z,
                l.cnt,
                l.touched,
                l.sel_idx,
                l.sel_w,
                l.sel_sc,
                l.ecount,
                l.eoff,
                l.used,
                l.users_tok,
                l.users_w,
                l.misc,
                l.words,
            ]
        };
        let p = |d, k, rank, slots| CudaPlanInput {
            tokens: 100,
            d_model: d,
            candidates: k,
            rank,
            slots,
        };
        let a = p(200, 24, 8, 4);
        assert_eq!(shrink_split(200, 8).0, 1);
        assert_eq!(
            offsets(smem_layout(5, &a, 1).unwrap()),
            [
                0, 0, 1000, 2000, 2040, 2080, 2088, 2096, 2116, 2136, 2156, 2180, 2204, 2228, 2248,
                2268, 2272
            ]
        );
        let b = p(301, 37, 1, 9);
        assert_eq!(shrink_split(301, 1), (3, 128));
        assert_eq!(
            offsets(smem_layout(3, &b, 3).unwrap()),
            [
                0, 0, 904, 1808, 1820, 1824, 1828, 1832, 1860, 1888, 1916, 1956, 1996, 2036, 2064,
                2092, 2096
            ]
        );
    }

    #[test]
    fn shrink_split_keeps_warps_busy() {
        assert_eq!(shrink_split(576, 8), (1, 640));
        assert_eq!(shrink_split(4096, 16), (1, 4096));
        assert_eq!(shrink_split(4096, 1), (8, 512));
        assert_eq!(shrink_split(4096, 2), (4, 1024));
        assert_eq!(shrink_split(7, 1), (1, 128));
        assert_eq!(shrink_split(300, 1), (3, 128));
        for d in [1usize, 7, 128, 129, 577, 4096] {
            for r in [1usize, 3, 8, 64] {
                let (n, c) = shrink_split(d, r);
                assert!(n * c >= d, "{d} {r}");
                assert_eq!(c % SHRINK_GRANULE, 0);
                assert!((n - 1) * c < d.max(1), "{d} {r}: empty part");
            }
        }
    }

    #[test]
    fn decode_is_one_tile_split_over_its_experts() {
        let p = plan(&input(1, 576, 64, 8, 8), &DeviceLimits::H100).unwrap();
        assert_eq!((p.tile, p.tiles), (1, 1));
        // One split per expert: 8 experts of 18 KiB spread far more than 256 B of scores.
        assert_eq!(p.splits, 8);
        let p = plan(&input(1, 4096, 256, 16, 32), &DeviceLimits::H100).unwrap();
        assert_eq!((p.tile, p.tiles), (1, 1));
        assert_eq!(p.splits, 32);
        assert_eq!(p.grid(), (1, 32, 1));
        // Tiny experts (rank 1, d 8: 32 B each) do not pay for re-reading 1 KiB of scores:
        // 4 × 8 experts × 32 B / 1 KiB → 1 split.
        let p = plan(&input(1, 8, 256, 1, 8), &DeviceLimits::H100).unwrap();
        assert_eq!(p.splits, 1);
    }

    #[test]
    fn prompts_fill_tiles_within_shared_memory() {
        let lim = DeviceLimits::H100;
        let budget = lim.smem_per_sm / 2 - 1024;
        let p = plan(&input(2048, 576, 64, 8, 8), &lim).unwrap();
        assert_eq!(p.tile, MAX_TILE);
        assert_eq!(p.tiles, 128);
        assert!(p.smem_bytes() <= budget);
        // Wide model: the tile is bounded by shared memory (32 KiB of f32 rows a token).
        let p = plan(&input(2048, 4096, 256, 16, 32), &lim).unwrap();
        assert!(p.tile >= 2 && p.tile < MAX_TILE, "{p}");
        assert!(p.smem_bytes() <= budget);
        assert!(
            smem_layout(p.tile + 1, &input(2048, 4096, 256, 16, 32), p.nsplit)
                .unwrap()
                .bytes()
                > budget
                || p.tiles * p.tile >= 2048
        );
        // Tiles are balanced: the last one is not a sliver.
        let p = plan(&input(17, 64, 8, 8, 2), &lim).unwrap();
        assert_eq!((p.tile, p.tiles), (9, 2));
    }

    #[test]
    fn every_token_is_covered_once() {
        for t in [1usize, 2, 15, 16, 17, 64, 300, 2048, 4096] {
            for d in [1usize, 7, 576, 4096] {
                for lim in [DeviceLimits::H100, DeviceLimits::A100] {
                    let p = plan(&input(t, d, 32, 8, 4), &lim).unwrap();
                    assert!(p.tile >= 1 && p.tile <= MAX_TILE);
                    assert!(p.tiles * p.tile >= t, "{t} {d} {p}");
                    assert!((p.tiles - 1) * p.tile < t, "{t} {d} {p}");
                    assert!(p.splits >= 1 && p.splits <= 32 * 4);
                    assert!(p.smem_bytes() <= lim.smem_per_block_optin);
                }
            }
        }
    }

    #[test]
    fn too_wide_for_shared_memory_is_a_typed_error() {
        let e = plan(&input(1, 40_000, 64, 8, 8), &DeviceLimits::A100).unwrap_err();
        assert!(matches!(e, PlanError::SharedMemory { .. }), "{e}");
        assert!(e.to_string().contains("d_model 40000"), "{e}");
        // Falls back to one CTA per SM before giving up.
        let p = plan(&input(1, 16_000, 64, 8, 8), &DeviceLimits::H100).unwrap();
        assert!(p.smem_bytes() > DeviceLimits::H100.smem_per_sm / 2);
        let e = plan(&input(usize::MAX / 2, 8, 4, 2, 2), &DeviceLimits::H100).unwrap_err();
        assert!(matches!(e, PlanError::TooLarge(_)), "{e}");
    }

    #[test]
    fn params_match_the_kernel_struct() {
        assert_eq!(
            std::mem::size_of::<KernelParams>(),
            4 * KERNEL_PARAM_FIELDS.len()
        );
        let start = FUSED_APPLY_SRC.find("struct Params {").unwrap();
        let body = &FUSED_APPLY_SRC[start..];
        let body = &body[..body.find("};").unwrap()];
        let names: Vec<&str> = body
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| l.starts_with("int ") || l.starts_with("float "))
            .map(|l| {
                l.trim_end_matches(';')
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(names, KERNEL_PARAM_FIELDS);
        // The kernel's compile-time constants agree with the plan's.
        assert!(FUSED_APPLY_SRC.contains(&format!("#define MOME_BLOCK {BLOCK}")));
        assert!(FUSED_APPLY_SRC.contains(&format!("#define MOME_MAX_TILE {MAX_TILE}")));
        assert!(FUSED_APPLY_SRC.contains(&format!("__launch_bounds__(MOME_BLOCK, {CTAS_PER_SM})")));
        let pi = input(10, 576, 64, 8, 8);
        let p = plan(&pi, &DeviceLimits::H100).unwrap();
        let kp = p.params(&pi, 0.25, 0.5);
        assert_eq!(
            (kp.tokens, kp.tile, kp.off_misc),
            (10, 10, p.layout.misc as i32)
        );
        assert_eq!((kp.tau, kp.temperature), (0.25, 0.5));
    }
}
