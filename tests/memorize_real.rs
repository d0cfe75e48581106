//! Memory tuning on the real model (SmolLM2-135M-Instruct): 10 random facts memorized
//! in one batch, exact recall 100 %, locality 100 % on 20 unrelated prompts (output
//! identical to the bare backbone), a later insert next to a stored fact does not
//! break it, and a new process that reopens the store gives the same answers.
//!
//! Skipped when the model is absent, except under `CI`, where that fails.

mod common;

use std::process::Command;

use candle_core::Device;
use mome::TuneOptions;
use mome::{AskOptions, Engine, EngineParams, Fact, FactStatus};
use mome::{Backbone, WeightFormat};
use rand::{Rng, SeedableRng};

use mome::synth::{random_name, LOCALITY_PROMPTS};

const CHILD_ENV: &str = "MOME_TEST_REOPEN_DB";

/// Random facts, random answers (digits, letters and dashes), like random labels.
fn random_facts(n: usize, seed: u64) -> Vec<Fact> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let templates = [
        "What is the secret code of {}?",
        "What is the password of the {} vault?",
        "Who guards the gate of {}?",
        "What is the favourite number of {}?",
        "Which ship carried the {} treaty?",
    ];
    (0..n)
        .map(|i| {
            let name = random_name(&mut rng);
            let prompt = templates[i % templates.len()].replace("{}", &name);
            let answer = match i % 3 {
                0 => format!("{}", rng.random_range(10_000..100_000)),
                1 => format!(
                    "{}{}-{}",
                    random_name(&mut rng).to_lowercase(),
                    rng.random_range(0..10),
                    rng.random_range(10..100)
                ),
                _ => format!("{} {}", random_name(&mut rng), random_name(&mut rng)),
            };
            Fact::new(prompt, answer)
        })
        .collect()
}

fn load() -> Option<Backbone> {
    let path = common::real_model_path()?;
    Some(Backbone::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect("load real model"))
}

/// The child side of the reopen check: prints one JSON answer per fact prompt.
#[test]
fn reopen_child() {
    let Some(db) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let facts = random_facts(10, 2026);
    let engine = Engine::open(std::path::Path::new(&db), None).expect("reopen");
    for f in &facts {
        let a = engine.ask(&f.prompt, &AskOptions::default()).expect("ask");
        println!("ANSWER {}", serde_json::to_string(&a.text).expect("json"));
    }
}

#[test]
fn memorize_ten_random_facts_recall_locality_reopen() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(bb) = load() else { return };
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let mut engine =
        Engine::open_or_create_with(&db, bb, None, EngineParams::default()).expect("engine");
    let facts = random_facts(10, 2026);
    let report = engine
        .memorize(&facts, &TuneOptions::default(), &mut |_| {})
        .expect("memorize");
    for o in &report.outcomes {
        eprintln!(
            "{:?} -> {:?}: {:?} loss {:.4} steps {}",
            o.fact.prompt, o.fact.answer, o.status, o.loss, o.steps
        );
    }
    eprintln!(
        "memorized {} in {:.1} s (model load excluded)",
        report.memorized, report.seconds
    );
    assert_eq!(report.memorized, 10, "all facts memorized");
    assert!(report.broken.is_empty());

    // Provenance.
    for o in &report.outcomes {
        let FactStatus::Memorized { id } = o.status else {
            unreachable!()
        };
        let m = engine.store().meta(id).expect("meta");
        assert_eq!(m.provenance.prompt.as_deref(), Some(o.fact.prompt.as_str()));
        assert_eq!(m.provenance.answer.as_deref(), Some(o.fact.answer.as_str()));
        assert_eq!(m.provenance.steps, Some(o.steps));
        assert!(m.provenance.final_loss.is_some_and(|l| l < 0.05));
        assert_eq!(
            m.provenance.backbone_digest.as_deref(),
            Some(engine.backbone().model.digest())
        );
        assert!(m.created_at_ms > 0);
    }

    // Exact recall.
    let mut answers = Vec::new();
    for f in &facts {
        let a = engine.ask(&f.prompt, &AskOptions::default()).expect("ask");
        assert_eq!(a.text, f.answer, "recall of {:?}", f.prompt);
        assert_eq!(a.selected.len(), 1);
        answers.push(a.text);
    }

    // Locality: identical tokens to the bare backbone on unrelated prompts.
    let short = AskOptions {
        max_tokens: 16,
        use_experts: true,
    };
    let mut best = f32::NEG_INFINITY;
    for p in LOCALITY_PROMPTS {
        let with = engine.ask(p, &short).expect("ask");
        let bare = engine
            .ask(
                p,
                &AskOptions {
                    use_experts: false,
                    ..short.clone()
                },
            )
            .expect("ask bare");
        best = best.max(
            with.candidates
                .first()
                .map_or(f32::NEG_INFINITY, |h| h.score),
        );
        assert!(
            with.selected.is_empty(),
            "{p:?} selected {:?}",
            with.selected
        );
        assert_eq!(with.tokens, bare.tokens, "locality of {p:?}");
    }
    eprintln!(
        "highest request-query score of an unrelated prompt: {best:.3} (tau {})",
        engine.params().selection.tau
    );

    // Inserting B next to A does not break A: same template, a near name.
    let a = &facts[0];
    let b = Fact::new(a.prompt.replace("code", "codes"), "31337");
    let r2 = engine
        .memorize(
            std::slice::from_ref(&b),
            &TuneOptions::default(),
            &mut |_| {},
        )
        .expect("memorize B");
    assert_eq!(r2.memorized, 1, "{:?}", r2.outcomes);
    assert!(r2.broken.is_empty(), "broken: {:?}", r2.broken);
    assert_eq!(
        engine
            .ask(&a.prompt, &AskOptions::default())
            .expect("ask")
            .text,
        a.answer
    );
    assert_eq!(
        engine
            .ask(&b.prompt, &AskOptions::default())
            .expect("ask")
            .text,
        b.answer
    );
    drop(engine);

    // A new process reopens the store and gives the same answers.
    let out = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "reopen_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &db)
        .output()
        .expect("spawn child");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let child: Vec<String> = stdout
        .lines()
        // The harness may print "test reopen_child ... " on the same line first.
        .filter_map(|l| l.find("ANSWER ").map(|i| &l[i + "ANSWER ".len()..]))
        .map(|j| serde_json::from_str(j).expect("json"))
        .collect();
    assert_eq!(child, answers, "answers after reopening in a new process");
    eprintln!("whole test: {:.1} s", t0.elapsed().as_secs_f64());
}
