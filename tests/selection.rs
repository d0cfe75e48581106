//! Two-stage selection over a real store and index: stage 1 retrieval, stage 2 against a
//! direct reference, bad input, empty stores, usage statistics and the penalty, and the
//! selection applied inside a (tiny) backbone through the fused operator.

mod common;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use half::f16;
use mome::{AdapterPair, NewExpert, Provenance, Store, StoreConfig, UsageAccumulator};
use mome::{AdapterSites, Adapters, Logits, Mode, Pass};
use mome::{Candidates, ExpertHook, Selection, SelectionParams};
use mome::{Error, IndexError};
use mome::{ExpertIndex, IndexParams};
use rand::{Rng, SeedableRng};

const DIM: usize = 48; // the tiny model's d_model, so the hook test can reuse the store

fn cfg() -> StoreConfig {
    StoreConfig::new(DIM as u32, DIM as u32, 4, vec![1, 2]).with_query_layer(1)
}

fn random_expert(rng: &mut rand::rngs::StdRng, key: &[f32], scale: f32) -> NewExpert {
    let mut m = |n: usize| -> Vec<f16> {
        (0..n)
            .map(|_| f16::from_f32(rng.random_range(-scale..scale)))
            .collect()
    };
    NewExpert {
        key: key.iter().map(|&x| f16::from_f32(x)).collect(),
        layers: (0..2)
            .map(|_| AdapterPair {
                a: m(4 * DIM),
                b: m(DIM * 4),
            })
            .collect(),
        provenance: Provenance::text("selection test"),
    }
}

fn unit(rng: &mut rand::rngs::StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn open(dir: &std::path::Path) -> ExpertIndex {
    let store = Arc::new(Store::create(dir, cfg()).unwrap());
    ExpertIndex::open_with(store, IndexParams::flat()).unwrap()
}

/// Direct stage-2 reference: cosine, strict threshold, top-k (ties to lower index),
/// softmax with temperature over the kept ones.
fn reference(q: &[f32], keys: &[Vec<f32>], p: &SelectionParams) -> Vec<(usize, f32)> {
    let cos = |a: &[f32], b: &[f32]| {
        let (d, na, nb) = a
            .iter()
            .zip(b)
            .fold((0f64, 0f64, 0f64), |(d, na, nb), (x, y)| {
                (
                    d + (*x as f64) * (*y as f64),
                    na + (*x as f64).powi(2),
                    nb + (*y as f64).powi(2),
                )
            });
        if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            d / (na.sqrt() * nb.sqrt())
        }
    };
    let mut s: Vec<(usize, f64)> = keys
        .iter()
        .enumerate()
        .map(|(j, k)| (j, cos(q, k)))
        .filter(|(_, s)| *s > p.tau as f64)
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    s.truncate(p.top_k);
    let Some(max) = s.first().map(|x| x.1) else {
        return vec![];
    };
    let e: Vec<f64> = s
        .iter()
        .map(|x| ((x.1 - max) / p.temperature as f64).exp())
        .collect();
    let z: f64 = e.iter().sum();
    s.iter()
        .zip(e)
        .map(|(x, e)| (x.0, (e / z) as f32))
        .collect()
}

