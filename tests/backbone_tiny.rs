//! The backbone on tiny random models of the reference architecture: cache
//! consistency, op modes, checkpoint round trips against candle-transformers'
//! Llama implementations, adapter sites, queries, gradients and generation.

mod common;

use std::ops::ControlFlow;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use common::*;
use mome::{
    AdapterHook, AdapterSites, Adapters, GenerateOptions, KvCache, Llama, Logits, Mode, NoopHook,
    Pass, Sampling, StopReason, WeightFormat,
};

const PROMPT: [u32; 9] = [1, 40, 77, 120, 3, 9, 200, 255, 31];

fn all_logits(model: &Llama, tokens: &[u32], mode: Mode) -> Tensor {
    model
        .forward_batch(&[tokens], Logits::All, &Pass::bare(mode))
        .expect("forward")
        .squeeze(0)
        .expect("squeeze")
}

#[test]
fn kv_cache_decode_matches_full_sequence() {
    let model = tiny_model(1);
    let full = all_logits(&model, &PROMPT, Mode::Fast);
    let mut cache = KvCache::new(&model);
    // Prefill of 4, then one token at a time.
    let first = model
        .forward(&PROMPT[..4], &mut cache, None)
        .expect("prefill");
    assert!(max_abs_diff(&first, &full.i(3).expect("row")) < 1e-4);
    for (i, &tok) in PROMPT.iter().enumerate().skip(4) {
        let step = model.forward(&[tok], &mut cache, None).expect("step");
        let d = max_abs_diff(&step, &full.i(i).expect("row"));
        assert!(d < 1e-4, "position {i}: {d}");
    }
    assert_eq!(cache.len(), PROMPT.len());
}

#[test]
fn fast_and_differentiable_ops_agree() {
    let model = tiny_model(2);
    let fast = all_logits(&model, &PROMPT, Mode::Fast);
    let slow = all_logits(&model, &PROMPT, Mode::Differentiable);
    let d = max_abs_diff(&fast, &slow);
    assert!(d < 1e-4, "fast vs differentiable: {d}");
}

#[test]
fn batch_rows_match_single_rows() {
    let model = tiny_model(3);
    let a: &[u32] = &PROMPT[..6];
    let b: &[u32] = &[5, 6, 7, 8, 9, 10];
    let batch = model
        .forward_batch(&[a, b], Logits::All, &Pass::bare(Mode::Fast))
        .expect("batch");
    for (i, row) in [a, b].iter().enumerate() {
        let single = all_logits(&model, row, Mode::Fast);
        assert!(max_abs_diff(&batch.i(i).expect("row"), &single) < 1e-4);
    }
}

