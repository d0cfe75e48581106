//! Prefill and decode speed of the bare backbone, f32-dequantized vs quantized
//! weights. Usage: `cargo run --release --example backbone_speed [-- --model PATH]`.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Device;
use mome::model::{Backbone, GenerateOptions, KvCache, WeightFormat};

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
    let path = mome::model::locate_model(explicit.as_deref())?;
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
    Ok(())
}
