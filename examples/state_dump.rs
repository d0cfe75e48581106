//! Dumps the real backbone's query-layer states of prompts, for offline analysis of
//! selection rules (docs/BENCHMARKS.md §Selection): for every prompt of a JSONL file
//! (`{"prompt": ...}` per line), the chat-formatted tokens, and at each requested layer
//! the normalised input of that layer (`Llama::queries`) of the user message and the
//! template suffix, in f16; plus the mean state of the default system prefix per layer.
//!
//! `cargo run --release --example state_dump -- --in PROMPTS.jsonl --out DIR [--layers 4,8] [--model PATH]`
//!
//! Writes `DIR/index.jsonl` (per prompt: tokens, user span, offset into the state files),
//! `DIR/L<layer>.f16` (rows of d_model), `DIR/centre_L<layer>.f32`.

use std::io::{BufRead, Write};

use candle_core::Device;
use half::f16;
use mome::{Backbone, ChatMessage, WeightFormat};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let input = get("--in").ok_or_else(|| anyhow::anyhow!("--in PROMPTS.jsonl"))?;
    let out = std::path::PathBuf::from(get("--out").ok_or_else(|| anyhow::anyhow!("--out DIR"))?);
    let layers: Vec<usize> = get("--layers")
        .unwrap_or_else(|| "4,8".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let model_path = get("--model").map(std::path::PathBuf::from);
    let bb = Backbone::locate_and_load(model_path.as_deref(), WeightFormat::F32, &Device::Cpu)?;
    let tok = &bb.tokenizer;
    std::fs::create_dir_all(&out)?;

    let sys = tok.encode_chat(&[], false)?;
    let mut prefix = sys.clone();
    if let Some(s) = tok.token_id("<|im_start|>") {
        prefix.push(s);
    }
    prefix.extend(tok.encode("user\n")?);
    for &l in &layers {
        let q = bb.model.queries(&sys, l)?;
        let c: Vec<f32> = q.per_token.mean(0)?.to_vec1()?;
        let bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(out.join(format!("centre_L{l}.f32")), bytes)?;
    }
    let mut files: Vec<_> = layers
        .iter()
        .map(|l| std::fs::File::create(out.join(format!("L{l}.f16"))).map(std::io::BufWriter::new))
        .collect::<Result<_, _>>()?;
    let mut index = std::io::BufWriter::new(std::fs::File::create(out.join("index.jsonl"))?);
    let mut row = 0usize;
    let reader = std::io::BufReader::new(std::fs::File::open(&input)?);
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let prompt = v["prompt"].as_str().unwrap_or_default().to_string();
        let tokens = tok.encode_chat(&[ChatMessage::user(prompt.clone())], true)?;
        let start = prefix.len();
        let mut pieces = Vec::new();
        for &t in &tokens[start..] {
            pieces.push(tok.decode(&[t], false)?);
        }
        for (f, &l) in files.iter_mut().zip(&layers) {
            let q = bb.model.queries(&tokens, l)?;
            let rows: Vec<Vec<f32>> = q.per_token.to_vec2()?;
            for r in &rows[start..] {
                let b: Vec<u8> = r
                    .iter()
                    .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                    .collect();
                f.write_all(&b)?;
            }
        }
        let rec = serde_json::json!({
            "prompt": prompt,
            "row": row,
            "len": tokens.len() - start,
            "tokens": &tokens[start..],
            "pieces": pieces,
        });
        writeln!(index, "{rec}")?;
        row += tokens.len() - start;
        if n % 200 == 0 {
            eprintln!("state_dump: {n} prompts");
        }
    }
    for f in &mut files {
        f.flush()?;
    }
    index.flush()?;
    eprintln!("state_dump: {row} rows");
    Ok(())
}