#[test]
fn two_stages_match_a_direct_reference() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let keys: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng)).collect();
    index
        .insert_batch(
            keys.iter()
                .map(|k| random_expert(&mut rng, k, 0.1))
                .collect(),
        )
        .unwrap();
    for case in 0..40 {
        // Queries near a stored key so that some candidates pass τ, plus random tokens.
        let anchor = &keys[rng.random_range(0..keys.len())];
        let t = rng.random_range(1..6);
        let mut queries = Vec::new();
        for _ in 0..t {
            let noise = unit(&mut rng);
            let w: f32 = rng.random_range(0.0..1.0);
            queries.extend(anchor.iter().zip(&noise).map(|(a, n)| a + w * n));
        }
        let pooled: Vec<f32> = anchor.clone();
        let kc = rng.random_range(1..40);
        let p = SelectionParams::new(
            rng.random_range(-0.2f32..0.9),
            rng.random_range(1..=kc),
            rng.random_range(0.05f32..2.0),
        );
        let sel = Selection::compute(&index, &pooled, &queries, kc, &p).unwrap();
        assert_eq!(sel.candidates.len(), kc);
        // Stage 1 is exact here (flat index): the K best by cosine of the pooled query,
        // against the keys as stored (fp16). Rounding may swap near-ties, so positions are
        // compared by score.
        let cos_to = |j: usize| -> f64 {
            let k: Vec<f64> = keys[j]
                .iter()
                .map(|&x| f16::from_f32(x).to_f32() as f64)
                .collect();
            let dot: f64 = k.iter().zip(&pooled).map(|(a, &b)| a * b as f64).sum();
            let n = k.iter().map(|x| x * x).sum::<f64>().sqrt()
                * pooled
                    .iter()
                    .map(|&x| (x as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
            dot / n
        };
        let mut by_pooled: Vec<(usize, f64)> = (0..keys.len()).map(|j| (j, cos_to(j))).collect();
        by_pooled.sort_by(|a, b| b.1.total_cmp(&a.1));
        let got: Vec<usize> = sel
            .candidates
            .hits()
            .iter()
            .map(|h| h.id as usize - 1)
            .collect();
        for (i, &g) in got.iter().enumerate() {
            assert!(
                (cos_to(g) - by_pooled[i].1).abs() < 1e-5,
                "case {case}: candidate {i} is {g} (cos {}), expected cos {}",
                cos_to(g),
                by_pooled[i].1
            );
        }
        let cand_keys: Vec<Vec<f32>> = sel
            .candidates
            .experts()
            .iter()
            .map(|e| e.key().iter().map(|x| x.to_f32()).collect())
            .collect();
        for ti in 0..t {
            let want = reference(&queries[ti * DIM..(ti + 1) * DIM], &cand_keys, &p);
            let got: Vec<(usize, f32)> = sel
                .assignments
                .get(ti)
                .unwrap()
                .iter()
                .map(|s| (s.candidate as usize, s.weight))
                .collect();
            assert_eq!(
                got.len(),
                want.len(),
                "case {case} token {ti}: {got:?} vs {want:?}"
            );
            for ((gj, gw), (wj, ww)) in got.iter().zip(&want) {
                assert_eq!(gj, wj, "case {case} token {ti}");
                assert!(
                    (gw - ww).abs() < 1e-4,
                    "case {case} token {ti}: {gw} vs {ww}"
                );
            }
            let ids = sel.token(ti);
            assert_eq!(ids.len(), got.len());
        }
    }
}

#[test]
fn bad_input_and_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let q = vec![0.1f32; DIM];
    let p = SelectionParams::new(0.5, 4, 1.0);
    // An empty store: no candidates, and every token's list is empty.
    let sel = Selection::compute(&index, &q, &[q.clone(), q.clone()].concat(), 8, &p).unwrap();
    assert!(sel.candidates.is_empty());
    assert_eq!(sel.assignments.tokens(), 2);
    assert!(sel.token(0).is_empty() && sel.token(1).is_empty());

    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let k = unit(&mut rng);
    index
        .insert_batch(vec![random_expert(&mut rng, &k, 0.1)])
        .unwrap();
    let err = |r: mome::Result<Selection>| r.unwrap_err();
    assert!(matches!(
        err(Selection::compute(&index, &q, &q, 0, &p)),
        Error::InvalidArgument {
            name: "k_candidates",
            ..
        }
    ));
    assert!(matches!(
        err(Selection::compute(&index, &q, &q, 2, &p)),
        Error::InvalidArgument { name: "top_k", .. }
    ));
    assert!(matches!(
        err(Selection::compute(
            &index,
            &q,
            &q,
            8,
            &SelectionParams::new(0.5, 0, 1.0)
        )),
        Error::Select(_)
    ));
    for tau in [1.5f32, -1.5, f32::NAN] {
        assert!(matches!(
            err(Selection::compute(
                &index,
                &q,
                &q,
                8,
                &SelectionParams::new(tau, 2, 1.0)
            )),
            Error::Select(_)
        ));
    }
    assert!(matches!(
        err(Selection::compute(&index, &q[..DIM - 1], &q, 8, &p)),
        Error::Index(IndexError::DimMismatch { .. })
    ));
    assert!(matches!(
        err(Selection::compute(&index, &q, &q[..DIM - 1], 8, &p)),
        Error::DimMismatch { .. }
    ));
    let mut nan = q.clone();
    nan[3] = f32::NAN;
    assert!(matches!(
        err(Selection::compute(&index, &nan, &q, 8, &p)),
        Error::Index(IndexError::NonFinite { .. })
    ));
    assert!(matches!(
        err(Selection::compute(&index, &q, &nan, 8, &p)),
        Error::NonFinite { .. }
    ));
}

