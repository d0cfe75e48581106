//! `mome verify --recall` replays every stored fact through the engine (real model) and
//! names each expert whose fact is no longer answered exactly. Skipped when the model is
//! missing (fails under CI, which fetches it).

mod common;

use common::{mome, s};
use half::f16;
use mome::{AdapterPair, NewExpert, Provenance};
use mome::{AskOptions, Engine};

#[test]
fn verify_recall_names_facts_that_are_not_recalled() {
    if common::real_model_path().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let (good, bad) = (
        "What is the capital of France?",
        "What is the capital of Italy?",
    );
    {
        let engine = Engine::open_or_create(&db, None).unwrap();
        let cfg = engine.store().config().clone();
        // Experts with B = 0 change nothing: the engine answers as the bare model. One
        // records the bare answer (recalled), one a different answer (not recalled).
        let bare = engine.ask(good, &AskOptions::default()).unwrap().text;
        let mk = |prompt: &str, answer: &str| {
            let q = engine.encode(prompt).unwrap().query.pooled_key();
            let mat = (cfg.rank * cfg.d_model) as usize;
            NewExpert {
                key: q.iter().map(|&x| f16::from_f32(x)).collect(),
                layers: cfg
                    .layers
                    .iter()
                    .map(|_| AdapterPair {
                        a: vec![f16::from_f32(0.01); mat],
                        b: vec![f16::ZERO; mat],
                    })
                    .collect(),
                provenance: Provenance::fact(prompt, answer),
            }
        };
        let ids = engine
            .index()
            .insert_batch(vec![mk(good, &bare), mk(bad, "zz-not-the-answer")])
            .unwrap();
        assert_eq!(ids, vec![1, 2]);
    }
    let out = mome(&["verify", "--db", s(&db), "--recall", "--json"]);
    assert_eq!(
        out.code, 1,
        "a fact not recalled is a problem: {}",
        out.stdout
    );
    let v = out.json();
    assert_eq!(v["recall"]["checked"], true);
    assert_eq!(v["recall"]["facts"], 2);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["id"], 2);
    assert!(problems[0]["shard"].is_u64() && problems[0]["offset"].is_u64());
    let detail = problems[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("no longer recalled") && detail.contains("zz-not-the-answer"),
        "{detail}"
    );
    assert!(v["recall"]["relinked"].is_null());

    // --repair: both facts' experts are retrieved for their prompts, so nothing is
    // relinked, and a wrong answer is still a problem.
    let out = mome(&["verify", "--db", s(&db), "--recall", "--repair", "--json"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let v = out.json();
    assert_eq!(v["recall"]["relinked"], 0);
    assert_eq!(v["problems"].as_array().unwrap().len(), 1);
    let usage = mome(&["verify", "--db", s(&db), "--repair"]);
    assert_eq!(usage.code, 2, "--repair needs --recall: {}", usage.stderr);
}
