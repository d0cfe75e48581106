//! Bad input to the backbone gets a typed error naming what is wrong; nothing panics.

mod common;

use std::ops::ControlFlow;

use candle_core::quantized::gguf_file::Value;
use candle_core::Device;
use common::*;
use mome::{
    locate_model, AdapterSites, Adapters, Backbone, GenerateOptions, KvCache, Llama, Logits, Mode,
    ModelError, NoopHook, Pass, Sampling, WeightFormat,
};

fn tiny_gguf(dir: &std::path::Path, extra: &[(String, Value)]) -> std::path::PathBuf {
    let path = dir.join("tiny.gguf");
    let mut md = tiny_tokenizer_metadata();
    md.extend(extra.iter().cloned());
    tiny_model(1).save_gguf(&path, &md).expect("save");
    path
}

#[test]
fn missing_model_tells_how_to_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.gguf");
    let err = locate_model(Some(&missing)).expect_err("missing");
    assert!(matches!(err, ModelError::ModelNotFound { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("tools/fetch-model.sh") && msg.contains("nope.gguf"),
        "{msg}"
    );
    let err = Llama::from_gguf(&missing, WeightFormat::F32, &Device::Cpu).expect_err("missing");
    assert!(matches!(err, ModelError::ModelNotFound { .. }), "{err}");
}

#[test]
fn truncated_and_corrupt_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_gguf(dir.path(), &[]);
    let bytes = std::fs::read(&path).expect("read");
    for cut in [bytes.len() - 1, bytes.len() / 2, bytes.len() / 10] {
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("truncated");
        assert!(
            matches!(
                err,
                ModelError::Truncated { .. } | ModelError::InvalidGguf { .. }
            ),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("tiny.gguf"), "{err}");
    }
    std::fs::write(&path, &bytes[..bytes.len() - 1]).expect("write");
    let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("truncated");
    assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
    for junk in [
        &b""[..],
        b"GGUF",
        b"not a gguf file at all",
        &[0xffu8; 4096][..],
    ] {
        std::fs::write(&path, junk).expect("write");
        let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("junk");
        assert!(matches!(err, ModelError::InvalidGguf { .. }), "{err}");
    }
}

#[test]
fn wrong_architecture_and_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let arch = |a: &str| vec![("general.architecture".to_string(), Value::String(a.into()))];
    // Later keys win in the metadata map.
    let path = tiny_gguf(dir.path(), &arch("gpt2"));
    let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("arch");
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("gpt2"));

    let moe = vec![("llama.expert_count".to_string(), Value::U32(8))];
    let path = tiny_gguf(dir.path(), &moe);
    let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("moe");
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err}"
    );

    // Metadata that disagrees with the tensors: a wider FFN than stored.
    let wide = vec![("llama.feed_forward_length".to_string(), Value::U32(100))];
    let path = tiny_gguf(dir.path(), &wide);
    let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("shape");
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("blk.0.ffn_gate.weight"), "{err}");
    assert!(err.to_string().contains("[100, 48]"), "{err}");

    // Partial rotary embeddings are another architecture.
    let rope = vec![("llama.rope.dimension_count".to_string(), Value::U32(4))];
    let path = tiny_gguf(dir.path(), &rope);
    let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("rope");
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err}"
    );

    let heads = vec![("llama.attention.head_count_kv".to_string(), Value::U32(4))];
    let path = tiny_gguf(dir.path(), &heads);
    let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("heads");
    assert!(matches!(err, ModelError::InvalidConfig(_)), "{err}");

    let more_layers = vec![("llama.block_count".to_string(), Value::U32(5))];
    let path = tiny_gguf(dir.path(), &more_layers);
    let err = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("layers");
    assert!(
        matches!(err, ModelError::MissingTensor { ref name, .. } if name == "blk.4.attn_norm.weight"),
        "{err}"
    );

    let bad_tok = vec![(
        "tokenizer.ggml.model".to_string(),
        Value::String("llama".into()),
    )];
    let path = tiny_gguf(dir.path(), &bad_tok);
    let err = Backbone::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect_err("tokenizer");
    assert!(matches!(err, ModelError::BadMetadata { .. }), "{err}");
}

#[test]
fn bad_safetensors_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Llama::from_safetensors_dir(dir.path(), &Device::Cpu).expect_err("empty dir");
    assert!(matches!(err, ModelError::ModelNotFound { .. }), "{err}");
    tiny_model(2)
        .save_safetensors_dir(dir.path())
        .expect("save");
    let cfg_path = dir.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).expect("read");
    std::fs::write(
        &cfg_path,
        cfg.replace("\"llama\"", "\"mistral\"")
            .replace("LlamaForCausalLM", "MistralForCausalLM"),
    )
    .expect("write");
    let err = Llama::from_safetensors_dir(dir.path(), &Device::Cpu).expect_err("arch");
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { .. }),
        "{err}"
    );
    std::fs::write(&cfg_path, &cfg).expect("write");
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).expect("read");
    std::fs::write(&st, &bytes[..bytes.len() / 2]).expect("write");
    let err = Llama::from_safetensors_dir(dir.path(), &Device::Cpu).expect_err("truncated");
    assert!(
        matches!(err, ModelError::InvalidSafetensors { .. }),
        "{err}"
    );
}

