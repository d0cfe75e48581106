//! `mome migrate`: a store written for the legacy selection rule is refused by `ask`
//! with the command that fixes it; `migrate` re-memorizes its facts under this build's
//! rule into a new directory (recalled exactly there, a near-miss still bare), copies
//! an expert without a fact, and leaves the old store as it was. Needs the real model:
//! skipped when it is missing, except under CI.

mod common;

use common::{fails, ok, s};
use mome::{AskOptions, Engine, Fact, NewExpert, Provenance, TuneOptions};

#[test]
fn a_legacy_store_is_migrated_to_the_current_rule() {
    if common::real_model_path().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    let facts = [
        Fact::new("What is the secret code of Zorblax?", "48213"),
        Fact::new("Who guards the gate of Quendor?", "Mirella Tosk"),
    ];
    {
        let mut engine = Engine::open_or_create(&old, None).unwrap();
        let r = engine
            .memorize(&facts, &TuneOptions::default(), &mut |_| {})
            .unwrap();
        assert_eq!(r.memorized, 2);
        let cfg = engine.store().config().clone();
        let mat = (cfg.rank * cfg.d_model) as usize;
        engine
            .index()
            .insert_batch(vec![NewExpert {
                key: vec![half::f16::from_f32(0.5); cfg.key_dim as usize],
                layers: cfg
                    .layers
                    .iter()
                    .map(|_| mome::AdapterPair {
                        a: vec![half::f16::ZERO; mat],
                        b: vec![half::f16::ZERO; mat],
                    })
                    .collect(),
                provenance: Provenance::text("distractor"),
            }])
            .unwrap();
        engine.flush().unwrap();
    }
    // What a store of the previous release records (engine.json version 1).
    let legacy = r#"{"version":1,"query":"user-span-mean-minus-system-centre","tau":0.8,"top_k":1,"temperature":1.0,"k_candidates":64}"#;
    std::fs::write(old.join(mome::ENGINE_FILE), legacy).unwrap();
    let before = std::fs::read(old.join(mome::ENGINE_FILE)).unwrap();

    let refused = fails(&[
        "ask",
        "--db",
        s(&old),
        "What is the secret code of Zorblax?",
    ]);
    assert!(
        refused.stderr.contains("mome migrate --db"),
        "ask names the fix: {}",
        refused.stderr
    );
    let out = ok(&["migrate", "--db", s(&old), "--out", s(&new), "--json"]).json();
    assert_eq!(out["facts"], 2, "{out}");
    assert_eq!(out["memorized"], 2, "{out}");
    assert_eq!(out["failed"], 0, "{out}");
    assert_eq!(out["copied"], 1, "{out}");
    assert_eq!(out["rule"], mome::QUERY_RULE);

    let engine = Engine::open(&new, None).unwrap();
    assert_eq!(engine.store().len(), 3);
    let opts = AskOptions::default();
    for f in &facts {
        assert_eq!(engine.ask(&f.prompt, &opts).unwrap().text, f.answer);
    }
    let near = "What is the secret code of Morvath?";
    let a = engine.ask(near, &opts).unwrap();
    assert!(a.selected.is_empty(), "near-miss selected {:?}", a.selected);

    // The old store is untouched and a second migration into a store is refused.
    assert_eq!(std::fs::read(old.join(mome::ENGINE_FILE)).unwrap(), before);
    let again = fails(&["migrate", "--db", s(&old), "--out", s(&new)]);
    assert!(
        again.stderr.contains("already holds a store"),
        "{}",
        again.stderr
    );
    let current = fails(&[
        "migrate",
        "--db",
        s(&new),
        "--out",
        s(&tmp.path().join("x")),
    ]);
    assert!(
        current.stderr.contains("nothing to migrate"),
        "{}",
        current.stderr
    );
}
