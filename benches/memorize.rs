//! Memory-tuning benchmark (the MoME paper's random-fact experiment, scaled to this
//! machine, and the same on real facts): memorize N facts into a store that also holds
//! M random distractor experts; report exact recall, recall of rewordings by kind,
//! near-miss specificity and leaks, locality on unrelated prompts, two-fact questions
//! and facts memorized per minute (mome::evaluate, as `mome eval`), next to the same
//! figures for the peer — a plain LoRA fine-tune of one shared adapter of the same
//! shape on the same facts, for the same total number of optimizer steps, applied
//! unconditionally.
//!
//! Facts: random names with random answers by default; `--real DIR` takes them from
//! `tools/real-facts.sh DIR` (real public data; the first N, round-robin over its
//! question templates).
//!
//! `cargo bench --bench memorize -- [--facts N] [--real DIR] [--distractors M] [--batch B] [--lr-milli L] [--loss-milli T] [--layers 28,29] [--peer-facts P] [--nearmiss N] [--no-peer] [--db DIR] [--json FILE]`

#[path = "common/progress.rs"]
mod progress;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use half::f16;
use mome::{evaluate, EvalReport, EvalSet, MultiFact, Paraphrase, Probe};
use mome::{generate_answers, CandidateSet, RowPlan, Selection};
use mome::{train_shared, TrainRow, TuneOptions};
use mome::{AdapterPair, NewExpert, Provenance};
use mome::{Backbone, WeightFormat};
use mome::{Engine, EngineParams, Fact};
use rand::{Rng, SeedableRng};

use mome::synth::{random_name, LOCALITY_PROMPTS};

/// Five question templates: the question, a light rewording and a reordered one.
const TEMPLATES: [[&str; 3]; 5] = [
    [
        "What is the secret code of {}?",
        "Tell me the secret code of {}.",
        "{} has which secret code?",
    ],
    [
        "What is the password of the {} vault?",
        "What's the password for the {} vault?",
        "To open the {} vault, which password do I need?",
    ],
    [
        "Who guards the gate of {}?",
        "Who is the guard at the gate of {}?",
        "The gate of {} is guarded by whom?",
    ],
    [
        "What is the favourite number of {}?",
        "What is the favourite number of {} exactly?",
        "{} has which favourite number?",
    ],
    [
        "Which ship carried the {} treaty?",
        "What ship was it that carried the {} treaty?",
        "The {} treaty was carried by which ship?",
    ],
];

/// Random facts and their evaluation set: rewordings, near-misses (new names on the
/// same templates; another template about a stored name) and two-fact questions.
fn random_set(n: usize, seed: u64) -> EvalSet {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut names = HashSet::new();
    let mut fresh = |rng: &mut rand::rngs::StdRng| loop {
        // Distinct names: two facts with one prompt would be one fact.
        let w = random_name(rng);
        if names.insert(w.clone()) {
            break w;
        }
    };
    let mut set = EvalSet::default();
    let mut stored = Vec::new();
    for i in 0..n {
        let name = fresh(&mut rng);
        let t = i % TEMPLATES.len();
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
        let fill = |k: usize| TEMPLATES[t][k].replace("{}", &name);
        set.facts.push(Fact::new(fill(0), answer.clone()));
        for (k, kind) in [(1, "light"), (2, "reordered")] {
            set.paraphrases.push(Paraphrase {
                prompt: fill(k),
                answer: answer.clone(),
                kind: kind.into(),
            });
        }
        stored.push((t, name));
    }
    for i in 0..(n / 5).max(4) {
        let t = i % TEMPLATES.len();
        let name = fresh(&mut rng);
        set.nearmiss.push(Probe {
            prompt: TEMPLATES[t][0].replace("{}", &name),
            kind: "entity".into(),
        });
        let (t0, e0) = &stored[rng.random_range(0..stored.len())];
        let u = (t0 + rng.random_range(1..TEMPLATES.len())) % TEMPLATES.len();
        set.nearmiss.push(Probe {
            prompt: TEMPLATES[u][0].replace("{}", e0),
            kind: "relation".into(),
        });
    }
    for _ in 0..(n / 10).max(2) {
        let a = rng.random_range(0..n);
        let b = (a + rng.random_range(1..n.max(2))) % n;
        let (fa, fb) = (&set.facts[a], &set.facts[b]);
        let second = fb.prompt.clone();
        set.multi.push(MultiFact {
            prompt: format!(
                "{}, and {}{}",
                fa.prompt.trim_end_matches('?'),
                second[..1].to_lowercase(),
                &second[1..]
            ),
            answers: vec![fa.answer.clone(), fb.answer.clone()],
        });
    }
    set
}