#[test]
fn safetensors_round_trip_matches_candle_transformers_llama() {
    let model = tiny_model(4);
    let dir = tempfile::tempdir().expect("tempdir");
    model.save_safetensors_dir(dir.path()).expect("save");
    let loaded = Llama::from_safetensors_dir(dir.path(), &Device::Cpu).expect("load");
    assert_eq!(loaded.config(), model.config());
    assert!(loaded.digest().starts_with("sha256-safetensors:"));
    let ours = all_logits(&model, &PROMPT, Mode::Fast);
    let reloaded = all_logits(&loaded, &PROMPT, Mode::Fast);
    assert_eq!(bits(&ours), bits(&reloaded), "round trip must be exact");

    // Oracle: candle-transformers' (non-quantized) Llama reads the same
    // directory in the Hugging Face layout; this checks the RoPE permutation.
    use candle_transformers::models::llama as hf;
    let cfg: hf::LlamaConfig =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).expect("config"))
            .expect("parse config");
    let cfg = cfg.into_config(false);
    // SAFETY: the safetensors file was written by this test into its own temporary
    // directory and is not modified while the mapping lives.
    #[allow(unsafe_code)]
    let vb = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(
            &[dir.path().join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .expect("varbuilder");
    let oracle = hf::Llama::load(vb, &cfg).expect("oracle");
    for t in [3, PROMPT.len()] {
        let mut cache = hf::Cache::new(true, DType::F32, &cfg, &Device::Cpu).expect("cache");
        let input = Tensor::new(&PROMPT[..t], &Device::Cpu)
            .expect("input")
            .unsqueeze(0)
            .expect("batch");
        let expected = oracle
            .forward(&input, 0, &mut cache)
            .expect("oracle forward");
        let got = ours.i(t - 1).expect("row");
        let d = max_abs_diff(&expected.squeeze(0).expect("squeeze"), &got);
        assert!(d < 1e-4, "vs candle-transformers llama at {t} tokens: {d}");
    }
}

#[test]
fn gguf_round_trip_matches_candle_transformers_quantized_llama() {
    let model = tiny_model(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.gguf");
    model
        .save_gguf(&path, &tiny_tokenizer_metadata())
        .expect("save");
    let loaded = Llama::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect("load");
    // GGUF stores eps as f32; the forward uses it as f32 anyway.
    let mut expected_config = model.config().clone();
    expected_config.rms_norm_eps = expected_config.rms_norm_eps as f32 as f64;
    assert_eq!(loaded.config(), &expected_config);
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(loaded.digest().len(), "sha256:".len() + 64);
    assert!(loaded.digest().starts_with("sha256:"));
    assert_ne!(bytes.len(), 0);
    let ours = all_logits(&model, &PROMPT, Mode::Fast);
    assert_eq!(bits(&ours), bits(&all_logits(&loaded, &PROMPT, Mode::Fast)));
    // Quantized format on f32 tensors: candle's QMatMul path.
    let q = Llama::from_gguf(&path, WeightFormat::Quantized, &Device::Cpu).expect("load q");
    let dq = max_abs_diff(&ours, &all_logits(&q, &PROMPT, Mode::Fast));
    assert!(dq < 1e-4, "quantized container of f32 tensors: {dq}");

    use candle_transformers::models::quantized_llama::ModelWeights;
    let mut file = std::fs::File::open(&path).expect("open");
    let content =
        candle_core::quantized::gguf_file::Content::read(&mut file).expect("gguf content");
    let mut oracle = ModelWeights::from_gguf(content, &mut file, &Device::Cpu).expect("oracle");
    let input = Tensor::new(&PROMPT[..], &Device::Cpu)
        .expect("input")
        .unsqueeze(0)
        .expect("batch");
    let expected = oracle.forward(&input, 0).expect("oracle forward");
    let d = max_abs_diff(
        &expected.squeeze(0).expect("squeeze"),
        &ours.i(PROMPT.len() - 1).expect("row"),
    );
    assert!(d < 1e-4, "vs quantized_llama: {d}");
}

#[test]
fn noop_hook_and_abstaining_experts_are_bit_identical() {
    let model = tiny_model(6);
    let sites = AdapterSites::new(1, &[1, 3]).expect("sites");
    let opts = GenerateOptions::greedy(12, vec![]);
    let bare = model
        .generate(&PROMPT, &opts, None, &mut |_| ControlFlow::Continue(()))
        .expect("bare");
    let bare_logits = all_logits(&model, &PROMPT, Mode::Fast);

    let noop = NoopHook;
    let with_noop = model
        .generate(
            &PROMPT,
            &opts,
            Some(Adapters {
                sites: &sites,
                hook: &noop,
            }),
            &mut |_| ControlFlow::Continue(()),
        )
        .expect("noop");
    assert_eq!(bare.tokens, with_noop.tokens);

    // Every expert below τ: the hook selects nothing.
    let d = model.d_model();
    let gated = GatedHook::random(&[1, 3], 5, d, 4, 1.01, 7);
    let adapters = Adapters {
        sites: &sites,
        hook: &gated,
    };
    let abstained = model
        .generate(&PROMPT, &opts, Some(adapters), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("gated");
    assert_eq!(bare.tokens, abstained.tokens);
    let logits = model
        .forward_batch(
            &[&PROMPT],
            Logits::All,
            &Pass::adapted(adapters, Mode::Fast),
        )
        .expect("forward")
        .squeeze(0)
        .expect("squeeze");
    assert_eq!(bits(&bare_logits), bits(&logits));

    // Every expert selected (τ = -1): the output changes.
    let open = GatedHook::random(&[1, 3], 5, d, 4, -1.0, 7);
    let logits = model
        .forward_batch(
            &[&PROMPT],
            Logits::All,
            &Pass::adapted(
                Adapters {
                    sites: &sites,
                    hook: &open,
                },
                Mode::Fast,
            ),
        )
        .expect("forward")
        .squeeze(0)
        .expect("squeeze");
    assert!(max_abs_diff(&bare_logits, &logits) > 1e-3);
}

/// Records what the backbone passes to the hook.
struct Recorder(std::sync::Mutex<Vec<(usize, Tensor, Tensor, Tensor)>>);

impl AdapterHook for Recorder {
    fn apply(
        &self,
        layer: usize,
        _pos: usize,
        h: &Tensor,
        h_norm: &Tensor,
        q: &Tensor,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .expect("lock")
            .push((layer, h.clone(), h_norm.clone(), q.clone()));
        Ok(h.clone())
    }
}

#[test]
fn hook_sees_layer_inputs_and_query_layer_queries() {
    let model = tiny_model(8);
    let sites = AdapterSites::new(1, &[2, 3]).expect("sites");
    let rec = Recorder(std::sync::Mutex::new(Vec::new()));
    let mut cache = KvCache::new(&model);
    let adapters = Adapters {
        sites: &sites,
        hook: &rec,
    };
    model
        .forward(&PROMPT, &mut cache, Some(adapters))
        .expect("prefill");
    model
        .forward(&[17], &mut cache, Some(adapters))
        .expect("step");
    let calls = rec.0.lock().expect("lock");
    assert_eq!(
        calls.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![2, 3, 2, 3]
    );
    let d = model.d_model();
    assert_eq!(calls[0].1.dims(), &[1, PROMPT.len(), d]);
    assert_eq!(calls[2].3.dims(), &[1, 1, d]);

    // The prompt's queries equal `queries()` (layers 0..=1 only).
    let q = model.queries(&PROMPT, 1).expect("queries");
    assert_eq!(q.per_token.dims(), &[PROMPT.len(), d]);
    assert!(max_abs_diff(&calls[0].3.squeeze(0).expect("sq"), &q.per_token) < 1e-6);
    let norm: f32 = q
        .pooled
        .sqr()
        .expect("sqr")
        .sum_all()
        .expect("sum")
        .to_scalar()
        .expect("scalar");
    assert!((norm - 1.0).abs() < 1e-5);
    // The decode step's query is the same as in a full pass.
    let mut extended = PROMPT.to_vec();
    extended.push(17);
    let q2 = model.queries(&extended, 1).expect("queries");
    let last = q2.per_token.i(PROMPT.len()).expect("row");
    assert!(max_abs_diff(&calls[2].3.flatten_all().expect("f"), &last) < 1e-4);

    // h_norm at layer 2 is input_layernorm_2(h_2): the residual after layer 1's
    // block; with a query layer of 2 it is the query itself.
    let sites2 = AdapterSites::new(2, &[2]).expect("sites");
    let rec2 = Recorder(std::sync::Mutex::new(Vec::new()));
    model
        .forward_batch(
            &[&PROMPT],
            Logits::Last,
            &Pass::adapted(
                Adapters {
                    sites: &sites2,
                    hook: &rec2,
                },
                Mode::Fast,
            ),
        )
        .expect("forward");
    let calls2 = rec2.0.lock().expect("lock");
    assert_eq!(bits(&calls2[0].2), bits(&calls2[0].3));
}

#[test]
fn cached_prefix_then_suffix_equals_full_pass() {
    let model = tiny_model(9);
    let sites = AdapterSites::new(1, &[2, 3]).expect("sites");
    let hook = GatedHook::random(&[2, 3], 3, model.d_model(), 2, -1.0, 3);
    let adapters = Adapters {
        sites: &sites,
        hook: &hook,
    };
    let pass = Pass::adapted(adapters, Mode::Differentiable);
    let full = model
        .forward_batch(&[&PROMPT], Logits::All, &pass)
        .expect("full");

    let prefix = model.embed(&[&PROMPT], 0).expect("embed");
    let prefix = model
        .run_layers(
            prefix,
            sites.first_adapted(),
            None,
            &Pass::queries_only(&sites, Mode::Fast),
        )
        .expect("prefix")
        .detach();
    assert!(prefix.queries.is_some());
    for _ in 0..2 {
        let rest = model
            .run_layers(prefix.clone(), model.num_layers(), None, &pass)
            .expect("suffix");
        let logits = model
            .logits(&rest, Logits::All, Mode::Differentiable)
            .expect("logits");
        assert!(max_abs_diff(&full, &logits) < 1e-4);
    }
}

/// A trainable rank-r adapter applied unconditionally at its layer.
struct TrainHook {
    a: Var,
    b: Var,
}

impl AdapterHook for TrainHook {
    fn apply(
        &self,
        _: usize,
        _: usize,
        h: &Tensor,
        h_norm: &Tensor,
        _: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (bsz, t, d) = h_norm.dims3()?;
        let x = h_norm.reshape((bsz * t, d))?;
        let delta = x
            .matmul(&self.a.as_tensor().t()?)?
            .matmul(&self.b.as_tensor().t()?)?;
        h + delta.reshape((bsz, t, d))?
    }
}

fn loss(model: &Llama, hook: &TrainHook, sites: &AdapterSites, tokens: &[u32]) -> Tensor {
    let pass = Pass::adapted(Adapters { sites, hook }, Mode::Differentiable);
    let logits = model
        .forward_batch(&[tokens], Logits::All, &pass)
        .expect("forward");
    let t = tokens.len();
    let logits = logits
        .squeeze(0)
        .expect("sq")
        .narrow(0, 0, t - 1)
        .expect("narrow");
    let targets = Tensor::new(&tokens[1..], &Device::Cpu).expect("targets");
    candle_nn::loss::cross_entropy(&logits, &targets).expect("loss")
}

#[test]
fn gradients_reach_adapters_and_match_finite_differences() {
    let model = tiny_model(10);
    let d = model.d_model();
    let r = 2;
    let sites = AdapterSites::new(0, &[1]).expect("sites");
    let init = |shape: (usize, usize), s: f32| {
        let n = shape.0 * shape.1;
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * s)
            .collect();
        Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).expect("t")).expect("var")
    };
    // B = 0 at initialisation: B still gets a gradient, A's is exactly zero.
    let hook = TrainHook {
        a: init((r, d), 0.2),
        b: Var::zeros((d, r), DType::F32, &Device::Cpu).expect("z"),
    };
    let grads = loss(&model, &hook, &sites, &PROMPT)
        .backward()
        .expect("backward");
    let gb = grads.get(hook.b.as_tensor()).expect("B gradient present");
    assert!(
        gb.abs()
            .expect("abs")
            .sum_all()
            .expect("sum")
            .to_scalar::<f32>()
            .expect("s")
            > 0.0
    );
    assert!(
        grads.get(hook.a.as_tensor()).is_some(),
        "A gradient present"
    );

    // Non-zero B: compare with central finite differences on a few entries.
    let hook = TrainHook {
        a: init((r, d), 0.2),
        b: init((d, r), 0.2),
    };
    let l0 = loss(&model, &hook, &sites, &PROMPT);
    let grads = l0.backward().expect("backward");
    let ga = grads
        .get(hook.a.as_tensor())
        .expect("A grad")
        .flatten_all()
        .expect("f")
        .to_vec1::<f32>()
        .expect("v");
    let eps = 1e-2f32;
    let base: Vec<f32> = hook
        .a
        .as_tensor()
        .flatten_all()
        .expect("f")
        .to_vec1()
        .expect("v");
    for idx in [0usize, 7, d + 3] {
        let mut plus = base.clone();
        plus[idx] += eps;
        let mut minus = base.clone();
        minus[idx] -= eps;
        hook.a
            .set(&Tensor::from_vec(plus, (r, d), &Device::Cpu).expect("t"))
            .expect("set");
        let lp: f32 = loss(&model, &hook, &sites, &PROMPT).to_scalar().expect("s");
        hook.a
            .set(&Tensor::from_vec(minus, (r, d), &Device::Cpu).expect("t"))
            .expect("set");
        let lm: f32 = loss(&model, &hook, &sites, &PROMPT).to_scalar().expect("s");
        hook.a
            .set(&Tensor::from_vec(base.clone(), (r, d), &Device::Cpu).expect("t"))
            .expect("set");
        let fd = (lp - lm) / (2.0 * eps);
        let rel = (fd - ga[idx]).abs() / ga[idx].abs().max(1e-3);
        assert!(
            rel < 2e-2,
            "A[{idx}]: autograd {} vs finite difference {fd}",
            ga[idx]
        );
    }
}

