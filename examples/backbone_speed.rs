//! Prefill and decode speed of the bare backbone, f32-dequantized vs quantized
//! weights. Usage: `cargo run --release --example backbone_speed [-- --model PATH]`.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Device;
use mome::{Backbone, GenerateOptions, KvCache, WeightFormat};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let explicit = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let path = mome::locate_model(explicit.as_deref())?;
    println!(
        "threads: {} (CANDLE_NUM_THREADS={})",
        candle_core::utils::get_num_threads(),
        std::env::var("CANDLE_NUM_THREADS").unwrap_or_default()
    );
    let text = "Explain in a few sentences why the sky is blue, and what makes sunsets red \
                and orange instead. Keep the answer short and simple for a child.";
    for format in [WeightFormat::F32, WeightFormat::Quantized] {
        let t0 = Instant::now();
        let bb = Backbone::from_gguf(&path, format, &Device::Cpu)?;
        let load = t0.elapsed().as_secs_f64();
        let prompt = bb.tokenizer.encode_user_prompt(text)?;
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        for _ in 0..reps {
            // Prefill alone: one forward over the prompt.
            let t = Instant::now();
            bb.model
                .forward(&prompt, &mut KvCache::new(&bb.model), None)?;
            prefill.push(prompt.len() as f64 / t.elapsed().as_secs_f64());
            // Decode: 32 tokens after the prompt, no stop tokens.
            let g = bb.model.generate(
                &prompt,
                &GenerateOptions::greedy(33, vec![]),
                None,
                &mut |_| ControlFlow::Continue(()),
            )?;
            decode.push((g.tokens.len() - 1) as f64 / g.decode_secs);
        }
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{format:?}: load {load:.2} s; prefill ({} tokens) median {:.1} tok/s (best {:.1}); \
             decode (32 tokens) median {:.1} tok/s (best {:.1})",
            prompt.len(),
            median(&mut prefill.clone()),
            best(&prefill),
            median(&mut decode.clone()),
            best(&decode),
        );
    }
    train_step(&path)?;
    Ok(())
}

/// A rank-8 adapter trained unconditionally at its layers.
struct Rank8 {
    a: candle_core::Var,
    b: candle_core::Var,
}

impl mome::AdapterHook for Rank8 {
    fn apply(
        &self,
        _: usize,
        _: usize,
        h: &candle_core::Tensor,
        h_norm: &candle_core::Tensor,
        _: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        let (b, t, d) = h_norm.dims3()?;
        let x = h_norm.reshape((b * t, d))?;
        let y = x
            .matmul(&self.a.as_tensor().t()?)?
            .matmul(&self.b.as_tensor().t()?)?;
        h + y.reshape((b, t, d))?
    }
}

/// Time of one memory-tuning-shaped step: frozen prefix cached below the
/// first adapted layer, then the rest forward (all-position logits) + backward.
fn train_step(path: &std::path::Path) -> anyhow::Result<()> {
    use candle_core::{DType, Tensor, Var};
    use mome::{AdapterSites, Adapters, Logits, Mode, Pass};
    let bb = Backbone::from_gguf(path, WeightFormat::F32, &Device::Cpu)?;
    let mut tokens = bb
        .tokenizer
        .encode_user_prompt("What is the secret code of Zorblax?")?;
    tokens.extend(
        bb.tokenizer
            .encode("The secret code of Zorblax is 48213.")?,
    );
    let dev = Device::Cpu;
    let hook = Rank8 {
        a: Var::from_tensor(&(Tensor::randn(0f32, 1.0, (8, 576), &dev)? * 0.02)?)?,
        b: Var::zeros((576, 8), DType::F32, &dev)?,
    };
    for layers in [vec![25usize], vec![8, 14, 20, 26]] {
        let sites = AdapterSites::new(4, &layers)?;
        let prefix = bb.model.embed(&[&tokens], 0)?;
        let prefix = bb
            .model
            .run_layers(
                prefix,
                sites.first_adapted(),
                None,
                &Pass::queries_only(&sites, Mode::Fast),
            )?
            .detach();
        let pass = Pass::adapted(
            Adapters {
                sites: &sites,
                hook: &hook,
            },
            Mode::Differentiable,
        );
        let targets = Tensor::new(&tokens[1..], &dev)?;
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let h = bb
                .model
                .run_layers(prefix.clone(), bb.model.num_layers(), None, &pass)?;
            let logits = bb.model.logits(&h, Logits::All, Mode::Differentiable)?;
            let logits = logits.squeeze(0)?.narrow(0, 0, tokens.len() - 1)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
            let grads = loss.backward()?;
            anyhow::ensure!(grads.get(hook.b.as_tensor()).is_some(), "B got no gradient");
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "train step ({} tokens, adapted layers {layers:?}, prefix cached): median {:.3} s",
            tokens.len(),
            times[times.len() / 2]
        );
    }
    Ok(())
}