#[test]
fn usage_is_counted_and_the_penalty_steers_selection() {
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let base = unit(&mut rng);
    // Two nearly identical keys: without a penalty the first always wins top-1.
    let near: Vec<f32> = base.iter().map(|x| x * 0.999 + 0.001).collect();
    index
        .insert_batch(vec![
            random_expert(&mut rng, &base, 0.1),
            random_expert(&mut rng, &near, 0.1),
        ])
        .unwrap();
    let usage = UsageAccumulator::new();
    let p = SelectionParams::new(0.5, 1, 1.0);
    let sel = Selection::compute(&index, &base, &base, 2, &p).unwrap();
    assert_eq!(sel.token(0)[0].0, 1);
    for _ in 0..10 {
        sel.record_usage(&usage);
    }
    usage.flush(index.store()).unwrap();
    assert_eq!(index.store().usage(1).unwrap(), 10);
    // Penalty on (off by default): the heavily used expert yields to its neighbour.
    let pen = sel
        .candidates
        .usage_penalty(&usage, index.store(), 0.2)
        .unwrap();
    let p2 = p.clone().with_penalty(pen);
    let chosen = sel.candidates.select(&base, &p2).unwrap();
    let j = chosen.get(0).unwrap()[0].candidate as usize;
    assert_eq!(sel.candidates.experts()[j].id(), 2);
}

#[test]
fn selection_applied_inside_the_backbone() {
    let model = common::tiny_model(3);
    let dir = tempfile::tempdir().unwrap();
    let index = open(dir.path());
    let sites = AdapterSites::new(1, &[1, 2]).unwrap();
    let tokens: Vec<u32> = vec![5, 17, 42, 99, 7, 3];
    let q = model.queries(&tokens, 1).unwrap();
    let pooled: Vec<f32> = q.pooled.to_vec1().unwrap();
    let per_token: Vec<f32> = q.per_token.flatten_all().unwrap().to_vec1().unwrap();
    let bare = model
        .forward_batch(&[&tokens], Logits::All, &Pass::bare(Mode::Fast))
        .unwrap();
    let run = |hook: &ExpertHook| -> Tensor {
        let adapters = Adapters {
            sites: &sites,
            hook,
        };
        model
            .forward_batch(
                &[&tokens],
                Logits::All,
                &Pass::adapted(adapters, Mode::Fast),
            )
            .unwrap()
    };
    let same = |a: &Tensor, b: &Tensor| {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.flatten_all().unwrap().to_vec1().unwrap(),
            b.flatten_all().unwrap().to_vec1().unwrap(),
        );
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits())
    };

    // Empty store: bit-identical.
    let sel = Selection::compute(
        &index,
        &pooled,
        &per_token,
        8,
        &SelectionParams::new(0.5, 2, 0.5),
    )
    .unwrap();
    assert!(same(
        &run(&ExpertHook::new(
            sel.candidates,
            SelectionParams::new(0.5, 2, 0.5),
            &[1, 2]
        )),
        &bare
    ));

    // An expert keyed on this prompt's pooled query, and unrelated ones.
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut batch = vec![random_expert(&mut rng, &pooled, 0.5)];
    for _ in 0..20 {
        let k = unit(&mut rng);
        batch.push(random_expert(&mut rng, &k, 0.5));
    }
    index.insert_batch(batch).unwrap();
    let cands = Candidates::retrieve(&index, &pooled, 8).unwrap();
    assert_eq!(cands.hits()[0].id, 1);

    // τ above every score: the experts abstain, output bit-identical to the bare model.
    let high = SelectionParams::new(0.9999, 2, 0.5);
    let hook = ExpertHook::new(cands.clone(), high, &[1, 2]).recording();
    assert!(same(&run(&hook), &bare));
    assert!(hook.take_recorded().iter().all(|(_, a)| a.total() == 0));

    // τ that the matching expert passes: the output changes, and only through it.
    let low = SelectionParams::new(0.3, 1, 0.5);
    let hook = ExpertHook::new(cands, low, &[1, 2]).recording();
    let out = run(&hook);
    assert!(!same(&out, &bare));
    let rec = hook.take_recorded();
    assert_eq!(rec.len(), 2, "both adapted layers ran");
    assert!(rec.iter().all(|(_, a)| a.active_tokens() > 0));
    let _ = Device::Cpu;
}
