//! Stage-2 selection: which of the K retrieved candidates each token uses, and how much.
//!
//! # Definitions
//!
//! For token `t` with query `q_t` (`key_dim`) and candidate `j` with key `key_j`:
//!
//! * `score_tj = cos(q_t, key_j) − penalty_j`. Both vectors are normalised first; a
//!   zero-norm query or key gives cosine 0, never NaN. `penalty_j` is the optional
//!   usage-frequency penalty (none by default).
//! * Candidates with `score_tj ≤ τ` abstain (strictly greater passes). Note that with
//!   τ < 0 a zero query (cosine 0 everywhere) selects candidates.
//! * Of the rest, the `top_k` highest scores are kept, ties going to the lower
//!   candidate index.
//! * `w_tj = softmax(score / temperature)` over the kept ones only (computed as
//!   `exp((s − s_max)/T)`, so tiny temperatures give a one-hot result, not NaN).
//! * A token with no candidate above τ has no entry: its hidden state must be left
//!   exactly as it was by the apply stage.
//!
//! [`select`] is the pure, portable form of this stage on plain slices. The fused
//! CPU kernel in [`crate::kernels`] runs the same threshold / top-k / softmax code
//! (from [`math`]) per token block, with its cosines from SIMD dot products (equal
//! up to float rounding), and the candle reference re-derives everything from
//! tensor ops; the parity tests check all three against each other.

mod hook;
pub mod math;
mod retrieval;

pub use hook::ExpertHook;
pub use retrieval::{Candidates, Selection, StoreAdapters};

use std::fmt;

/// Bad selection parameters or inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// `top_k` was 0.
    #[error("top_k must be at least 1, got 0")]
    ZeroTopK,
    /// τ outside [-1, 1] (or NaN).
    #[error("threshold tau must lie in [-1, 1], got {0}")]
    TauOutOfRange(f32),
    /// Temperature not a finite positive number.
    #[error("temperature must be finite and > 0, got {0}")]
    BadTemperature(f32),
    /// The penalty vector's length does not match the number of candidates.
    #[error("penalty has {got} entries but there are {candidates} candidates")]
    PenaltyLength {
        /// Entries in the penalty vector.
        got: usize,
        /// Number of candidate keys.
        candidates: usize,
    },
    /// A penalty entry is NaN or infinite.
    #[error("penalty of candidate {candidate} is not finite ({value})")]
    NonFinitePenalty {
        /// Candidate index.
        candidate: usize,
        /// The offending value.
        value: f32,
    },
    /// A query holds a NaN or an infinity.
    #[error("query of token {token} contains NaN or infinity")]
    NonFiniteQuery {
        /// Token (row) index.
        token: usize,
    },
    /// A candidate key holds a NaN or an infinity.
    #[error("key of candidate {candidate} contains NaN or infinity")]
    NonFiniteKey {
        /// Candidate (row) index.
        candidate: usize,
    },
    /// `key_dim` was 0.
    #[error("key_dim must be at least 1")]
    ZeroKeyDim,
    /// A flat buffer's length is not a multiple of `key_dim`.
    #[error("{what} has {len} values, not a multiple of key_dim {key_dim}")]
    RaggedRows {
        /// Which buffer ("queries" or "keys").
        what: &'static str,
        /// Its length.
        len: usize,
        /// The row length it should be a multiple of.
        key_dim: usize,
    },
}

/// Parameters of stage-2 selection.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionParams {
    /// Abstain threshold τ in [-1, 1]; a score must be strictly greater to pass.
    pub tau: f32,
    /// Most experts a token may use (k ≥ 1). More than K is allowed and means "all
    /// that pass".
    pub top_k: usize,
    /// Softmax temperature (finite, > 0).
    pub temperature: f32,
    /// Optional per-candidate penalty (length K) subtracted from the cosine score
    /// before thresholding, ranking and the softmax.
    pub penalty: Option<Vec<f32>>,
}

impl SelectionParams {
    /// Parameters without a usage penalty.
    pub fn new(tau: f32, top_k: usize, temperature: f32) -> Self {
        Self {
            tau,
            top_k,
            temperature,
            penalty: None,
        }
    }

    /// Adds a per-candidate usage penalty.
    pub fn with_penalty(mut self, penalty: Vec<f32>) -> Self {
        self.penalty = Some(penalty);
        self
    }

