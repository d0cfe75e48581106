//! The selection rule: which stored facts a question asks for. Pure.
//!
//! A stored fact `f` **matches** a question `q` when
//!
//! 1. every name of `f` is a name of `q` — the same whole run of name words, so
//!    "Georgia" is not found in "South Georgia", nor "Samoa" in "American Samoa" — and
//! 2. every content token `i` of `f` finds a token `j` of `q` with `sim(i, j) > τ_m`
//!    ([`RuleParams::match_threshold`]), where `sim` is 1 for the same normalised
//!    token and otherwise the cosine of the two tokens' states at the query layer (an
//!    inflection, "guards" / "guarded", scores ≈ 0.65–0.8; different words ≤ 0.45).
//!
//! The **forward score** is the smallest of those best similarities (1 with no
//! content token); it is the score reported for `f`. A question is answered by a set
//! of matching facts `S` (one per part of the question: a two-fact question gets two)
//! only if, together, they account for the question:
//!
//! 3. every name of `q` is a name of some fact of `S` (so "Guinea-Bissau" is not
//!    answered from "Guinea"), and
//! 4. the mean, over `q`'s content tokens, of their best similarity to a token of `S`
//!    exceeds τ_c ([`RuleParams::coverage_threshold`]): a question that is mostly about
//!    something else is not answered from a fact it merely contains.
//!
//! `S` is built greedily: matching facts by forward score, then by how many of `q`'s
//! names they account for, each kept only if it accounts for a content token or name
//! of `q` that the ones before did not. If 3 or
//! 4 fail, nothing is selected and the bare model answers.
//!
//! Each selected fact becomes active at the question's first position where all of
//! its names and content tokens have been seen ([`Chosen::complete_at`]), which is
//! what makes the selection per token (see [`super::plan`]).

use super::lexicon::TokenKind;
use super::query::Query;

/// Thresholds of the rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RuleParams {
    /// τ_m: a stored content token is present in the question when its best
    /// similarity exceeds this.
    pub match_threshold: f32,
    /// τ_c: the selected facts must account for more than this share of the
    /// question's content (mean best similarity).
    pub coverage_threshold: f32,
}

impl Default for RuleParams {
    /// τ_m 0.55, τ_c 0.5: chosen on held-out data (docs/BENCHMARKS.md §Selection).
    fn default() -> Self {
        Self {
            match_threshold: 0.55,
            coverage_threshold: 0.5,
        }
    }
}

/// How one stored fact matches a question.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    /// Every name of the fact occurs in the question.
    pub names: bool,
    /// Smallest best similarity of the fact's content tokens (1 with none).
    pub forward: f32,
    /// Question position (token of the user message) from which all of the fact's
    /// names and content tokens have been seen; `None` if they never all are.
    pub complete_at: Option<usize>,
}

impl Match {
    /// Whether the fact matches (rules 1 and 2).
    pub fn matches(&self, p: &RuleParams) -> bool {
        self.names && self.forward > p.match_threshold && self.complete_at.is_some()
    }
}

/// A fact the question asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chosen {
    /// Index into the facts given to [`select_facts`].
    pub fact: usize,
    /// Its forward score.
    pub score: f32,
    /// Question position from which it is active.
    pub complete_at: usize,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Similarity of token `i` of `a` and token `j` of `b`: 1 for the same normalised
/// token (with a letter or digit), else the cosine of their states.
pub fn similarity(a: &Query, i: usize, b: &Query, j: usize) -> f32 {
    let (na, nb) = (&a.analysis().norms[i], &b.analysis().norms[j]);
    if na == nb && na.chars().any(char::is_alphanumeric) {
        1.0
    } else {
        dot(a.state(i), b.state(j))
    }
}

