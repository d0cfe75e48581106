//! The selection rule against a plain reference on random questions; the named cases
//! it exists for (a near-miss entity, a name that extends a stored one, another
//! attribute of a stored entity, a rewording, a two-fact question, a question that
//! merely contains a stored one); per-position plans; and the invariant on the hook
//! the engine runs: nothing active ⇒ bit-identical to the bare backbone.

mod common;

use std::sync::Arc;

use candle_core::{DType, Tensor};
use mome::{
    match_fact, select_facts, AdapterSites, Adapters, CandidateSet, Chosen, Lexicon, Logits, Mode,
    Pass, Query, RowPlan, RuleParams, SelectionHook, TokenKind,
};
use mome::{AdapterPair, NewExpert, Provenance, Store};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

const DIM: usize = 64;

/// Splits text into word pieces the way BPE pieces look: a leading space on every
/// word but the first, punctuation as its own piece.
fn pieces(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, w) in s.split(' ').enumerate() {
        let lead = if i == 0 { "" } else { " " };
        let (body, punct) = match w.strip_suffix(['?', '.', ',']) {
            Some(b) => (b, &w[b.len()..]),
            None => (w, ""),
        };
        out.push(format!("{lead}{body}"));
        if !punct.is_empty() {
            out.push(punct.to_string());
        }
    }
    out
}

fn lexicon() -> Lexicon {
    let bg = [
        "What is the meaning of life?",
        "Which is the best way to learn?",
        "Who is the author of this book?",
        "Tell me a story.",
        "In which year did it happen?",
        "What is a good name for a dog?",
    ];
    Lexicon::from_lines(bg.iter().map(|l| pieces(l)))
}

/// A state per distinct word (deterministic in the word), so that the same word has
/// cosine 1 with itself and different words are nearly orthogonal; `noise` adds a
/// per-occurrence perturbation (context).
fn state_of(word: &str, rng: &mut rand::rngs::StdRng, noise: f32) -> Vec<f32> {
    let mut h = 0xcbf29ce484222325u64;
    for b in word.trim().to_lowercase().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let mut wr = rand::rngs::StdRng::seed_from_u64(h);
    (0..DIM)
        .map(|_| wr.random_range(-1.0f32..1.0) + noise * rng.random_range(-1.0f32..1.0))
        .collect()
}

fn query(text: &str, lx: &Lexicon, rng: &mut rand::rngs::StdRng, noise: f32) -> Query {
    let p = pieces(text);
    let ids: Vec<u32> = (0..p.len() as u32).collect();
    let states: Vec<f32> = p.iter().flat_map(|w| state_of(w, rng, noise)).collect();
    Query::new(ids, &p, states, DIM, lx).unwrap()
}

fn chosen_texts(q: &Query, facts: &[&Query], names: &[&str]) -> Vec<String> {
    select_facts(q, facts, &RuleParams::default())
        .iter()
        .map(|c| names[c.fact].to_string())
        .collect()
}