    /// Checks the parameters for a call with `candidates` candidate keys.
    pub fn validate(&self, candidates: usize) -> Result<(), SelectError> {
        if self.top_k == 0 {
            return Err(SelectError::ZeroTopK);
        }
        if !(-1.0..=1.0).contains(&self.tau) {
            return Err(SelectError::TauOutOfRange(self.tau));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(SelectError::BadTemperature(self.temperature));
        }
        if let Some(p) = &self.penalty {
            if p.len() != candidates {
                return Err(SelectError::PenaltyLength {
                    got: p.len(),
                    candidates,
                });
            }
            if let Some((candidate, &value)) = p.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(SelectError::NonFinitePenalty { candidate, value });
            }
        }
        Ok(())
    }

    /// Most entries a token can have with `candidates` candidates: `min(top_k, K)`.
    pub fn slots(&self, candidates: usize) -> usize {
        self.top_k.min(candidates)
    }
}

/// One expert chosen for a token.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Selected {
    /// Index into this call's candidate list.
    pub candidate: u32,
    /// Score after the penalty (cosine − penalty).
    pub score: f32,
    /// Softmax weight; a token's weights sum to 1.
    pub weight: f32,
}

/// Per-token selection result: for every token, its chosen experts, best first.
///
/// Stored with a fixed stride of `min(top_k, K)` slots per token so that it can be
/// filled in parallel by token blocks and reused across calls without allocating.
#[derive(Clone, Default, PartialEq)]
pub struct TokenAssignments {
    stride: usize,
    counts: Vec<u32>,
    slots: Vec<Selected>,
}

impl TokenAssignments {
    /// An empty result (0 tokens).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.counts.len()
    }

    /// Slots per token (`min(top_k, K)`).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The experts chosen for token `t`, best first; `None` if `t` is out of range.
    /// An empty slice means every candidate abstained.
    pub fn get(&self, t: usize) -> Option<&[Selected]> {
        let n = *self.counts.get(t)? as usize;
        let start = t * self.stride;
        self.slots.get(start..start + n)
    }

    /// Iterates over the tokens' selections in order.
    pub fn iter(&self) -> impl Iterator<Item = &[Selected]> + '_ {
        (0..self.tokens()).filter_map(move |t| self.get(t))
    }

    /// Total number of (token, expert) pairs.
    pub fn total(&self) -> usize {
        self.counts.iter().map(|&c| c as usize).sum()
    }

    /// Number of tokens with at least one expert.
    pub fn active_tokens(&self) -> usize {
        self.counts.iter().filter(|&&c| c > 0).count()
    }

    /// Resizes for `tokens` tokens of `stride` slots, all empty; keeps the capacity.
    pub(crate) fn reset(&mut self, tokens: usize, stride: usize) {
        self.stride = stride;
        self.counts.clear();
        self.counts.resize(tokens, 0);
        self.slots.clear();
        self.slots.resize(tokens * stride, Selected::default());
    }

    /// Mutable views of consecutive blocks of `block` tokens: (counts, slots) each.
    pub(crate) fn blocks_mut(
        &mut self,
        block: usize,
    ) -> impl Iterator<Item = (&mut [u32], &mut [Selected])> + '_ {
        let block = block.max(1);
        let slot_block = (block * self.stride).max(1);
        // With stride 0 the slot chunks run out first; pad with empty slices so every
        // token block still gets its counts.
        let slots = self
            .slots
            .chunks_mut(slot_block)
            .chain(std::iter::repeat_with(|| &mut [][..]));
        self.counts.chunks_mut(block).zip(slots)
    }

    /// Counts and slots of the whole result, mutably.
    pub(crate) fn parts_mut(&mut self) -> (&mut [u32], &mut [Selected]) {
        (&mut self.counts, &mut self.slots)
    }
}

impl fmt::Debug for TokenAssignments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Runs stage-2 selection on plain row-major f32 buffers.
///
/// `queries` is `T × key_dim`, `keys` is `K × key_dim`. This is the pure,
/// single-threaded form of what the fused operator does internally.
pub fn select(
    queries: &[f32],
    keys: &[f32],
    key_dim: usize,
    params: &SelectionParams,
) -> Result<TokenAssignments, SelectError> {
    let mut out = TokenAssignments::new();
    select_into(queries, keys, key_dim, params, &mut out)?;
    Ok(out)
}