/// How `fact` matches `query` (rules 1 and 2).
pub fn match_fact(query: &Query, fact: &Query, p: &RuleParams) -> Match {
    let fa = fact.analysis();
    let qa = query.analysis();
    let mut complete = Some(0usize);
    let mut names = true;
    for (name, _) in &fa.names {
        match qa.names.iter().find(|(n, _)| n == name) {
            Some(&(_, end)) => complete = complete.map(|c| c.max(end)),
            None => {
                names = false;
                complete = None;
            }
        }
    }
    if !names {
        return Match {
            names,
            forward: 0.0,
            complete_at: None,
        };
    }
    let mut forward = 1.0f32;
    for (i, kind) in fa.kinds.iter().enumerate() {
        if *kind != TokenKind::Content {
            continue;
        }
        let mut best = f32::NEG_INFINITY;
        let mut first = None;
        for j in 0..query.len() {
            let s = similarity(fact, i, query, j);
            best = best.max(s);
            if first.is_none() && s > p.match_threshold {
                first = Some(j);
            }
        }
        forward = forward.min(best);
        complete = match (complete, first) {
            (Some(c), Some(f)) => Some(c.max(f)),
            _ => None,
        };
    }
    Match {
        names,
        forward,
        complete_at: complete,
    }
}

/// The facts `query` asks for, in the order they become active (rules 1–4). Empty
/// when no fact matches or the matching ones do not account for the question.
pub fn select_facts(query: &Query, facts: &[&Query], p: &RuleParams) -> Vec<Chosen> {
    let qa = query.analysis();
    let mut matching: Vec<Chosen> = facts
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_distinctive())
        .filter_map(|(k, f)| {
            let m = match_fact(query, f, p);
            m.matches(p).then_some(Chosen {
                fact: k,
                score: m.forward,
                complete_at: m.complete_at.unwrap_or(0),
            })
        })
        .collect();
    if matching.is_empty() {
        return Vec::new();
    }
    // Best first; among equals the fact that accounts for more of the question's names,
    // then of its content.
    let cover = |k: usize| coverage(query, &[facts[k]]);
    let names_of = |k: usize| {
        let fa = facts[k].analysis();
        qa.names
            .iter()
            .filter(|(n, _)| fa.names.iter().any(|(m, _)| m == n))
            .count()
    };
    matching.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(names_of(b.fact).cmp(&names_of(a.fact)))
            .then(cover(b.fact).total_cmp(&cover(a.fact)))
            .then(a.fact.cmp(&b.fact))
    });
    // Greedy cover: keep a fact only if it accounts for a name or a content token of
    // the question that the ones before it did not.
    let content: Vec<usize> = (0..query.len())
        .filter(|&j| qa.kinds[j] == TokenKind::Content)
        .collect();
    let mut covered_tok = vec![false; query.len()];
    let mut covered_name = vec![false; qa.names.len()];
    let mut chosen: Vec<Chosen> = Vec::new();
    for c in matching {
        let f = facts[c.fact];
        let fa = f.analysis();
        let mut adds = false;
        for (n, (name, _)) in qa.names.iter().enumerate() {
            if !covered_name[n] && fa.names.iter().any(|(m, _)| m == name) {
                covered_name[n] = true;
                adds = true;
            }
        }
        for &j in &content {
            if !covered_tok[j]
                && (0..f.len()).any(|i| similarity(f, i, query, j) > p.match_threshold)
            {
                covered_tok[j] = true;
                adds = true;
            }
        }
        if adds || chosen.is_empty() {
            chosen.push(c);
        }
    }
    if covered_name.iter().any(|c| !c) {
        return Vec::new();
    }
    let sel: Vec<&Query> = chosen.iter().map(|c| facts[c.fact]).collect();
    if coverage(query, &sel) <= p.coverage_threshold {
        return Vec::new();
    }
    chosen.sort_by_key(|c| (c.complete_at, c.fact));
    chosen
}

/// Mean, over the question's content tokens, of their best similarity to any token
/// of `facts` (rule 4); 1 when the question has no content token.
pub fn coverage(query: &Query, facts: &[&Query]) -> f32 {
    let qa = query.analysis();
    let (mut sum, mut n) = (0f32, 0usize);
    for j in 0..query.len() {
        if qa.kinds[j] != TokenKind::Content {
            continue;
        }
        let best = facts
            .iter()
            .flat_map(|f| (0..f.len()).map(move |i| similarity(f, i, query, j)))
            .fold(0f32, f32::max);
        sum += best.max(0.0);
        n += 1;
    }
    if n == 0 {
        1.0
    } else {
        sum / n as f32
    }
}
