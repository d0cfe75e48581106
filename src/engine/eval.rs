//! Evaluation of a store against the promises of the engine: stored facts answered
//! exactly, their rewordings too, near-misses and unrelated prompts answered exactly
//! as the bare backbone (and never with a stored answer), questions that need several
//! stored facts answered with all of them. One implementation for `mome eval` and the
//! memorize benchmark.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{AskOptions, Engine};
use crate::error::Result;
use crate::tune::Fact;

/// A reworded question and the stored answer it must get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paraphrase {
    /// The reworded question.
    pub prompt: String,
    /// The answer of the fact it rewords.
    pub answer: String,
    /// A label to report separately ("light", "reordered", "synonym", ...).
    #[serde(default)]
    pub kind: String,
}

/// A question that needs several stored facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiFact {
    /// The question.
    pub prompt: String,
    /// Every answer that must appear in the reply.
    pub answers: Vec<String>,
}

/// A prompt no stored fact answers (near-miss or unrelated), with a label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The question.
    pub prompt: String,
    /// A label to report separately ("entity", "relation", ...).
    #[serde(default)]
    pub kind: String,
}

/// What to evaluate.
#[derive(Debug, Clone, Default)]
pub struct EvalSet {
    /// Stored facts (exact recall); their answers are the "stored answers" a
    /// near-miss must not get.
    pub facts: Vec<Fact>,
    /// Rewordings of stored facts.
    pub paraphrases: Vec<Paraphrase>,
    /// Near-misses: the same question about an entity that is not stored, another
    /// question about a stored entity.
    pub nearmiss: Vec<Probe>,
    /// Unrelated prompts.
    pub unrelated: Vec<Probe>,
    /// Questions that need several stored facts.
    pub multi: Vec<MultiFact>,
}

/// One count with its denominator and the failures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Successes.
    pub ok: usize,
    /// Cases.
    pub n: usize,
    /// Up to 20 failures: prompt, expected, got.
    pub failures: Vec<serde_json::Value>,
}

impl Tally {
    fn add(&mut self, ok: bool, failure: impl FnOnce() -> serde_json::Value) {
        self.n += 1;
        if ok {
            self.ok += 1;
        } else if self.failures.len() < 20 {
            self.failures.push(failure());
        }
    }

    /// `ok / n` (1 when there is no case).
    pub fn rate(&self) -> f64 {
        if self.n == 0 {
            1.0
        } else {
            self.ok as f64 / self.n as f64
        }
    }
}

/// The evaluation's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EvalReport {
    /// Stored prompts answered exactly.
    pub exact_recall: Tally,
    /// Rewordings answered exactly, all kinds.
    pub paraphrase_recall: Tally,
    /// Rewordings by kind.
    pub paraphrase_by_kind: std::collections::BTreeMap<String, Tally>,
    /// Near-misses whose output equals the bare backbone's, token for token.
    pub nearmiss_specificity: Tally,
    /// Near-misses by kind.
    pub nearmiss_by_kind: std::collections::BTreeMap<String, Tally>,
    /// Near-misses (and unrelated prompts) answered with a stored answer that the bare
    /// model did not give: the worst outcome.
    pub leaks: usize,
    /// Unrelated prompts whose output equals the bare backbone's.
    pub locality: Tally,
    /// Multi-fact questions whose reply contains every answer.
    pub multi_all_answers: Tally,
    /// Median time of `ask` over the bare backbone's on the same prompt, for prompts
    /// that select nothing (near-misses and unrelated): the cost of selection.
    pub overhead_no_selection: f64,
    /// Median seconds of `ask` on stored prompts, and of the bare backbone on them
    /// (answers are short, bare replies long: for reference).
    pub ask_seconds_stored: f64,
    /// See `ask_seconds_stored`.
    pub bare_seconds_stored: f64,
    /// Wall time.
    pub seconds: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the evaluation; `max_tokens` bounds the replies compared with the bare