/// [`select`] into an existing result, reusing its buffers.
pub fn select_into(
    queries: &[f32],
    keys: &[f32],
    key_dim: usize,
    params: &SelectionParams,
    out: &mut TokenAssignments,
) -> Result<(), SelectError> {
    if key_dim == 0 {
        return Err(SelectError::ZeroKeyDim);
    }
    for (what, buf) in [("queries", queries), ("keys", keys)] {
        if buf.len() % key_dim != 0 {
            return Err(SelectError::RaggedRows {
                what,
                len: buf.len(),
                key_dim,
            });
        }
    }
    let candidates = keys.len() / key_dim;
    let tokens = queries.len() / key_dim;
    params.validate(candidates)?;
    let mut q_inv = Vec::with_capacity(tokens);
    for (token, q) in queries.chunks_exact(key_dim).enumerate() {
        q_inv.push(math::inv_norm::<false>(q, None).ok_or(SelectError::NonFiniteQuery { token })?);
    }
    let mut scores = vec![0.0f32; tokens * candidates];
    math::cosine_block::<false>(queries, &q_inv, keys, key_dim, &mut scores)?;
    let stride = params.slots(candidates);
    out.reset(tokens, stride);
    let (counts, slots) = out.parts_mut();
    for (t, count) in counts.iter_mut().enumerate() {
        let row = &mut scores[t * candidates..(t + 1) * candidates];
        *count = math::finish_token(row, params, &mut slots[t * stride..(t + 1) * stride]) as u32;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn params_validation_names_the_problem() {
        let ok = SelectionParams::new(0.5, 4, 1.0);
        assert_eq!(ok.validate(3), Ok(()));
        assert_eq!(
            SelectionParams::new(0.5, 0, 1.0).validate(3),
            Err(SelectError::ZeroTopK)
        );
        assert!(matches!(
            SelectionParams::new(1.5, 1, 1.0).validate(3),
            Err(SelectError::TauOutOfRange(_))
        ));
        assert!(matches!(
            SelectionParams::new(f32::NAN, 1, 1.0).validate(3),
            Err(SelectError::TauOutOfRange(_))
        ));
        for t in [0.0, -1.0, f32::INFINITY, f32::NAN] {
            assert!(matches!(
                SelectionParams::new(0.0, 1, t).validate(3),
                Err(SelectError::BadTemperature(_))
            ));
        }
        assert_eq!(
            ok.clone().with_penalty(vec![0.0; 2]).validate(3),
            Err(SelectError::PenaltyLength {
                got: 2,
                candidates: 3
            })
        );
        assert!(matches!(
            ok.with_penalty(vec![0.0, f32::NAN, 0.0]).validate(3),
            Err(SelectError::NonFinitePenalty { candidate: 1, .. })
        ));
    }

    #[test]
    fn select_picks_thresholded_top_k_with_softmax() {
        // Keys along the axes; the query leans to axis 0, then 1.
        let keys = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let q = [0.8, 0.6, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0];
        let a = select(&q, &keys, 3, &SelectionParams::new(0.1, 2, 1.0)).unwrap();
        assert_eq!(a.tokens(), 3);
        let t0 = a.get(0).unwrap();
        assert_eq!(t0.iter().map(|s| s.candidate).collect::<Vec<_>>(), [0, 1]);
        let e = (0.8f32 - 0.6).exp();
        assert!((t0[0].weight - e / (1.0 + e)).abs() < 1e-6);
        // Zero query: cosine 0 ≤ τ, no NaN.
        assert_eq!(a.get(1).unwrap(), &[]);
        // Negative alignment abstains.
        assert_eq!(a.get(2).unwrap(), &[]);
        assert_eq!(a.total(), 2);
        assert_eq!(a.active_tokens(), 1);
    }

    #[test]
    fn penalty_is_subtracted_before_ranking() {
        let keys = [1.0, 0.0, 0.0, 1.0];
        let q = [0.8, 0.6];
        let p = SelectionParams::new(0.0, 1, 1.0).with_penalty(vec![0.5, 0.0]);
        let a = select(&q, &keys, 2, &p).unwrap();
        assert_eq!(a.get(0).unwrap()[0].candidate, 1);
        assert!((a.get(0).unwrap()[0].score - 0.6).abs() < 1e-6);
    }

    #[test]
    fn nan_query_and_key_are_typed_errors() {
        let p = SelectionParams::new(0.0, 1, 1.0);
        assert_eq!(
            select(&[1.0, 0.0, f32::NAN, 0.0], &[1.0, 0.0], 2, &p),
            Err(SelectError::NonFiniteQuery { token: 1 })
        );
        assert_eq!(
            select(&[1.0, 0.0], &[1.0, 0.0, 0.0, f32::INFINITY], 2, &p),
            Err(SelectError::NonFiniteKey { candidate: 1 })
        );
        assert_eq!(select(&[1.0], &[1.0], 0, &p), Err(SelectError::ZeroKeyDim));
        assert!(matches!(
            select(&[1.0, 2.0, 3.0], &[1.0, 0.0], 2, &p),
            Err(SelectError::RaggedRows {
                what: "queries",
                ..
            })
        ));
    }

    #[test]
    fn no_candidates_gives_empty_rows() {
        let a = select(&[1.0, 0.0], &[], 2, &SelectionParams::new(0.0, 3, 1.0)).unwrap();
        assert_eq!(a.tokens(), 1);
        assert_eq!(a.stride(), 0);
        assert_eq!(a.get(0).unwrap(), &[]);
    }
}
