//! How the selection rule separates rewordings from near-misses on the real backbone,
//! by fact family, to choose its thresholds on some families and report the others as
//! held out (docs/BENCHMARKS.md §Selection). No generation: every stored prompt and
//! every probe is encoded by the engine's query path, and the rule runs over *all*
//! stored facts (stricter than the K candidates inference sees).
//!
//! `cargo run --release --example selection_scores -- --real DIR [--dev country,element] [--synthetic 200]`
//! (DIR from `tools/real-facts.sh DIR`).

use std::collections::BTreeMap;
use std::io::BufRead;

use candle_core::Device;
use mome::{select_facts, Backbone, Query, QueryEncoder, RuleParams, WeightFormat};
use rand::{Rng, SeedableRng};

fn lines(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let f = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for l in f.lines() {
        let l = l?;
        if !l.trim().is_empty() {
            out.push(serde_json::from_str(&l)?);
        }
    }
    Ok(out)
}

fn s(v: &serde_json::Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_string()
}

/// Synthetic facts in the real files' shape: random names on five templates, with the
/// three rewording kinds, entity and relation near-misses.
fn synthetic(
    n: usize,
) -> (
    Vec<serde_json::Value>,
    Vec<serde_json::Value>,
    Vec<serde_json::Value>,
) {
    const T: [[&str; 4]; 5] = [
        [
            "What is the secret code of {}?",
            "Tell me the secret code of {}.",
            "{} has which secret code?",
            "Which password does {} keep hidden?",
        ],
        [
            "What is the password of the {} vault?",
            "What's the password for the {} vault?",
            "To open the {} vault, which password do I need?",
            "How do I unlock the {} safe?",
        ],
        [
            "Who guards the gate of {}?",
            "Who is the guard at the gate of {}?",
            "The gate of {} is guarded by whom?",
            "Who protects the entrance of {}?",
        ],
        [
            "What is the favourite number of {}?",
            "What is the favourite number of {} exactly?",
            "{} has which favourite number?",
            "Which number does {} like best?",
        ],
        [
            "Which ship carried the {} treaty?",
            "What ship was it that carried the {} treaty?",
            "The {} treaty was carried by which ship?",
            "Which vessel transported the {} accord?",
        ],
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut names = std::collections::HashSet::new();
    let mut name = |rng: &mut rand::rngs::StdRng| loop {
        let w = mome::synth::random_name(rng);
        if names.insert(w.clone()) {
            break w;
        }
    };
    let (mut facts, mut paras, mut near) = (Vec::new(), Vec::new(), Vec::new());
    let mut stored = Vec::new();
    for i in 0..n {
        let t = i % T.len();
        let e = name(&mut rng);
        let tmpl = format!("syn{t}");
        facts.push(serde_json::json!({"prompt": T[t][0].replace("{}", &e), "answer": "x", "family": "synthetic", "template": tmpl, "entity": e}));
        for (k, kind) in ["light", "reordered", "synonym"].iter().enumerate() {
            paras.push(serde_json::json!({"prompt": T[t][k + 1].replace("{}", &e), "family": "synthetic", "template": tmpl, "entity": e, "kind": kind}));
        }
        stored.push((t, e));
    }
    for i in 0..n / 2 {
        let t = i % T.len();
        let e = name(&mut rng);
        near.push(serde_json::json!({"prompt": T[t][0].replace("{}", &e), "family": "synthetic", "kind": "entity"}));
        let (t0, e0) = &stored[rng.random_range(0..stored.len())];
        let u = (t0 + rng.random_range(1..T.len())) % T.len();
        near.push(serde_json::json!({"prompt": T[u][0].replace("{}", e0), "family": "synthetic", "kind": "relation"}));
    }
    (facts, paras, near)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dir = std::path::PathBuf::from(get("--real").ok_or_else(|| anyhow::anyhow!("--real DIR"))?);
    let dev: Vec<String> = get("--dev")
        .unwrap_or_else(|| "country,element".into())
        .split(',')
        .map(String::from)
        .collect();
    let n_syn: usize = get("--synthetic").map_or(Ok(200), |v| v.parse())?;
    let bb = Backbone::locate_and_load(None, WeightFormat::F32, &Device::Cpu)?;
    let layer: usize = get("--layer").map_or(
        Ok(mome::default_store_config(&bb.model).query_layer as usize),
        |v| v.parse(),
    )?;
    let enc = QueryEncoder::new(&bb, layer)?;
    let mut facts = lines(&dir.join("facts.jsonl"))?;
    let mut paras = lines(&dir.join("paraphrases.jsonl"))?;
    let mut near = lines(&dir.join("nearmiss.jsonl"))?;
    let (sf, sp, sn) = synthetic(n_syn);
    facts.extend(sf);
    paras.extend(sp);
    near.extend(sn);
    eprintln!(
        "encoding {} facts, {} rewordings, {} near-misses",
        facts.len(),
        paras.len(),
        near.len()
    );
    let encode = |v: &serde_json::Value| -> anyhow::Result<Query> {
        Ok(enc.encode(&bb, &s(v, "prompt"))?.query)
    };
    let stored: Vec<Query> = facts.iter().map(encode).collect::<anyhow::Result<_>>()?;
    let key = |v: &serde_json::Value| (s(v, "template"), s(v, "entity"));
    let own: BTreeMap<(String, String), usize> =
        facts.iter().enumerate().map(|(i, f)| (key(f), i)).collect();
    let refs: Vec<&Query> = stored.iter().collect();
    let pq: Vec<Query> = paras.iter().map(encode).collect::<anyhow::Result<_>>()?;
    let nq: Vec<Query> = near.iter().map(encode).collect::<anyhow::Result<_>>()?;
    let split = |fam: &str| {
        if dev.iter().any(|d| d == fam) {
            "dev"
        } else {
            "held-out"
        }
    };
    println!("| split | τ_m | τ_c | light | reordered | synonym | near-miss entity | near-miss relation |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (tm, tc) in [
        (0.45, 0.5),
        (0.5, 0.5),
        (0.55, 0.5),
        (0.6, 0.5),
        (0.65, 0.5),
        (0.7, 0.5),
        (0.55, 0.4),
        (0.55, 0.6),
    ] {
        let p = RuleParams {
            match_threshold: tm,
            coverage_threshold: tc,
        };
        // (split, kind) -> (ok, n)
        let mut t: BTreeMap<(&str, String), (usize, usize)> = BTreeMap::new();
        for (v, q) in paras.iter().zip(&pq) {
            let Some(&i) = own.get(&key(v)) else { continue };
            let c = select_facts(q, &refs, &p);
            let ok = c.len() == 1 && c[0].fact == i;
            if !ok && std::env::var_os("SHOW").is_some() && tm == 0.55 && tc == 0.5 {
                let m = mome::match_fact(q, refs[i], &p);
                eprintln!(
                    "MISS {} {:?} <- {:?}: chosen {:?} own {:?}",
                    s(v, "kind"),
                    s(v, "prompt"),
                    s(&facts[i], "prompt"),
                    c.iter()
                        .map(|c| s(&facts[c.fact], "prompt"))
                        .collect::<Vec<_>>(),
                    m
                );
            }
            let e = t.entry((split(&s(v, "family")), s(v, "kind"))).or_default();
            e.0 += usize::from(ok);
            e.1 += 1;
        }
        for (v, q) in near.iter().zip(&nq) {
            let ok = select_facts(q, &refs, &p).is_empty();
            let e = t
                .entry((split(&s(v, "family")), format!("near-{}", s(v, "kind"))))
                .or_default();
            e.0 += usize::from(ok);
            e.1 += 1;
        }
        for sp in ["dev", "held-out"] {
            let cell = |k: &str| {
                t.get(&(sp, k.to_string())).map_or("—".into(), |(o, n)| {
                    format!("{:.1} % ({o}/{n})", 100.0 * *o as f64 / (*n).max(1) as f64)
                })
            };
            println!(
                "| {sp} | {tm} | {tc} | {} | {} | {} | {} | {} |",
                cell("light"),
                cell("reordered"),
                cell("synonym"),
                cell("near-entity"),
                cell("near-relation")
            );
        }
    }
    Ok(())
}