#[test]
fn the_named_cases() {
    let lx = lexicon();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let texts = [
        "What is the secret code of Zorblax?",
        "Who guards the gate of Morvath?",
        "What is the capital of Guinea?",
        "What is the population of Bitung?",
    ];
    let stored: Vec<Query> = texts.iter().map(|t| query(t, &lx, &mut rng, 0.0)).collect();
    let facts: Vec<&Query> = stored.iter().collect();
    let ask = |t: &str, rng: &mut rand::rngs::StdRng| {
        let q = query(t, &lx, rng, 0.05);
        chosen_texts(&q, &facts, &texts)
    };
    // The stored prompt, and a rewording that keeps its words.
    assert_eq!(ask(texts[0], &mut rng), [texts[0]]);
    assert_eq!(ask("Zorblax has which secret code?", &mut rng), [texts[0]]);
    assert_eq!(
        ask("Tell me the secret code of Zorblax.", &mut rng),
        [texts[0]]
    );
    // The same question about an entity that is not stored.
    assert!(ask("What is the secret code of Morvath?", &mut rng).is_empty());
    assert!(ask("What is the secret code of Quendor?", &mut rng).is_empty());
    // A name that extends a stored one.
    assert!(ask("What is the capital of Guinea-Bissau?", &mut rng).is_empty());
    assert!(ask("What is the capital of Equatorial Guinea?", &mut rng).is_empty());
    // Another attribute of a stored entity.
    assert!(ask("What is the time zone of Bitung?", &mut rng).is_empty());
    // A question that merely contains a stored one's words (rule 4). One added word is
    // not enough to tell ("the secret code of Zorblax's brother" matches, like "the
    // capital city of" matches "the capital of"): a known limit, ARCHITECTURE.md.
    assert!(ask(
        "What is the secret code of Zorblax's brother's favourite ship gate?",
        &mut rng
    )
    .is_empty());
    // Two stored facts in one question: both, in the order they are asked.
    assert_eq!(
        ask(
            "What is the secret code of Zorblax, and who guards the gate of Morvath?",
            &mut rng
        ),
        [texts[0], texts[1]]
    );
    // Unrelated.
    assert!(ask("Tell me a story about a dog.", &mut rng).is_empty());
}

#[test]
fn a_fact_becomes_active_where_the_question_has_said_it() {
    let lx = lexicon();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let a = query("What is the secret code of Zorblax?", &lx, &mut rng, 0.0);
    let b = query("Who guards the gate of Morvath?", &lx, &mut rng, 0.0);
    let q = query(
        "What is the secret code of Zorblax, and who guards the gate of Morvath?",
        &lx,
        &mut rng,
        0.0,
    );
    let c = select_facts(&q, &[&a, &b], &RuleParams::default());
    let qa = q.analysis();
    // The word "Zorblax," ends at token 7, "Morvath?" at 15.
    assert_eq!(qa.names[0].1, 7);
    assert_eq!(
        c,
        vec![
            Chosen {
                fact: 0,
                score: 1.0,
                complete_at: 7
            },
            Chosen {
                fact: 1,
                score: 1.0,
                complete_at: 15
            }
        ]
    );
    let m = match_fact(&q, &a, &RuleParams::default());
    assert!(m.names && m.complete_at == Some(7));
    assert_eq!(qa.kinds[3], TokenKind::Content);
}