#[test]
fn bad_tokens_context_and_options() {
    let model = tiny_model(3);
    let vocab = model.config().vocab_size as u32;
    let mut cache = KvCache::new(&model);
    let err = model
        .forward(&[1, vocab, 2], &mut cache, None)
        .expect_err("oov");
    assert!(
        matches!(err, ModelError::TokenOutOfVocab { token, position: 1, .. } if token == vocab),
        "{err}"
    );
    let err = model.forward(&[], &mut cache, None).expect_err("empty");
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");
    let err = model
        .forward_batch(&[&[1, 2], &[3]], Logits::Last, &Pass::bare(Mode::Fast))
        .expect_err("ragged");
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");

    let max = model.config().max_position_embeddings;
    let long = vec![5u32; max + 1];
    let err = model
        .forward(&long, &mut cache, None)
        .expect_err("overflow");
    assert!(
        matches!(err, ModelError::ContextOverflow { needed, max: m } if needed == max + 1 && m == max),
        "{err}"
    );
    model
        .forward(&vec![5u32; max - 1], &mut cache, None)
        .expect("fits");
    let err = model
        .forward(&[5, 5], &mut cache, None)
        .expect_err("overflow");
    assert!(matches!(err, ModelError::ContextOverflow { .. }), "{err}");

    let none = |_| ControlFlow::Continue(());
    let err = model
        .generate(&long, &GenerateOptions::greedy(1, vec![]), None, &mut {
            none
        })
        .expect_err("overflow");
    assert!(matches!(err, ModelError::ContextOverflow { .. }), "{err}");
    for (temperature, top_p) in [
        (0.0, 0.9),
        (f32::NAN, 0.9),
        (1.0, 0.0),
        (1.0, 1.5),
        (-1.0, 0.5),
    ] {
        let opts = GenerateOptions {
            max_tokens: 2,
            sampling: Sampling::TopP {
                temperature,
                top_p,
                seed: 0,
            },
            stop_tokens: vec![],
        };
        let err = model
            .generate(&[1, 2], &opts, None, &mut |_| ControlFlow::Continue(()))
            .expect_err("options");
        assert!(matches!(err, ModelError::InvalidOptions(_)), "{err}");
    }
}

#[test]
fn sites_that_do_not_fit_and_misuse() {
    let model = tiny_model(4);
    let layers = model.num_layers();
    let sites = AdapterSites::new(0, &[layers]).expect("sites");
    let err = model
        .check_sites(&sites, model.d_model())
        .expect_err("layer");
    assert!(matches!(err, ModelError::SitesMismatch(_)), "{err}");
    let ok_sites = AdapterSites::new(0, &[1]).expect("sites");
    let err = model.check_sites(&ok_sites, 576).expect_err("d_model");
    assert!(err.to_string().contains("576"), "{err}");
    let noop = NoopHook;
    let err = model
        .forward(
            &[1, 2],
            &mut KvCache::new(&model),
            Some(Adapters {
                sites: &sites,
                hook: &noop,
            }),
        )
        .expect_err("layer");
    assert!(matches!(err, ModelError::SitesMismatch(_)), "{err}");
    let err = model.queries(&[1, 2], layers).expect_err("query layer");
    assert!(matches!(err, ModelError::SitesMismatch(_)), "{err}");

    // A KV cache at the wrong position.
    let mut cache = KvCache::new(&model);
    model
        .forward(&[1, 2, 3], &mut cache, None)
        .expect("prefill");
    let h = model.embed(&[&[4]], 0).expect("embed");
    let err = model
        .run_layers(h, layers, Some(&mut cache), &Pass::bare(Mode::Fast))
        .expect_err("cache");
    assert!(
        matches!(
            err,
            ModelError::CacheMismatch {
                layer: 0,
                expected: 0,
                found: 3
            }
        ),
        "{err}"
    );

    // Training through quantized weights is refused, not silently gradient-free.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.gguf");
    model.save_gguf(&path, &[]).expect("save");
    let q = Llama::from_gguf(&path, WeightFormat::Quantized, &Device::Cpu).expect("load");
    let err = q
        .forward_batch(&[&[1, 2]], Logits::All, &Pass::bare(Mode::Differentiable))
        .expect_err("quantized");
    assert!(matches!(err, ModelError::NotDifferentiable(_)), "{err}");
    let err = q.save_safetensors_dir(dir.path()).expect_err("export");
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");

    // A hook that fails names its layer.
    struct Failing;
    impl mome::AdapterHook for Failing {
        fn apply(
            &self,
            _: usize,
            _: usize,
            _: &candle_core::Tensor,
            _: &candle_core::Tensor,
            _: &candle_core::Tensor,
        ) -> candle_core::Result<candle_core::Tensor> {
            candle_core::bail!("boom")
        }
    }
    let err = model
        .forward(
            &[1],
            &mut KvCache::new(&model),
            Some(Adapters {
                sites: &ok_sites,
                hook: &Failing,
            }),
        )
        .expect_err("hook");
    assert!(matches!(err, ModelError::Hook { layer: 1, .. }), "{err}");
}

#[test]
fn corrupted_bytes_never_panic() {
    use proptest::prelude::*;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tiny_gguf(dir.path(), &[]);
    let original = std::fs::read(&path).expect("read");
    let header_len = 4096.min(original.len());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &proptest::collection::vec((0..header_len, any::<u8>()), 1..8),
            |edits| {
                let mut bytes = original.clone();
                for (i, b) in edits {
                    bytes[i] = b;
                }
                std::fs::write(&path, &bytes).expect("write");
                // Any outcome but a panic is acceptable: a corrupt header may still parse.
                let _ = Backbone::from_gguf(&path, WeightFormat::F32, &Device::Cpu);
                Ok(())
            },
        )
        .expect("no panic");
}