/// backbone (near-misses, unrelated). `progress(done, total)` reports progress.
pub fn evaluate(
    engine: &Engine,
    set: &EvalSet,
    max_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let start = Instant::now();
    let total = set.facts.len()
        + set.paraphrases.len()
        + set.nearmiss.len()
        + set.unrelated.len()
        + set.multi.len();
    let mut done = 0usize;
    let mut tick = |progress: &mut dyn FnMut(usize, usize)| {
        done += 1;
        progress(done, total);
    };
    let mut r = EvalReport::default();
    let ask = AskOptions::default();
    let short = AskOptions {
        max_tokens,
        use_experts: true,
    };
    let bare = AskOptions {
        max_tokens,
        use_experts: false,
    };
    let (mut t_ask, mut t_bare) = (Vec::new(), Vec::new());
    for (i, f) in set.facts.iter().enumerate() {
        let t = Instant::now();
        let got = engine.ask(&f.prompt, &ask)?;
        t_ask.push(t.elapsed().as_secs_f64());
        if i < 20 {
            let t = Instant::now();
            engine.ask(&f.prompt, &bare)?;
            t_bare.push(t.elapsed().as_secs_f64());
        }
        r.exact_recall.add(
            got.text == f.answer,
            || serde_json::json!({"prompt": f.prompt, "answer": f.answer, "got": got.text}),
        );
        tick(progress);
    }
    r.ask_seconds_stored = median(t_ask);
    r.bare_seconds_stored = median(t_bare);
    for p in &set.paraphrases {
        let got = engine.ask(&p.prompt, &ask)?;
        let ok = got.text == p.answer;
        let fail = || serde_json::json!({"prompt": p.prompt, "answer": p.answer, "got": got.text});
        r.paraphrase_recall.add(ok, fail);
        r.paraphrase_by_kind
            .entry(p.kind.clone())
            .or_default()
            .add(ok, fail);
        tick(progress);
    }
    let stored: Vec<&str> = set
        .facts
        .iter()
        .map(|f| f.answer.trim())
        .filter(|a| !a.is_empty())
        .collect();
    let mut overhead = Vec::new();
    let mut compare = |p: &Probe, engine: &Engine| -> Result<(bool, bool, String, String)> {
        let t = Instant::now();
        let with = engine.ask(&p.prompt, &short)?;
        let tw = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let b = engine.ask(&p.prompt, &bare)?;
        let tb = t.elapsed().as_secs_f64();
        if with.selected.is_empty() && tb > 0.0 {
            overhead.push(tw / tb);
        }
        let same = with.tokens == b.tokens;
        // A leak: the reply carries a stored answer that the bare model's does not.
        let leak = !same
            && stored
                .iter()
                .any(|a| with.text.contains(a) && !b.text.contains(a));
        Ok((same, leak, with.text, b.text))
    };
    for p in &set.nearmiss {
        let (same, leak, with, b) = compare(p, engine)?;
        let fail =
            || serde_json::json!({"prompt": p.prompt, "kind": p.kind, "bare": b, "engine": with});
        r.nearmiss_specificity.add(same, fail);
        r.nearmiss_by_kind
            .entry(p.kind.clone())
            .or_default()
            .add(same, fail);
        r.leaks += usize::from(leak);
        tick(progress);
    }
    for p in &set.unrelated {
        let (same, leak, with, b) = compare(p, engine)?;
        r.locality.add(
            same,
            || serde_json::json!({"prompt": p.prompt, "bare": b, "engine": with}),
        );
        r.leaks += usize::from(leak);
        tick(progress);
    }
    r.overhead_no_selection = median(overhead);
    for m in &set.multi {
        let got = engine.ask(&m.prompt, &ask)?;
        let ok = m.answers.iter().all(|a| got.text.contains(a.as_str()));
        r.multi_all_answers.add(
            ok,
            || serde_json::json!({"prompt": m.prompt, "answers": m.answers, "got": got.text}),
        );
        tick(progress);
    }
    r.seconds = start.elapsed().as_secs_f64();
    Ok(r)
}
