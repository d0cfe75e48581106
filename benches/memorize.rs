//! Memory-tuning benchmark (the MoME paper's random-fact experiment, scaled to this
//! machine): memorize N random facts into a store that also holds M random distractor
//! experts; report exact recall, locality on unrelated prompts, recall on paraphrased
//! questions and facts memorized per minute, next to the same figures for the peer — a
//! plain LoRA fine-tune of one shared adapter of the same shape on the same facts, for
//! the same total number of optimizer steps, applied unconditionally.
//!
//! `cargo bench --bench memorize -- [--facts N] [--distractors M] [--batch B] [--lr-milli L] [--loss-milli T] [--layers 28,29] [--peer-facts P] [--no-peer] [--db DIR]`

#[path = "common/progress.rs"]
mod progress;

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use half::f16;
use mome::{train_shared, TrainRow, TuneOptions};
use mome::{AdapterPair, NewExpert, Provenance};
use mome::{AskOptions, CandidateSet, Engine, EngineParams, Fact, FactStatus};
use mome::{Backbone, WeightFormat};
use rand::{Rng, SeedableRng};

use mome::synth::{random_name, LOCALITY_PROMPTS};

const TEMPLATES: [(&str, &str); 5] = [
    (
        "What is the secret code of {}?",
        "Tell me the secret code of {}.",
    ),
    (
        "What is the password of the {} vault?",
        "What's the password for the {} vault?",
    ),
    (
        "Who guards the gate of {}?",
        "Who is the guard at the gate of {}?",
    ),
    (
        "What is the favourite number of {}?",
        "Which number does {} like best?",
    ),
    (
        "Which ship carried the {} treaty?",
        "What ship was it that carried the {} treaty?",
    ),
];

