//! How the CPU kernel splits a call: token blocks and threads. Pure functions.
//!
//! Two ways to use several cores:
//!
//! * **Token blocks** (long prompts): each block selects for its tokens, then streams
//!   the weights of every expert its tokens use *once* and applies them to all of
//!   them. Blocks run in parallel; an expert used in two blocks is read twice, so
//!   blocks are as large as the per-block f32 working set (`h̃` rows + delta rows)
//!   allows while staying in L2.
//! * **Expert groups** (short prompts, one block): the used experts are split among
//!   threads, each accumulating a private delta, summed at the end. Every weight is
//!   still read once.
//!
//! Below [`PARALLEL_MIN_MACS`] of work a call stays on the calling thread: waking
//! the pool costs more than it saves.

/// Per-block f32 working set budget (`h̃` and delta rows), bytes. Half of a typical
/// 1 MiB L2 so that the converted weight rows and the output rows fit beside it.
pub const BLOCK_BYTES: usize = 512 * 1024;
/// Largest token block. Beyond this, weight reuse is already high and larger blocks
/// only hurt load balance.
pub const MAX_BLOCK: usize = 128;
/// Smallest token block (unless the call has fewer tokens).
pub const MIN_BLOCK: usize = 4;
/// Work (multiply-adds) below which the call runs single-threaded. Waking the
/// pool costs ~10–20 µs on a busy machine; below this the gain is smaller.
pub const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Fewest experts per thread worth splitting a single-block call for: with fewer,
/// one thread's weight stream is short and the wake-up dominates (measured: 4
/// experts of d_model 2048 on two threads were slower than on one).
pub const MIN_EXPERTS_PER_GROUP: usize = 4;

/// Sizes the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInput {
    /// Tokens T.
    pub tokens: usize,
    /// Model width.
    pub d_model: usize,
    /// Adapter rank.
    pub rank: usize,
    /// Candidates K.
    pub candidates: usize,
    /// Most experts per token, `min(top_k, K)`.
    pub slots: usize,
    /// Threads available.
    pub threads: usize,
}

/// Token blocking for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPlan {
    /// Tokens per block (the last block may be shorter).
    pub block: usize,
    /// Number of blocks, `ceil(T / block)`.
    pub blocks: usize,
    /// Whether blocks run on the thread pool.
    pub parallel: bool,
}

/// Upper bound of the call's multiply-adds: the gate (one pass over each token's
/// scores) plus shrink and expand.
pub fn work_macs(p: &PlanInput) -> usize {
    let score = p.tokens.saturating_mul(p.candidates);
    let apply = p
        .tokens
        .saturating_mul(p.slots)
        .saturating_mul(2)
        .saturating_mul(p.rank)
        .saturating_mul(p.d_model);
    score.saturating_add(apply)
}

/// Largest block whose f32 `h̃` and delta rows fit [`BLOCK_BYTES`].
pub fn max_block(d_model: usize) -> usize {
    let per_token = 2 * 4 * d_model.max(1);
    (BLOCK_BYTES / per_token).clamp(MIN_BLOCK, MAX_BLOCK)
}

/// Chooses the token blocking.
pub fn plan_tokens(p: &PlanInput) -> TokenPlan {
    let threads = p.threads.max(1);
    if p.tokens == 0 {
        return TokenPlan {
            block: 1,
            blocks: 0,
            parallel: false,
        };
    }
    let parallel = threads > 1 && work_macs(p) >= PARALLEL_MIN_MACS;
    let cap = max_block(p.d_model);
    if p.tokens <= cap {
        // One block; `plan_expert_groups` decides about threads once the selection
        // is known.
        return TokenPlan {
            block: p.tokens,
            blocks: 1,
            parallel: false,
        };
    }
    let mut blocks = p.tokens.div_ceil(cap);
    if parallel {
        // Whole rounds of blocks per thread, so no thread idles through the last one.
        blocks = blocks.div_ceil(threads) * threads;
        blocks = blocks.min(p.tokens.div_ceil(MIN_BLOCK));
    }
    let block = p.tokens.div_ceil(blocks);
    TokenPlan {
        block,
        blocks: p.tokens.div_ceil(block),
        parallel,
    }
}

/// Number of expert groups (threads) for a single-block call, given the selection:
/// `experts` distinct experts used by `pairs` (token, expert) pairs.
pub fn plan_expert_groups(
    experts: usize,
    pairs: usize,
    d_model: usize,
    rank: usize,
    threads: usize,
) -> usize {
    let threads = threads.max(1).min(experts / MIN_EXPERTS_PER_GROUP);
    if threads <= 1 {
        return 1;
    }
    // Converting each used expert's weights costs about as much as one token's use.
    let macs = pairs
        .saturating_add(experts)
        .saturating_mul(2)
        .saturating_mul(rank)
        .saturating_mul(d_model);
    if macs < PARALLEL_MIN_MACS {
        return 1;
    }
    threads
}

