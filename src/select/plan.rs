//! From the facts a question asks for to per-position scores for the fused operator.
//!
//! Positions of one sequence (a request, or a training row):
//!
//! ```text
//! [system prompt, "<|im_start|>user\n"] [user message] [end of turn, "assistant\n"] [answer ...]
//!  0 .. offset                          offset .. end   end ..
//! ```
//!
//! * before the user message no expert is active;
//! * inside it, a chosen fact is active from the position where the question has
//!   shown all of its names and content words ([`super::Chosen::complete_at`]):
//!   what the question has said so far decides, token by token;
//! * after it (the template's suffix and every generated token), the facts of the
//!   plan's *branch*: all chosen facts, or one of them. A two-fact question is
//!   answered one branch per fact, each generating that fact's answer after the
//!   shared prompt (`Engine::ask`); one branch is the whole story for a one-fact
//!   question, and memory tuning trains and verifies each fact in the one-fact form.
//!
//! An active fact scores 1, an inactive one `−inf`, and [`GATE`] turns the scores into
//! weights: the active facts of a position share it equally (a single fact weighs 1,
//! as in training). A position with no active fact is left bit for bit as it was.

use super::rule::Chosen;
use crate::kernels::SelectionParams;

/// Gate parameters for plan scores: everything active passes, equal weights.
pub fn gate_params(max_facts: usize) -> SelectionParams {
    SelectionParams::new(0.0, max_facts.max(1), 1.0)
}

/// The plan of one sequence over its K candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct RowPlan {
    /// Position of the user message's first token.
    pub offset: usize,
    /// Tokens of the user message.
    pub user_len: usize,
    /// Candidates (index into the row's K) with the user-message position from which
    /// each is active.
    pub active: Vec<(usize, usize)>,
    /// Candidates active after the user message: `None` for all of `active`.
    pub branch: Option<usize>,
    /// Candidates of the row (K), for the width of the score matrix.
    pub candidates: usize,
}

impl RowPlan {
    /// A plan for chosen facts; `candidate_of(fact)` maps a chosen fact to its column.
    pub fn new(
        offset: usize,
        user_len: usize,
        chosen: &[Chosen],
        candidate_of: impl Fn(usize) -> usize,
        candidates: usize,
    ) -> Self {
        Self {
            offset,
            user_len,
            active: chosen
                .iter()
                .map(|c| (candidate_of(c.fact), c.complete_at))
                .collect(),
            branch: None,
            candidates,
        }
    }

    /// A plan with every candidate active at every position (the shared-adapter peer
    /// of the memorize benchmark: a plain LoRA applied unconditionally).
    pub fn always(candidates: usize) -> Self {
        Self {
            offset: 0,
            user_len: 0,
            active: (0..candidates).map(|c| (c, 0)).collect(),
            branch: None,
            candidates,
        }
    }

    /// A plan with no expert anywhere.
    pub fn none(candidates: usize) -> Self {
        Self {
            offset: 0,
            user_len: 0,
            active: Vec::new(),
            branch: None,
            candidates,
        }
    }

    /// The same plan with only candidate `c` active after the user message.
    pub fn branch(&self, c: usize) -> Self {
        Self {
            branch: Some(c),
            ..self.clone()
        }
    }

    /// Whether candidate `c` is active at position `pos`.
    pub fn is_active(&self, c: usize, pos: usize) -> bool {
        let end = self.offset + self.user_len;
        self.active.iter().any(|&(k, from)| {
            k == c
                && if pos < self.offset {
                    false
                } else if pos < end {
                    pos - self.offset >= from
                } else {
                    self.branch.is_none_or(|b| b == c)
                }
        })
    }

    /// Whether any candidate is active at a position of `pos .. pos + t`.
    pub fn any_active(&self, pos: usize, t: usize) -> bool {
        (pos..pos + t).any(|p| self.active.iter().any(|&(c, _)| self.is_active(c, p)))
    }

    /// Scores `[t × K]` (row-major) for positions `pos .. pos + t`: 1 where a candidate
    /// is active, `−inf` elsewhere.
    pub fn scores(&self, pos: usize, t: usize) -> Vec<f32> {
        let k = self.candidates;
        let mut s = vec![f32::NEG_INFINITY; t * k];
        for p in 0..t {
            for &(c, _) in &self.active {
                if c < k && self.is_active(c, pos + p) {
                    s[p * k + c] = 1.0;
                }
            }
        }
        s
    }

    /// Most facts active at one position.
    pub fn max_active(&self) -> usize {
        self.active.len().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_question() {
        let chosen = [
            Chosen {
                fact: 0,
                score: 1.0,
                complete_at: 2,
            },
            Chosen {
                fact: 1,
                score: 0.9,
                complete_at: 5,
            },
        ];
        // user message at 10..17; candidates: fact 0 → column 3, fact 1 → column 0.
        let p = RowPlan::new(10, 7, &chosen, |f| if f == 0 { 3 } else { 0 }, 4);
        assert!(!p.is_active(3, 11) && p.is_active(3, 12) && !p.is_active(0, 14));
        assert!(p.is_active(0, 15) && p.is_active(3, 15));
        assert!(p.is_active(0, 17) && p.is_active(3, 40));
        let b = p.branch(0);
        assert!(b.is_active(0, 17) && !b.is_active(3, 17) && b.is_active(3, 16));
        let s = b.scores(16, 2);
        assert_eq!(s[3], 1.0); // row 0, column 3
        assert_eq!(s[4 + 3], f32::NEG_INFINITY);
        assert_eq!(s[4], 1.0);
        assert!(!p.any_active(0, 12) && p.any_active(0, 13));
        assert!(!RowPlan::none(2).any_active(0, 100));
    }
}