#[test]
fn generation_greedy_sampled_stops_and_callback() {
    let model = tiny_model(11);
    let greedy = GenerateOptions::greedy(8, vec![]);
    let run = |opts: &GenerateOptions| {
        model
            .generate(&PROMPT, opts, None, &mut |_| ControlFlow::Continue(()))
            .expect("generate")
    };
    let g1 = run(&greedy);
    assert_eq!(g1.tokens.len(), 8);
    assert_eq!(g1.stop, StopReason::MaxTokens);
    assert_eq!(g1.tokens, run(&greedy).tokens);
    // Greedy equals the argmax of a full forward at each step.
    let mut seq = PROMPT.to_vec();
    seq.extend(&g1.tokens[..3]);
    let logits = all_logits(&model, &seq, Mode::Fast);
    for k in 0..3 {
        let row = logits.i(PROMPT.len() - 1 + k).expect("row");
        assert_eq!(mome::argmax(&row).expect("argmax"), g1.tokens[k]);
    }

    let sampled = |seed| GenerateOptions {
        max_tokens: 8,
        sampling: Sampling::TopP {
            temperature: 1.5,
            top_p: 0.95,
            seed,
        },
        stop_tokens: vec![],
    };
    let s1 = run(&sampled(1));
    assert_eq!(s1.tokens, run(&sampled(1)).tokens, "same seed, same tokens");
    let others: Vec<Vec<u32>> = (2..6).map(|s| run(&sampled(s)).tokens).collect();
    assert!(
        others.iter().any(|o| *o != s1.tokens),
        "seeds change the sample"
    );
    // A tiny top_p keeps only the most likely token: greedy.
    let narrow = GenerateOptions {
        sampling: Sampling::TopP {
            temperature: 1.0,
            top_p: 1e-6,
            seed: 3,
        },
        ..greedy.clone()
    };
    assert_eq!(run(&narrow).tokens, g1.tokens);

    // Stop token: the 3rd greedy token.
    let stop = g1.tokens[2];
    let first_stop = g1.tokens.iter().position(|&t| t == stop).expect("present");
    let stopped = run(&GenerateOptions::greedy(8, vec![stop]));
    assert_eq!(stopped.stop, StopReason::StopToken(stop));
    assert_eq!(stopped.tokens, g1.tokens[..=first_stop]);

    // The callback stops after two tokens.
    let mut seen = Vec::new();
    let cb = model
        .generate(&PROMPT, &greedy, None, &mut |t| {
            seen.push(t);
            if seen.len() == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("generate");
    assert_eq!(cb.stop, StopReason::Callback);
    assert_eq!(seen, g1.tokens[..2]);

    // The context fills up: stops instead of failing.
    let long: Vec<u32> = (0..model.config().max_position_embeddings as u32 - 2)
        .map(|i| 3 + i % 200)
        .collect();
    let full = model
        .generate(
            &long,
            &GenerateOptions::greedy(10, vec![]),
            None,
            &mut |_| ControlFlow::Continue(()),
        )
        .expect("generate");
    assert_eq!(full.stop, StopReason::ContextFull);
    assert_eq!(full.tokens.len(), 3);
}

#[test]
fn backbone_from_tiny_gguf_chats() {
    let model = tiny_model(12);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tiny.gguf");
    model
        .save_gguf(&path, &tiny_tokenizer_metadata())
        .expect("save");
    let bb = mome::Backbone::from_gguf(&path, WeightFormat::F32, &Device::Cpu).expect("load");
    assert_eq!(
        bb.tokenizer.default_system_prompt(),
        Some("You are a tiny model")
    );
    let ids = bb.tokenizer.encode_user_prompt("hi there").expect("encode");
    let text = bb
        .tokenizer
        .chat_text(&[mome::ChatMessage::user("hi there")], true);
    assert_eq!(
        ids,
        bb.tokenizer
            .encode_with_special_tokens(&text)
            .expect("encode")
    );
    assert_eq!(bb.tokenizer.decode(&ids, false).expect("decode"), text);
    let mut streamed = String::new();
    let reply = bb
        .chat(
            &[mome::ChatMessage::user("hi there")],
            &bb.greedy_options(6),
            None,
            &mut |piece| {
                streamed.push_str(piece);
                ControlFlow::Continue(())
            },
        )
        .expect("chat");
    assert_eq!(streamed, reply.text);
}

#[test]
fn sharded_safetensors_checkpoint_with_tokenizer_json() {
    let model = tiny_model(13);
    let dir = tempfile::tempdir().expect("tempdir");
    let gguf = dir.path().join("tiny.gguf");
    model
        .save_gguf(&gguf, &tiny_tokenizer_metadata())
        .expect("save");
    let from_gguf =
        mome::Backbone::from_gguf(&gguf, WeightFormat::F32, &Device::Cpu).expect("load");

    // Two shards and an index, as large Hugging Face checkpoints ship.
    let ckpt = dir.path().join("ckpt");
    model.save_safetensors_dir(&ckpt).expect("save");
    std::fs::remove_file(ckpt.join("model.safetensors")).expect("rm");
    let tensors = model.to_hf_tensors().expect("tensors");
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: std::collections::HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, ckpt.join(file)).expect("shard");
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(ckpt.join("model.safetensors.index.json"), index.to_string()).expect("index");
    from_gguf
        .tokenizer
        .inner()
        .save(ckpt.join("tokenizer.json"), false)
        .expect("tokenizer.json");

    let from_st = mome::Backbone::from_safetensors_dir(&ckpt, &Device::Cpu).expect("load");
    let ids = from_st.tokenizer.encode("the thin tin").expect("encode");
    assert_eq!(
        ids,
        from_gguf.tokenizer.encode("the thin tin").expect("encode")
    );
    let opts = GenerateOptions::greedy(6, vec![]);
    let none = || |_| ControlFlow::Continue(());
    let a = from_gguf
        .model
        .generate(&ids, &opts, None, &mut none())
        .expect("gen");
    let b = from_st
        .model
        .generate(&ids, &opts, None, &mut none())
        .expect("gen");
    assert_eq!(a.tokens, b.tokens);
}
