//! `mome search --query-text` with the real model: experts whose keys are the pooled
//! queries of known prompts are found for those prompts, best first with a cosine score
//! near 1. Skipped when the model is missing (fails under CI, which fetches it).

mod common;

use candle_core::Device;
use common::{expert, ok, s};
use mome::{Backbone, WeightFormat};
use mome::{ExpertIndex, IndexParams};
use mome::{Provenance, Store, StoreConfig};
use std::sync::Arc;

#[test]
fn search_finds_the_experts_of_a_prompt() {
    let model = match mome::locate_model(None) {
        Ok(p) => p,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI without the model: {e}"
            );
            eprintln!("skipping: {e}");
            return;
        }
    };
    let bb = Backbone::from_gguf(&model, WeightFormat::F32, &Device::Cpu).unwrap();
    let cfg = StoreConfig::new(576, 576, 8, vec![8, 12])
        .with_query_layer(8)
        .with_backbone_digest(bb.model.digest());
    let facts = [
        ("The capital of France is", "Paris"),
        ("The secret code of Zorblax is", "48213"),
        ("My favourite colour is", "teal"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    {
        let store = Arc::new(Store::create(&db, cfg.clone()).unwrap());
        let index = ExpertIndex::open_with(store, IndexParams::flat()).unwrap();
        // Filler experts with random keys first, so that the facts are not ids 1..3.
        index
            .insert_batch((0..40).map(|s| expert(&cfg, s)).collect())
            .unwrap();
        let mut experts = Vec::new();
        for (prompt, answer) in facts {
            let tokens = bb.tokenizer.encode_user_prompt(prompt).unwrap();
            let key: Vec<half::f16> = bb
                .model
                .queries(&tokens, 8)
                .unwrap()
                .pooled
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(half::f16::from_f32)
                .collect();
            let mut e = expert(&cfg, 1000);
            e.key = key;
            e.provenance = Provenance::fact(prompt, answer);
            experts.push(e);
        }
        index.insert_batch(experts).unwrap();
    }
    let model = s(&model);
    let out = ok(&[
        "search",
        "--db",
        s(&db),
        "--model",
        model,
        "--query-text",
        "The secret code of Zorblax is",
        "-k",
        "3",
        "--json",
    ])
    .json();
    let hits = out["hits"].as_array().unwrap();
    assert_eq!(out["stage"], "retrieval");
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["id"], 42);
    assert_eq!(hits[0]["provenance"]["answer"], "48213");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.99, "{hits:?}");
    assert!(hits[1]["score"].as_f64().unwrap() < hits[0]["score"].as_f64().unwrap());

    let text = ok(&[
        "search",
        "--db",
        s(&db),
        "--model",
        model,
        "--query-text",
        "The capital of France is",
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