/// Splits `costs` (one per expert, in order) into `groups` contiguous ranges of
/// roughly equal total cost, writing `groups + 1` boundaries into `bounds`.
pub fn split_costs(costs: &[usize], groups: usize, bounds: &mut Vec<usize>) {
    let groups = groups.max(1);
    bounds.clear();
    bounds.push(0);
    let total: usize = costs.iter().sum();
    let mut acc = 0usize;
    let mut g = 1usize;
    for (i, c) in costs.iter().enumerate() {
        acc += c;
        // Close group g once its share of the total is reached.
        while g < groups && acc.saturating_mul(groups) >= total.saturating_mul(g) {
            bounds.push(i + 1);
            g += 1;
        }
    }
    while bounds.len() < groups + 1 {
        bounds.push(costs.len());
    }
    if let Some(last) = bounds.last_mut() {
        *last = costs.len();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn input(tokens: usize, d_model: usize, slots: usize, threads: usize) -> PlanInput {
        PlanInput {
            tokens,
            d_model,
            rank: 8,
            candidates: 64,
            slots,
            threads,
        }
    }

    #[test]
    fn small_calls_are_one_block_on_the_caller() {
        let p = plan_tokens(&input(1, 576, 4, 8));
        assert_eq!(
            p,
            TokenPlan {
                block: 1,
                blocks: 1,
                parallel: false
            }
        );
        let p = plan_tokens(&input(16, 2048, 32, 8));
        assert_eq!((p.blocks, p.block), (1, 16));
        assert_eq!(plan_tokens(&input(0, 576, 4, 8)).blocks, 0);
    }

    #[test]
    fn block_fits_the_l2_budget() {
        assert_eq!(max_block(576), 113);
        assert_eq!(max_block(2048), 32);
        assert_eq!(max_block(1), MAX_BLOCK);
        assert_eq!(max_block(1 << 20), MIN_BLOCK);
        assert_eq!(max_block(0), MAX_BLOCK);
    }

    #[test]
    fn long_prompts_split_evenly_over_threads() {
        let p = plan_tokens(&input(256, 2048, 16, 2));
        assert!(p.parallel);
        assert_eq!(p.blocks % 2, 0);
        assert!(p.block <= max_block(2048));
        assert!(p.block * p.blocks >= 256);
        let p = plan_tokens(&input(256, 576, 4, 2));
        assert_eq!((p.blocks, p.block, p.parallel), (4, 64, true));
        // One thread: fewest blocks that fit.
        let p = plan_tokens(&input(256, 576, 4, 1));
        assert_eq!((p.blocks, p.block, p.parallel), (3, 86, false));
    }

    #[test]
    fn every_token_is_covered_exactly_once() {
        for t in [1usize, 2, 5, 113, 114, 255, 256, 1000, 4097] {
            for threads in [1usize, 2, 3, 16] {
                for d in [8usize, 576, 2048, 8192] {
                    let p = plan_tokens(&input(t, d, 8, threads));
                    assert!(p.block >= 1);
                    assert!(p.blocks * p.block >= t, "{t} {threads} {d} {p:?}");
                    assert!((p.blocks - 1) * p.block < t, "{t} {threads} {d} {p:?}");
                }
            }
        }
    }

    #[test]
    fn expert_groups_only_for_enough_work() {
        // Decode with few experts stays on the caller, however wide they are.
        assert_eq!(plan_expert_groups(4, 4, 576, 8, 2), 1);
        assert_eq!(plan_expert_groups(4, 4, 2048, 8, 2), 1);
        // Enough experts and work: one group per thread, at least 4 experts each.
        assert_eq!(plan_expert_groups(16, 16, 576, 8, 2), 2);
        assert_eq!(plan_expert_groups(32, 32, 2048, 8, 2), 2);
        assert_eq!(plan_expert_groups(32, 32, 2048, 8, 16), 8);
        assert_eq!(plan_expert_groups(12, 300, 2048, 8, 16), 3);
        // Too little work, or one thread.
        assert_eq!(plan_expert_groups(8, 8, 64, 8, 2), 1);
        assert_eq!(plan_expert_groups(32, 32, 2048, 8, 1), 1);
        assert_eq!(plan_expert_groups(1, 1000, 2048, 8, 8), 1);
    }

    #[test]
    fn split_costs_is_balanced_and_complete() {
        let mut b = Vec::new();
        split_costs(&[1, 1, 1, 1], 2, &mut b);
        assert_eq!(b, [0, 2, 4]);
        split_costs(&[10, 1, 1, 1, 1, 1], 2, &mut b);
        assert_eq!(b, [0, 1, 6]);
        split_costs(&[1, 1], 4, &mut b);
        assert_eq!(b.len(), 5);
        assert_eq!((b[0], b[4]), (0, 2));
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
        split_costs(&[], 3, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
    }
}