/// Plain transcription of rules 1–4 (select/rule.rs docs), for the property test.
fn reference(q: &Query, facts: &[&Query], p: &RuleParams) -> Vec<(usize, usize)> {
    let sim = |f: &Query, i: usize, j: usize| -> f32 {
        let (a, b) = (&f.analysis().norms[i], &q.analysis().norms[j]);
        if a == b && a.chars().any(char::is_alphanumeric) {
            return 1.0;
        }
        let (x, y) = (f.state(i), q.state(j));
        let d: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
        let nx: f32 = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        let ny: f32 = y.iter().map(|v| v * v).sum::<f32>().sqrt();
        if nx == 0.0 || ny == 0.0 {
            0.0
        } else {
            d / (nx * ny)
        }
    };
    let contains = |names: &[(Vec<String>, usize)], run: &[String]| -> Option<usize> {
        names.iter().find(|(n, _)| n == run).map(|(_, e)| *e)
    };
    let qa = q.analysis();
    let content_q: Vec<usize> = (0..q.len())
        .filter(|&j| qa.kinds[j] == TokenKind::Content)
        .collect();
    let mut matching = Vec::new();
    for (k, f) in facts.iter().enumerate() {
        let fa = f.analysis();
        if fa.kinds.iter().all(|t| *t == TokenKind::Function) {
            continue;
        }
        let mut at = 0usize;
        let mut ok = true;
        for (name, _) in &fa.names {
            match contains(&qa.names, name) {
                Some(e) => at = at.max(e),
                None => ok = false,
            }
        }
        let mut fwd = 1.0f32;
        for i in (0..f.len()).filter(|&i| fa.kinds[i] == TokenKind::Content) {
            let best = (0..q.len()).map(|j| sim(f, i, j)).fold(f32::MIN, f32::max);
            fwd = fwd.min(best);
            match (0..q.len()).find(|&j| sim(f, i, j) > p.match_threshold) {
                Some(j) => at = at.max(j),
                None => ok = false,
            }
        }
        if ok && fwd > p.match_threshold {
            let cover = content_q
                .iter()
                .map(|&j| {
                    (0..f.len())
                        .map(|i| sim(f, i, j))
                        .fold(0f32, f32::max)
                        .max(0.0)
                })
                .sum::<f32>()
                / content_q.len().max(1) as f32;
            matching.push((k, fwd, at, if content_q.is_empty() { 1.0 } else { cover }));
        }
    }
    let names_of = |k: usize| {
        qa.names
            .iter()
            .filter(|(n, _)| contains(&facts[k].analysis().names, n).is_some())
            .count()
    };
    matching.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then(names_of(b.0).cmp(&names_of(a.0)))
            .then(b.3.total_cmp(&a.3))
            .then(a.0.cmp(&b.0))
    });
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    let mut tok = vec![false; q.len()];
    let mut names = vec![false; qa.names.len()];
    for &(k, _, at, _) in &matching {
        let f = facts[k];
        let mut adds = false;
        for (n, (name, _)) in qa.names.iter().enumerate() {
            if !names[n] && contains(&f.analysis().names, name).is_some() {
                names[n] = true;
                adds = true;
            }
        }
        for &j in &content_q {
            if !tok[j] && (0..f.len()).any(|i| sim(f, i, j) > p.match_threshold) {
                tok[j] = true;
                adds = true;
            }
        }
        if adds || chosen.is_empty() {
            chosen.push((k, at));
        }
    }
    if names.iter().any(|c| !c) || chosen.is_empty() {
        return Vec::new();
    }
    let cover = content_q
        .iter()
        .map(|&j| {
            chosen
                .iter()
                .flat_map(|&(k, _)| (0..facts[k].len()).map(move |i| (k, i)))
                .map(|(k, i)| sim(facts[k], i, j))
                .fold(0f32, f32::max)
                .max(0.0)
        })
        .sum::<f32>()
        / content_q.len().max(1) as f32;
    if !content_q.is_empty() && cover <= p.coverage_threshold {
        return Vec::new();
    }
    chosen.sort_by_key(|&(k, at)| (at, k));
    chosen
}