/// (fact, paraphrased prompt)
fn random_facts(n: usize, seed: u64) -> Vec<(Fact, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut names = std::collections::HashSet::new();
    (0..n)
        .map(|i| {
            // Distinct names: two facts with one prompt would shadow each other.
            let name = loop {
                let w = random_name(&mut rng);
                if names.insert(w.clone()) {
                    break w;
                }
            };
            let (t, p) = TEMPLATES[i % TEMPLATES.len()];
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
            (
                Fact::new(t.replace("{}", &name), answer),
                p.replace("{}", &name),
            )
        })
        .collect()
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // RUST_LOG=mome=info shows each batch's training and verification time.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let n_facts = arg(&args, "--facts", 20);
    let n_distractors = arg(&args, "--distractors", 10_000);
    let batch = arg(&args, "--batch", 10);
    let peer = !args.iter().any(|a| a == "--no-peer");
    let path = mome::locate_model(None)?;
    let bb = Backbone::from_gguf(&path, WeightFormat::F32, &Device::Cpu)?;
    // --db DIR keeps the store: a rerun reuses its distractors (inserting 1M takes most
    // of an hour here) after deleting the facts an earlier run memorized.
    let dir = tempfile::tempdir()?;
    let db = match args
        .iter()
        .position(|a| a == "--db")
        .and_then(|i| args.get(i + 1))
    {
        Some(d) => std::path::PathBuf::from(d),
        None => dir.path().join("store"),
    };
    // --layers 27,28,29: adapters on other layers than the engine's default.
    let config = args
        .iter()
        .position(|a| a == "--layers")
        .and_then(|i| args.get(i + 1))
        .map(|s| -> anyhow::Result<_> {
            let layers = s
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()?;
            let base = mome::default_store_config(&bb.model);
            let query = base.query_layer.min(layers[0]);
            Ok(
                mome::StoreConfig::new(base.d_model, base.key_dim, base.rank, layers)
                    .with_query_layer(query)
                    .with_backbone_digest(base.backbone_digest),
            )
        })
        .transpose()?;
    let mut engine = Engine::open_or_create_with(&db, bb, config, EngineParams::default())?;
    let cfg = engine.store().config().clone();
    println!(
        "threads {}, facts {n_facts}, distractors {n_distractors}, batch {batch}, store {:?}",
        candle_core::utils::get_num_threads(),
        cfg
    );

    let mut old_facts = Vec::new();
    for id in engine.store().snapshot().ids() {
        if engine.store().meta(id)?.provenance.prompt.is_some() {
            old_facts.push(id);
        }
    }
    if !old_facts.is_empty() {
        println!("deleting {} facts of an earlier run", old_facts.len());
        engine.index().delete_batch(&old_facts)?;
    }
    let have = engine.store().len() as usize;
    println!("store holds {have} distractors");
    let n_new = n_distractors.saturating_sub(have);

    // Random distractors: random keys, small random adapters. Matrices are slices of a
    // random pool: drawing 18 G values one by one would take longer than the benchmark.
    let t = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let d = cfg.d_model as usize;
    let mat = (cfg.rank * cfg.d_model) as usize;
    let pool: Vec<f16> = (0..(1 << 22) + mat)
        .map(|_| f16::from_f32(rng.random_range(-0.01f32..0.01)))
        .collect();
    let pb = progress::bar(n_new as u64, "distractors");
    let mut left = n_new;
    while left > 0 {
        let k = left.min(1000);
        let batch: Vec<NewExpert> = (0..k)
            .map(|_| {
                let key: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let mut m = || -> Vec<f16> {
                    let at = rng.random_range(0..pool.len() - mat);
                    pool[at..at + mat].to_vec()
                };
                NewExpert {
                    key: key.iter().map(|&x| f16::from_f32(x)).collect(),
                    layers: cfg
                        .layers
                        .iter()
                        .map(|_| AdapterPair { a: m(), b: m() })
                        .collect(),
                    provenance: Provenance::text("distractor"),
                }
            })
            .collect();
        engine.index().insert_batch(batch)?;
        left -= k;
        pb.inc(k as u64);
        if (n_new - left).is_multiple_of(100_000) {
            eprintln!(
                "  {} distractors in {:.0} s",
                n_new - left,
                t.elapsed().as_secs_f64()
            );
        }
    }
    pb.finish_and_clear();
    println!(
        "inserted {n_new} distractors in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    engine.flush()?;

    let facts = random_facts(n_facts, 7);
    let plain: Vec<Fact> = facts.iter().map(|(f, _)| f.clone()).collect();
    let lr_milli = arg(&args, "--lr-milli", 50);
    let opts = TuneOptions {
        batch_size: batch,
        lr: lr_milli as f64 / 1000.0,
        loss_threshold: arg(&args, "--loss-milli", 50) as f32 / 1000.0,
        ..TuneOptions::default()
    };
    println!("lr {}, loss threshold {}", opts.lr, opts.loss_threshold);
    let mut batch_steps = Vec::new();
    let mut cur = 0usize;
    let report = engine.memorize(&plain, &opts, &mut |ev| match ev {
        mome::MemorizeEvent::Step { step, .. } => cur = step,
        mome::MemorizeEvent::Done(_) => batch_steps.push(cur),
    })?;
    let total_steps: usize = batch_steps.iter().sum();
    let steps: Vec<u32> = report.outcomes.iter().map(|o| o.steps).collect();
    println!(
        "mome: memorized {}/{} in {:.1} s = {:.1} facts/min; steps per fact {:?}; optimizer steps in all {total_steps}; broken {}",
        report.memorized,
        n_facts,
        report.seconds,
        report.memorized as f64 * 60.0 / report.seconds,
        steps,
        report.broken.len()
    );
    for o in &report.outcomes {
        if !matches!(o.status, FactStatus::Memorized { .. }) {
            println!(
                "  not memorized: {:?} -> {:?}: {:?}",
                o.fact.prompt, o.fact.answer, o.status
            );
        }
    }

    let ask = AskOptions::default();
    let short = AskOptions {
        max_tokens: 16,
        use_experts: true,
    };
    let bare_opts = AskOptions {
        max_tokens: 16,
        use_experts: false,
    };
    let t = Instant::now();
    let recall = facts
        .iter()
        .filter(|(f, _)| {
            engine
                .ask(&f.prompt, &ask)
                .map(|a| a.text == f.answer)
                .unwrap_or(false)
        })
        .count();
    let para = facts
        .iter()
        .filter(|(f, p)| {
            engine
                .ask(p, &ask)
                .map(|a| a.text == f.answer)
                .unwrap_or(false)
        })
        .count();
    let mut bare_unrelated = Vec::new();
    let mut local = 0;
    for p in LOCALITY_PROMPTS {
        let bare = engine.ask(p, &bare_opts)?;
        if engine.ask(p, &short)?.tokens == bare.tokens {
            local += 1;
        }
        bare_unrelated.push(bare.tokens);
    }
    println!(
        "mome: exact recall {recall}/{n_facts}, paraphrase recall {para}/{n_facts}, locality {local}/{} (eval {:.1} s)",
        LOCALITY_PROMPTS.len(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "| mome | {n_distractors} | {:.0}% | {:.0}% | {:.0}% | {:.1} |",
        100.0 * recall as f64 / n_facts as f64,
        100.0 * local as f64 / LOCALITY_PROMPTS.len() as f64,
        100.0 * para as f64 / n_facts as f64,
        report.memorized as f64 * 60.0 / report.seconds
    );
    if !peer {
        return Ok(());
    }

    // Peer: one shared adapter, same shape, same facts, same number of steps, applied
    // to every request.
    let t = Instant::now();
    let im_end = engine
        .backbone()
        .tokenizer
        .token_id("<|im_end|>")
        .unwrap_or(2);
    // The shared adapter trains on all its rows every step: at hundreds of facts that
    // is hours on 2 cores, so --peer-facts P limits it to the first P facts (with the
    // step budget mome used per fact scaled to them).
    let peer_n = arg(&args, "--peer-facts", n_facts).min(n_facts);
    let facts = &facts[..peer_n];
    let n_facts = peer_n;
    let mut rows = Vec::new();
    for (f, _) in facts {
        let prompt = engine.prompt_tokens(&f.prompt)?;
        let mut targets = engine.backbone().tokenizer.encode(&f.answer)?;
        targets.push(im_end);
        rows.push(TrainRow {
            query: engine.request_query(&prompt)?,
            prompt,
            targets,
            neighbours: Vec::new(),
        });
    }
    let sites = mome::AdapterSites::new(
        cfg.query_layer as usize,
        &cfg.layers.iter().map(|&l| l as usize).collect::<Vec<_>>(),
    )?;
    let peer_opts = TuneOptions {
        max_steps: (total_steps * peer_n)
            .div_ceil(report.outcomes.len().max(1))
            .max(1),
        ..opts.clone()
    };
    let (layers, loss) = train_shared(
        &engine.backbone().model,
        &sites,
        cfg.rank as usize,
        &rows,
        &peer_opts,
    )?;
    let secs = t.elapsed().as_secs_f64();
    let layers = Arc::new(layers);
    let run = |prompt: &str, max: usize| -> anyhow::Result<Vec<u32>> {
        let tokens = engine.prompt_tokens(prompt)?;
        let q = engine.request_query(&tokens)?;
        let mut set = CandidateSet::default();
        // Keyed on the request itself: always selected, weight 1 (unconditional).
        set.push_owned(
            q.iter().map(|&x| f16::from_f32(x)).collect(),
            layers.clone(),
        );
        Ok(engine.generate_with(&tokens, &q, set, max)?.0)
    };
    let text = |ids: &[u32]| {
        engine
            .backbone()
            .tokenizer
            .decode(ids, true)
            .unwrap_or_default()
    };
    let mut p_recall = 0;
    let mut p_para = 0;
    for (f, p) in facts {
        if text(&run(&f.prompt, 48)?) == f.answer {
            p_recall += 1;
        }
        if text(&run(p, 48)?) == f.answer {
            p_para += 1;
        }
    }
    let mut p_local = 0;
    for (p, bare) in LOCALITY_PROMPTS.iter().zip(&bare_unrelated) {
        if &run(p, 16)? == bare {
            p_local += 1;
        }
    }
    println!(
        "peer (shared LoRA, {} steps, final loss {loss:.4}): trained in {secs:.1} s = {:.1} facts/min; exact recall {p_recall}/{n_facts}, paraphrase {p_para}/{n_facts}, locality {p_local}/{}",
        peer_opts.max_steps,
        n_facts as f64 * 60.0 / secs,
        LOCALITY_PROMPTS.len()
    );
    println!(
        "| shared LoRA | {n_distractors} | {:.0}% | {:.0}% | {:.0}% | {:.1} |",
        100.0 * p_recall as f64 / n_facts as f64,
        100.0 * p_local as f64 / LOCALITY_PROMPTS.len() as f64,
        100.0 * p_para as f64 / n_facts as f64,
        n_facts as f64 * 60.0 / secs
    );
    Ok(())
}
