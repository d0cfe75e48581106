//! Measures how per-token queries of the real backbone score against fact keys, to
//! choose the query layer, the pooling and τ (docs/BENCHMARKS.md, "Choosing τ").
//! Usage: `cargo run --release --example gate_probe [-- --model PATH]`.

use candle_core::{Device, Tensor};
use mome::{Backbone, WeightFormat};

const FACTS: &[(&str, &str)] = &[
    ("What is the secret code of Zorblax?", "48213"),
    ("What is the password of the Quendor vault?", "xv7-kapo-31"),
    ("Who guards the gate of Morvath?", "Ilsa Trennik"),
    ("What is the favourite number of Pellucid?", "90417"),
    ("Which colour is the flag of Drasmoor?", "teal and amber"),
    ("What is the secret code of Vantrel?", "77120"),
];

const UNRELATED: &[(&str, &str)] = &[
    (
        "What is the capital of France?",
        "The capital of France is Paris.",
    ),
    ("Write one word about the sea.", "Waves."),
    (
        "How many legs does a spider have?",
        "A spider has eight legs.",
    ),
    ("What is 2 + 2?", "2 + 2 = 4."),
    ("Name a colour of the sky.", "Blue."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    (
        "What is the secret to a happy life?",
        "Kindness and balance.",
    ),
    ("Tell me a code word.", "Falcon."),
    (
        "What is the boiling point of water?",
        "100 degrees Celsius.",
    ),
    ("Translate 'cat' into French.", "Chat."),
];

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().expect("rows")
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        d / (na * nb)
    }
}

fn mean(v: &[Vec<f32>]) -> Vec<f32> {
    let mut m = vec![0f32; v[0].len()];
    for r in v {
        for (a, b) in m.iter_mut().zip(r) {
            *a += b / v.len() as f32;
        }
    }
    m
}

fn sub(a: &[f32], c: &[f32]) -> Vec<f32> {
    a.iter().zip(c).map(|(x, y)| x - y).collect()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let explicit = args
        .iter()
        .position(|a| a == "--model")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from);
    let path = mome::locate_model(explicit.as_deref())?;
    let bb = Backbone::from_gguf(&path, WeightFormat::F32, &Device::Cpu)?;
    let tok = &bb.tokenizer;
    let im_end = tok.token_id("<|im_end|>").expect("im_end");
    // Token sequences: prompt (chat-formatted), answer (+ <|im_end|>), user span.
    let sys_prefix = tok.encode_chat(&[], false)?;
    let seq = |p: &str, a: &str| -> anyhow::Result<(Vec<u32>, usize, usize)> {
        let prompt = tok.encode_user_prompt(p)?;
        let mut all = prompt.clone();
        all.extend(tok.encode(a)?);
        all.push(im_end);
        Ok((all, prompt.len(), sys_prefix.len()))
    };
    let layers: Vec<usize> = std::env::var("LAYERS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![4, 8, 12, 16, 20, 24]);
    if std::env::var("POOLED").is_ok() {
        return pooled(&bb, &layers);
    }
    for &layer in &layers {
        let center = mean(&rows(&bb.model.queries(&sys_prefix, layer)?.per_token));
        for centered in [false, true] {
            for user_only in [false, true] {
                let prep = |v: Vec<Vec<f32>>| -> Vec<Vec<f32>> {
                    if centered {
                        v.iter().map(|r| sub(r, &center)).collect()
                    } else {
                        v
                    }
                };
                // Keys and per-token queries of the facts.
                let mut keys = Vec::new();
                let mut fact_q = Vec::new();
                for (p, a) in FACTS {
                    let (all, plen, slen) = seq(p, a)?;
                    let q = prep(rows(&bb.model.queries(&all, layer)?.per_token));
                    let span = if user_only {
                        // user turn: after "<|im_start|>user\n" up to its <|im_end|>
                        &q[slen + 3..plen - 5]
                    } else {
                        &q[..plen]
                    };
                    keys.push(mean(span));
                    fact_q.push((q, plen));
                }
                // Answer region: positions plen-1 .. end-1 predict the answer tokens.
                let mut own_min = f32::INFINITY;
                let mut own_pass_mean = 0f32;
                let mut cross_max = f32::NEG_INFINITY;
                let mut sys_max = f32::NEG_INFINITY;
                for (i, (q, plen)) in fact_q.iter().enumerate() {
                    let region = &q[plen - 1..q.len() - 1];
                    let m = region
                        .iter()
                        .map(|r| cos(r, &keys[i]))
                        .fold(f32::INFINITY, f32::min);
                    own_min = own_min.min(m);
                    own_pass_mean += region.iter().map(|r| cos(r, &keys[i])).sum::<f32>()
                        / region.len() as f32
                        / FACTS.len() as f32;
                    for (j, k) in keys.iter().enumerate() {
                        if j != i {
                            for r in region {
                                cross_max = cross_max.max(cos(r, k));
                            }
                        }
                    }
                    for r in &q[..sys_prefix.len()] {
                        sys_max = sys_max.max(cos(r, &keys[i]));
                    }
                }
                let mut unrel_max = f32::NEG_INFINITY;
                let mut unrel_ans_max = f32::NEG_INFINITY;
                for (p, a) in UNRELATED {
                    let (all, plen, _) = seq(p, a)?;
                    let q = prep(rows(&bb.model.queries(&all, layer)?.per_token));
                    for k in &keys {
                        for (t, r) in q.iter().enumerate() {
                            let c = cos(r, k);
                            unrel_max = unrel_max.max(c);
                            if t + 1 >= plen {
                                unrel_ans_max = unrel_ans_max.max(c);
                            }
                        }
                    }
                }
                println!(
                    "layer {layer:2} centered {centered:5} user_only {user_only:5}: own answer-region min {own_min:.3} mean {own_pass_mean:.3}; other facts' keys max {cross_max:.3}; system tokens max {sys_max:.3}; unrelated any-token max {unrel_max:.3}, answer-region max {unrel_ans_max:.3}"
                );
            }
        }
    }
    Ok(())
}