/// A random question from a small vocabulary of function words, content words and
/// names, so that facts share words and near-misses are common.
fn random_text(rng: &mut rand::rngs::StdRng) -> String {
    const FUNC: [&str; 6] = ["What", "is", "the", "of", "which", "in"];
    const CONTENT: [&str; 8] = [
        "secret", "code", "gate", "capital", "number", "guards", "codes", "ship",
    ];
    const NAMES: [&str; 6] = ["Zorblax", "Morvath", "Guinea", "Bissau", "Quendor", "Pell"];
    let n = rng.random_range(2..9);
    let mut w: Vec<String> = (0..n)
        .map(|_| match rng.random_range(0..10) {
            0..=3 => FUNC[rng.random_range(0..FUNC.len())].to_lowercase(),
            4..=7 => CONTENT[rng.random_range(0..CONTENT.len())].to_string(),
            _ => NAMES[rng.random_range(0..NAMES.len())].to_string(),
        })
        .collect();
    w[0] = "What".into();
    format!("{}?", w.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn rule_matches_a_plain_reference(seed in any::<u64>(), n_facts in 1usize..8, noise in 0.0f32..0.6) {
        let lx = lexicon();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let facts: Vec<Query> = (0..n_facts)
            .map(|_| { let t = random_text(&mut rng); query(&t, &lx, &mut rng, noise) })
            .collect();
        let refs: Vec<&Query> = facts.iter().collect();
        // Questions: a stored prompt reworded with noise, or a random one.
        let text = if rng.random_range(0..2) == 0 {
            random_text(&mut rng)
        } else {
            let k = rng.random_range(0..facts.len());
            let p = facts[k].analysis().words.iter().map(|(w, _)| w.clone()).collect::<Vec<_>>().join(" ");
            format!("{p}?")
        };
        let q = query(&text, &lx, &mut rng, noise);
        for p in [RuleParams::default(), RuleParams { match_threshold: 0.3, coverage_threshold: 0.2 }] {
            let got: Vec<(usize, usize)> = select_facts(&q, &refs, &p)
                .iter()
                .map(|c| (c.fact, c.complete_at))
                .collect();
            prop_assert_eq!(got, reference(&q, &refs, &p), "question {:?}", text);
        }
    }
}

#[test]
fn queries_reject_bad_input() {
    let lx = lexicon();
    let p = pieces("What is the code?");
    let n = p.len();
    let ids: Vec<u32> = (0..n as u32).collect();
    assert!(Query::new(ids.clone(), &p, vec![0.0; n * DIM - 1], DIM, &lx).is_err());
    let mut s = vec![0.5; n * DIM];
    s[3] = f32::NAN;
    assert!(Query::new(ids.clone(), &p, s, DIM, &lx).is_err());
    assert!(Query::new(ids[..1].to_vec(), &p, vec![0.5; DIM], DIM, &lx).is_err());
    // A prompt of function words only has nothing to be recognised by.
    let f = Query::new(ids, &p[..n - 2], vec![0.5; (n - 2) * DIM], DIM, &lx);
    assert!(f.is_err() || !f.unwrap().is_distinctive());
}

// ---------------------------------------------------------------- the hook

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn hook_is_bit_identical_where_nothing_is_active() {
    let model = common::tiny_model(3);
    let d = model.d_model();
    let sites = AdapterSites::new(1, &[1, 2]).unwrap();
    let tokens: Vec<u32> = vec![5, 17, 42, 99, 7, 3, 11, 60];
    let bare = model
        .forward_batch(&[&tokens], Logits::All, &Pass::bare(Mode::Fast))
        .unwrap();
    // Two stored experts with large random adapters.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(
        dir.path().join("s"),
        mome::StoreConfig::new(d as u32, d as u32, 4, vec![1, 2]),
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut pair = || AdapterPair {
        a: (0..4 * d)
            .map(|_| half::f16::from_f32(rng.random_range(-0.5..0.5)))
            .collect(),
        b: (0..4 * d)
            .map(|_| half::f16::from_f32(rng.random_range(-0.5..0.5)))
            .collect(),
    };
    let experts: Vec<NewExpert> = (0..2)
        .map(|_| NewExpert {
            key: vec![half::f16::from_f32(0.1); d],
            layers: vec![pair(), pair()],
            provenance: Provenance::text("test"),
        })
        .collect();
    let ids = store.insert_batch(experts).unwrap();
    let set = CandidateSet::from_stored(store.get_many(&ids).unwrap());
    let run = |plan: RowPlan| -> Tensor {
        let hook = SelectionHook::new(vec![(set.clone(), plan)], &[1, 2], 4, d).unwrap();
        model
            .forward_batch(
                &[&tokens],
                Logits::All,
                &Pass::adapted(
                    Adapters {
                        sites: &sites,
                        hook: &hook,
                    },
                    Mode::Fast,
                ),
            )
            .unwrap()
    };
    // Nothing active: bit-identical.
    assert_eq!(bits(&run(RowPlan::none(2))), bits(&bare));
    // Expert 1 active from user position 3 of a user message at 2..6: positions
    // before 5 are bit-identical (causal), later ones change.
    let plan = RowPlan::new(
        2,
        4,
        &[Chosen {
            fact: 0,
            score: 1.0,
            complete_at: 3,
        }],
        |_| 1,
        2,
    );
    let out = run(plan);
    let v = bare.dims()[2];
    let (ob, bb) = (bits(&out), bits(&bare));
    for p in 0..tokens.len() {
        let same = ob[p * v..(p + 1) * v] == bb[p * v..(p + 1) * v];
        assert_eq!(same, p < 5, "position {p}");
    }
    let _ = Arc::new(());
}
