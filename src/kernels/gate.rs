//! The gate of the fused operator: from per-token scores of the K candidates to the
//! experts each token uses and their weights.
//!
//! For token `t` and candidate `j` with score `s_tj` (computed by the caller: the
//! selection rule of [`crate::select`] decides what a score is):
//!
//! * `s_tj − penalty_j` (the optional usage-frequency penalty, none by default);
//! * candidates with a score `≤ τ` abstain (strictly greater passes); `−inf` is a valid
//!   score and always abstains;
//! * of the rest, the `top_k` highest are kept, ties going to the lower candidate index;
//! * `w_tj = softmax(score / temperature)` over the kept ones only (computed as
//!   `exp((s − s_max)/T)`, so tiny temperatures give a one-hot result, not NaN);
//! * a token with no candidate above τ has no entry, and the apply stage leaves its
//!   hidden state exactly as it was.
//!
//! [`gate`] is the plain, single-threaded form on slices; the CPU kernel runs the same
//! [`finish_token`] per token block and the candle reference re-derives it from tensor
//! ops; the parity tests compare all three.

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
    /// A score is NaN or +inf (−inf is allowed and means "not a candidate here").
    #[error("score of candidate {candidate} at token {token} is not finite ({value})")]
    NonFiniteScore {
        /// Token (row) index.
        token: usize,
        /// Candidate (column) index.
        candidate: usize,
        /// The offending value.
        value: f32,
    },
    /// A flat score buffer's length is not a multiple of the number of candidates.
    #[error("scores have {len} values, not a multiple of {candidates} candidates")]
    RaggedScores {
        /// Its length.
        len: usize,
        /// The row length it should be a multiple of.
        candidates: usize,
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
    /// Score after the penalty (score − penalty).
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

/// The gate on a plain row-major `T × K` score buffer (the reference form of what the
/// fused operator does per token block).
pub fn gate(
    scores: &[f32],
    candidates: usize,
    params: &SelectionParams,
) -> Result<TokenAssignments, SelectError> {
    let mut out = TokenAssignments::new();
    gate_into(scores, candidates, params, &mut out)?;
    Ok(out)
}

/// [`gate`] into an existing result, reusing its buffers.
pub fn gate_into(
    scores: &[f32],
    candidates: usize,
    params: &SelectionParams,
    out: &mut TokenAssignments,
) -> Result<(), SelectError> {
    let tokens = match candidates {
        0 if scores.is_empty() => 0,
        0 => {
            return Err(SelectError::RaggedScores {
                len: scores.len(),
                candidates,
            })
        }
        k if !scores.len().is_multiple_of(k) => {
            return Err(SelectError::RaggedScores {
                len: scores.len(),
                candidates,
            })
        }
        k => scores.len() / k,
    };
    params.validate(candidates)?;
    check_scores(scores, candidates, 0)?;
    let stride = params.slots(candidates);
    out.reset(tokens, stride);
    let mut row = vec![0f32; candidates];
    let (counts, slots) = out.parts_mut();
    for (t, count) in counts.iter_mut().enumerate() {
        row.copy_from_slice(&scores[t * candidates..(t + 1) * candidates]);
        *count = finish_token(&mut row, params, &mut slots[t * stride..(t + 1) * stride]) as u32;
    }
    Ok(())
}

/// The first NaN or +inf of a `n × candidates` score block whose first row is token
/// `t0`, as a typed error.
pub(crate) fn check_scores(
    scores: &[f32],
    candidates: usize,
    t0: usize,
) -> Result<(), SelectError> {
    match scores
        .iter()
        .position(|s| s.is_nan() || *s == f32::INFINITY)
    {
        None => Ok(()),
        Some(i) => Err(SelectError::NonFiniteScore {
            token: t0 + i / candidates.max(1),
            candidate: i % candidates.max(1),
            value: scores[i],
        }),
    }
}

/// Turns one token's scores (length K) into its selection: subtracts the
/// penalty (in place), keeps the top-k strictly above τ, best first, and writes
/// their softmax weights. Returns how many were written to the front of `out`.
///
/// The parameters must already have been validated for this K
/// ([`SelectionParams::validate`]).
#[inline(always)]
pub(crate) fn finish_token(
    scores: &mut [f32],
    params: &SelectionParams,
    out: &mut [Selected],
) -> usize {
    if let Some(p) = params.penalty.as_deref() {
        for (s, p) in scores.iter_mut().zip(p) {
            *s -= p;
        }
    }
    let n = top_k_into(scores, params.tau, params.top_k.min(out.len()), out);
    softmax_selected(&mut out[..n], params.temperature);
    n
}

/// Top-`k` of the scores strictly above `tau`, best first, ties to the lower index.
///
/// Insertion into a tiny sorted list: k is at most a few dozen, and this touches the
/// scores once without allocating.
#[inline(always)]
pub(crate) fn top_k_into(scores: &[f32], tau: f32, k: usize, out: &mut [Selected]) -> usize {
    let k = k.min(out.len());
    if k == 0 {
        return 0;
    }
    let mut n = 0usize;
    for (j, &s) in scores.iter().enumerate() {
        // NaN cannot occur after validation; dropping it keeps the order total.
        if s.is_nan() || s <= tau {
            continue;
        }
        if n == k && s <= out[n - 1].score {
            continue;
        }
        // Later candidates go after earlier ones with an equal score.
        let mut pos = if n < k { n } else { k - 1 };
        while pos > 0 && out[pos - 1].score < s {
            if pos < k {
                out[pos] = out[pos - 1];
            }
            pos -= 1;
        }
        out[pos] = Selected {
            candidate: j as u32,
            score: s,
            weight: 0.0,
        };
        if n < k {
            n += 1;
        }
    }
    n
}

/// Softmax of `score / temperature` over `sel` (best first), written into `weight`.
///
/// Computed as `exp((s - s_max) / T)`: the shift comes before the division so that a
/// tiny temperature gives a one-hot result instead of `inf - inf = NaN`.
#[inline(always)]
pub(crate) fn softmax_selected(sel: &mut [Selected], temperature: f32) {
    let Some(first) = sel.first() else {
        return;
    };
    let max = first.score;
    let mut sum = 0.0f32;
    for s in sel.iter_mut() {
        s.weight = ((s.score - max) / temperature).exp();
        sum += s.weight;
    }
    // sum ≥ 1 because the best entry contributes exp(0).
    for s in sel.iter_mut() {
        s.weight /= sum;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sel(scores: &[f32], tau: f32, k: usize) -> Vec<(u32, f32)> {
        let mut out = vec![Selected::default(); k];
        let n = top_k_into(scores, tau, k, &mut out);
        out[..n].iter().map(|s| (s.candidate, s.score)).collect()
    }

    #[test]
    fn top_k_threshold_is_strict_and_ties_go_to_lower_index() {
        assert_eq!(
            sel(&[0.5, 0.2, 0.5, 0.9], 0.2, 3),
            vec![(3, 0.9), (0, 0.5), (2, 0.5)]
        );
        assert_eq!(sel(&[0.5, 0.5, 0.5], 0.0, 2), vec![(0, 0.5), (1, 0.5)]);
        assert_eq!(sel(&[0.1, 0.1], 0.1, 4), vec![]);
        assert_eq!(sel(&[0.3, 0.2], 0.0, 8), vec![(0, 0.3), (1, 0.2)]);
        assert_eq!(
            sel(&[0.1, 0.2, 0.3, 0.4], -1.0, 2),
            vec![(3, 0.4), (2, 0.3)]
        );
    }

    #[test]
    fn softmax_is_normalised_and_survives_tiny_temperature() {
        let mut s = vec![
            Selected {
                candidate: 0,
                score: 0.9,
                weight: 0.0,
            },
            Selected {
                candidate: 1,
                score: 0.5,
                weight: 0.0,
            },
        ];
        softmax_selected(&mut s, 1.0);
        assert!((s[0].weight + s[1].weight - 1.0).abs() < 1e-6);
        assert!(s[0].weight > s[1].weight);
        softmax_selected(&mut s, f32::MIN_POSITIVE);
        assert_eq!((s[0].weight, s[1].weight), (1.0, 0.0));
    }

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
    fn gate_picks_thresholded_top_k_with_softmax() {
        let s = [0.8, 0.6, 0.0, f32::NEG_INFINITY, 0.05, 0.0, -1.0, 0.0, 0.0];
        let a = gate(&s, 3, &SelectionParams::new(0.1, 2, 1.0)).unwrap();
        assert_eq!(a.tokens(), 3);
        let t0 = a.get(0).unwrap();
        assert_eq!(t0.iter().map(|s| s.candidate).collect::<Vec<_>>(), [0, 1]);
        let e = (0.8f32 - 0.6).exp();
        assert!((t0[0].weight - e / (1.0 + e)).abs() < 1e-6);
        assert_eq!(a.get(1).unwrap(), &[]);
        assert_eq!(a.get(2).unwrap(), &[]);
        assert_eq!((a.total(), a.active_tokens()), (2, 1));
    }

    #[test]
    fn penalty_is_subtracted_before_ranking() {
        let p = SelectionParams::new(0.0, 1, 1.0).with_penalty(vec![0.5, 0.0]);
        let a = gate(&[0.8, 0.6], 2, &p).unwrap();
        assert_eq!(a.get(0).unwrap()[0].candidate, 1);
        assert!((a.get(0).unwrap()[0].score - 0.6).abs() < 1e-6);
    }

    #[test]
    fn bad_scores_are_typed_errors() {
        let p = SelectionParams::new(0.0, 1, 1.0);
        assert!(matches!(
            gate(&[1.0, 0.0, f32::NAN, 0.0], 2, &p),
            Err(SelectError::NonFiniteScore {
                token: 1,
                candidate: 0,
                ..
            })
        ));
        assert!(matches!(
            gate(&[1.0, f32::INFINITY], 2, &p),
            Err(SelectError::NonFiniteScore {
                token: 0,
                candidate: 1,
                ..
            })
        ));
        assert!(matches!(
            gate(&[1.0, 2.0, 3.0], 2, &p),
            Err(SelectError::RaggedScores {
                len: 3,
                candidates: 2
            })
        ));
    }

    #[test]
    fn no_candidates_gives_empty_rows() {
        let a = gate(&[], 0, &SelectionParams::new(0.0, 3, 1.0)).unwrap();
        assert_eq!(a.tokens(), 0);
        assert_eq!(a.stride(), 0);
    }
}