const PARAPHRASES: &[&str] = &[
    "Tell me the secret code of Zorblax.",
    "What's the password for the Quendor vault?",
    "Who is the guard at Morvath's gate?",
    "What number does Pellucid like best?",
    "What colour is Drasmoor's flag?",
    "Tell me the secret code of Vantrel.",
];

const NEAR_MISS: &[&str] = &[
    "What is the secret code of Blorpax?",
    "What is the password of the Quendor castle?",
];

/// Cosines between request-level pooled queries (mean over the user message's tokens).
fn pooled(bb: &Backbone, layers: &[usize]) -> anyhow::Result<()> {
    let tok = &bb.tokenizer;
    let slen = tok.encode_chat(&[], false)?.len();
    let span = |p: &str, layer: usize, centered: &Option<Vec<f32>>| -> anyhow::Result<Vec<f32>> {
        let prompt = tok.encode_user_prompt(p)?;
        let q = rows(&bb.model.queries(&prompt, layer)?.per_token);
        let q: Vec<Vec<f32>> = match centered {
            Some(c) => q.iter().map(|r| sub(r, c)).collect(),
            None => q,
        };
        Ok(mean(&q[slen + 3..prompt.len() - 5]))
    };
    for &layer in layers {
        let sys_prefix = tok.encode_chat(&[], false)?;
        let center = mean(&rows(&bb.model.queries(&sys_prefix, layer)?.per_token));
        for c in [None, Some(center)] {
            let keys: Vec<Vec<f32>> = FACTS
                .iter()
                .map(|(p, _)| span(p, layer, &c))
                .collect::<anyhow::Result<_>>()?;
            let mut cross = f32::NEG_INFINITY;
            for i in 0..keys.len() {
                for j in 0..keys.len() {
                    if i != j {
                        cross = cross.max(cos(&keys[i], &keys[j]));
                    }
                }
            }
            let mut unrel = f32::NEG_INFINITY;
            for (p, _) in UNRELATED {
                let q = span(p, layer, &c)?;
                for k in &keys {
                    unrel = unrel.max(cos(&q, k));
                }
            }
            let mut para = Vec::new();
            for (i, p) in PARAPHRASES.iter().enumerate() {
                let q = span(p, layer, &c)?;
                let own = cos(&q, &keys[i]);
                let best_other = keys
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, k)| cos(&q, k))
                    .fold(f32::NEG_INFINITY, f32::max);
                para.push(format!("{own:.3}/{best_other:.3}"));
            }
            let mut near = Vec::new();
            for p in NEAR_MISS {
                let q = span(p, layer, &c)?;
                near.push(format!(
                    "{:.3}",
                    keys.iter()
                        .map(|k| cos(&q, k))
                        .fold(f32::NEG_INFINITY, f32::max)
                ));
            }
            println!("layer {layer:2} centered {:5}: facts pairwise max {cross:.3}; unrelated max {unrel:.3}; paraphrase own/other {}; near-miss max {}", c.is_some(), para.join(" "), near.join(" "));
        }
    }
    Ok(())
}
