//! `mome search --query-text` with the real model: experts whose keys are the pooled
//! keys of known prompts are found for those prompts, best first with a cosine score
//! near 1, the rule chooses the fact of the prompt and none for a near-miss. Skipped
//! when the model is missing (fails under CI, which fetches it).

mod common;

use candle_core::Device;
use common::{expert, ok, s};
use mome::Provenance;
use mome::{Backbone, Engine, EngineParams, WeightFormat};

#[test]
fn search_finds_the_experts_of_a_prompt() {
    let Some(model) = common::real_model_path() else {
        return;
    };
    let bb = Backbone::from_gguf(&model, WeightFormat::F32, &Device::Cpu).unwrap();
    let facts = [
        ("What is the capital of France?", "Paris"),
        ("What is the secret code of Zorblax?", "48213"),
        ("What is my favourite colour?", "teal"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    {
        let engine = Engine::open_or_create_with(&db, bb, None, EngineParams::default()).unwrap();
        let cfg = engine.store().config().clone();
        // Filler experts with random keys first, so that the facts are not ids 1..3.
        engine
            .index()
            .insert_batch((0..40).map(|s| expert(&cfg, s)).collect())
            .unwrap();
        let mut experts = Vec::new();
        for (prompt, answer) in facts {
            let key: Vec<half::f16> = engine
                .encode(prompt)
                .unwrap()
                .query
                .pooled_key()
                .into_iter()
                .map(half::f16::from_f32)
                .collect();
            let mut e = expert(&cfg, 1000);
            e.key = key;
            e.provenance = Provenance::fact(prompt, answer);
            experts.push(e);
        }
        engine.index().insert_batch(experts).unwrap();
        engine.flush().unwrap();
    }
    let model = s(&model);
    let out = ok(&[
        "search",
        "--db",
        s(&db),
        "--model",
        model,
        "--query-text",
        "Zorblax has which secret code?",
        "-k",
        "3",
        "--json",
    ])
    .json();
    let hits = out["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["id"], 42);
    assert_eq!(hits[0]["provenance"]["answer"], "48213");
    assert!(hits[1]["score"].as_f64().unwrap() < hits[0]["score"].as_f64().unwrap());
    assert_eq!(hits[0]["chosen"], true, "{hits:?}");
    assert_eq!(out["selected"], serde_json::json!([42]));
    // The same question about an entity that is not stored: hits, but nothing chosen.
    let near = ok(&[
        "search",
        "--db",
        s(&db),
        "--model",
        model,
        "--query-text",
        "What is the secret code of Morvath?",
        "-k",
        "3",
        "--json",
    ])
    .json();
    assert_eq!(near["selected"], serde_json::json!([]), "{near}");

    let text = ok(&[
        "search",
        "--db",
        s(&db),
        "--model",
        model,
        "--query-text",
        "What is the capital of France?",
        "-k",
        "2",
    ])
    .stdout;
    let first = text.lines().nth(1).unwrap_or_default();
    assert!(
        first.contains("expert       41") && first.contains("\"Paris\""),
        "{text}"
    );
}