fn jsonl(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// The first `n` facts of `tools/real-facts.sh DIR`, round-robin over templates, with
/// their rewordings, every near-miss and the two-fact questions about them.
fn real_set(dir: &std::path::Path, n: usize) -> anyhow::Result<EvalSet> {
    let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mut by_t: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for f in jsonl(&dir.join("facts.jsonl"))? {
        by_t.entry(s(&f, "template")).or_default().push(f);
    }
    let mut facts = Vec::new();
    let mut round = 0;
    while facts.len() < n && by_t.values().any(|v| v.len() > round) {
        for v in by_t.values() {
            if let Some(f) = v.get(round) {
                if facts.len() < n {
                    facts.push(f.clone());
                }
            }
        }
        round += 1;
    }
    let key = |v: &serde_json::Value| (s(v, "template"), s(v, "entity"));
    let chosen: HashSet<(String, String)> = facts.iter().map(key).collect();
    let prompts: HashSet<String> = facts.iter().map(|f| s(f, "prompt")).collect();
    let mut set = EvalSet {
        facts: facts
            .iter()
            .map(|f| Fact::new(s(f, "prompt"), s(f, "answer")))
            .collect(),
        ..EvalSet::default()
    };
    for p in jsonl(&dir.join("paraphrases.jsonl"))? {
        if chosen.contains(&key(&p)) {
            set.paraphrases.push(Paraphrase {
                prompt: s(&p, "prompt"),
                answer: s(&p, "answer"),
                kind: s(&p, "kind"),
            });
        }
    }
    for p in jsonl(&dir.join("nearmiss.jsonl"))? {
        set.nearmiss.push(Probe {
            prompt: s(&p, "prompt"),
            kind: s(&p, "kind"),
        });
    }
    for m in jsonl(&dir.join("multi.jsonl"))? {
        let parts: Vec<String> = m["parts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if !parts.is_empty() && parts.iter().all(|p| prompts.contains(p)) {
            set.multi.push(MultiFact {
                prompt: s(&m, "prompt"),
                answers: m["answers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    Ok(set)
}

/// One table row of an evaluation.
fn row(system: &str, n_distractors: usize, r: &EvalReport, facts_per_min: f64) -> String {
    let pct = |t: &mome::Tally| format!("{:.1} % ({}/{})", 100.0 * t.rate(), t.ok, t.n);
    format!(
        "| {system} | {n_distractors} | {} | {} | {} | {} | {} | {} | {:.1} |",
        pct(&r.exact_recall),
        pct(&r.paraphrase_recall),
        pct(&r.nearmiss_specificity),
        r.leaks,
        pct(&r.locality),
        pct(&r.multi_all_answers),
        facts_per_min
    )
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

    let set = match args
        .iter()
        .position(|a| a == "--real")
        .and_then(|i| args.get(i + 1))
    {
        Some(dir) => real_set(std::path::Path::new(dir), n_facts)?,
        None => random_set(n_facts, 7),
    };
    let mut set = set;
    // --nearmiss N: an even sample of N near-misses (each costs two generations), so
    // that small runs finish; every kind keeps its share.
    let cap = arg(&args, "--nearmiss", usize::MAX);
    if set.nearmiss.len() > cap {
        let step = set.nearmiss.len() as f64 / cap as f64;
        set.nearmiss = (0..cap)
            .map(|i| set.nearmiss[(i as f64 * step) as usize].clone())
            .collect();
    }
    set.unrelated = LOCALITY_PROMPTS
        .iter()
        .map(|p| Probe {
            prompt: (*p).to_string(),
            kind: "unrelated".into(),
        })
        .collect();
    let n_facts = set.facts.len();
    println!(
        "facts {n_facts}, rewordings {}, near-misses {}, two-fact questions {}, unrelated {}",
        set.paraphrases.len(),
        set.nearmiss.len(),
        set.multi.len(),
        set.unrelated.len()
    );
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
    let report = engine.memorize(&set.facts, &opts, &mut |ev| match ev {
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
        if !o.status.is_stored() {
            println!(
                "  not memorized: {:?} -> {:?}: {:?}",
                o.fact.prompt, o.fact.answer, o.status
            );
        }
    }

    let t = Instant::now();
    let pb = progress::bar(0, "eval");
    let r = evaluate(&engine, &set, 16, &mut |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    let fpm = report.memorized as f64 * 60.0 / report.seconds;
    println!("mome: evaluated in {:.1} s", t.elapsed().as_secs_f64());
    for (k, tally) in &r.paraphrase_by_kind {
        println!("  rewordings {k}: {}/{}", tally.ok, tally.n);
    }
    for (k, tally) in &r.nearmiss_by_kind {
        println!("  near-misses {k}: {}/{}", tally.ok, tally.n);
    }
    println!(
        "  ask on prompts that select nothing: {:.3}× the bare backbone's time (median); stored prompts {:.3} s vs bare {:.3} s",
        r.overhead_no_selection, r.ask_seconds_stored, r.bare_seconds_stored
    );
    for (what, t) in [
        ("recall", &r.exact_recall),
        ("rewording", &r.paraphrase_recall),
        ("near-miss", &r.nearmiss_specificity),
        ("multi", &r.multi_all_answers),
        ("locality", &r.locality),
    ] {
        for f in t.failures.iter().take(5) {
            println!("  {what} failure: {f}");
        }
    }
    println!("| system | distractors | exact recall | rewording recall | near-miss specificity | leaks | locality | two-fact | facts/min |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!("{}", row("mome", n_distractors, &r, fpm));
    if let Some(path) = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
    {
        let out = serde_json::json!({
            "facts": n_facts, "distractors": n_distractors, "memorized": report.memorized,
            "memorize_seconds": report.seconds, "facts_per_min": fpm, "broken": report.broken,
            "steps": total_steps, "eval": r,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)?;
    }
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
    let n_facts = peer_n;
    let mut rows = Vec::new();
    for f in &set.facts[..peer_n] {
        let prompt = engine.prompt_tokens(&f.prompt)?;
        let mut targets = engine.backbone().tokenizer.encode(&f.answer)?;
        targets.push(im_end);
        rows.push(TrainRow {
            prompt,
            targets,
            neighbours: CandidateSet::default(),
            plan: RowPlan::always(1),
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
    // The peer's adapter acts on every request at every position: an evaluation with
    // it as the one candidate of every question, always active.
    let mut set_one = CandidateSet::default();
    set_one.push_owned(layers.clone());
    let peer_answer = |prompt: &str, max: usize| -> anyhow::Result<(String, Vec<u32>)> {
        let enc = engine.encode(prompt)?;
        let mut sel = Selection::empty();
        sel.set = set_one.clone();
        sel.plan = RowPlan::always(1);
        sel.chosen = vec![(mome::Source::Owned(0), 1.0)];
        let out = generate_answers(
            engine.backbone(),
            engine.sites(),
            cfg.rank as usize,
            &enc,
            &sel,
            max,
        )?;
        let tokens = out.into_iter().next().unwrap_or_default();
        Ok((engine.backbone().tokenizer.decode(&tokens, true)?, tokens))
    };
    let peer_facts: Vec<&Fact> = set.facts[..peer_n].iter().collect();
    let p_recall = peer_facts
        .iter()
        .filter(|f| {
            peer_answer(&f.prompt, 48)
                .map(|a| a.0 == f.answer)
                .unwrap_or(false)
        })
        .count();
    let answers: HashSet<&str> = peer_facts.iter().map(|f| f.answer.as_str()).collect();
    let peer_paras: Vec<&Paraphrase> = set
        .paraphrases
        .iter()
        .filter(|p| answers.contains(p.answer.as_str()))
        .collect();
    let p_para = peer_paras
        .iter()
        .filter(|p| {
            peer_answer(&p.prompt, 48)
                .map(|a| a.0 == p.answer)
                .unwrap_or(false)
        })
        .count();
    let bare = mome::AskOptions {
        max_tokens: 16,
        use_experts: false,
    };
    let mut p_local = 0;
    for p in LOCALITY_PROMPTS {
        if peer_answer(p, 16)?.1 == engine.ask(p, &bare)?.tokens {
            p_local += 1;
        }
    }
    let mut p_near = 0;
    let near: Vec<&Probe> = set.nearmiss.iter().take(40).collect();
    for p in &near {
        if peer_answer(&p.prompt, 16)?.1 == engine.ask(&p.prompt, &bare)?.tokens {
            p_near += 1;
        }
    }
    println!(
        "peer (shared LoRA, {} steps, final loss {loss:.4}): trained in {secs:.1} s = {:.1} facts/min; exact recall {p_recall}/{n_facts}, rewordings {p_para}/{}, near-misses bare {p_near}/{}, locality {p_local}/{}",
        peer_opts.max_steps,
        n_facts as f64 * 60.0 / secs,
        peer_paras.len(),
        near.len(),
        LOCALITY_PROMPTS.len()
    );
    let pct = |a: usize, b: usize| format!("{:.1} % ({a}/{b})", 100.0 * a as f64 / b.max(1) as f64);
    println!(
        "| shared LoRA (first {n_facts}) | {n_distractors} | {} | {} | {} | — | {} | — | {:.1} |",
        pct(p_recall, n_facts),
        pct(p_para, peer_paras.len()),
        pct(p_near, near.len()),
        pct(p_local, LOCALITY_PROMPTS.len()),
        n_facts as f64 * 60.0 / secs
    );
    Ok(())
}
