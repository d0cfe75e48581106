//! Memory-tuning mechanics on a tiny random model (fast): a batch of rows, each its own
//! expert, trains in the presence of a frozen stored neighbour that selection also
//! picks; every trainable tensor receives a gradient (`train_batch` fails otherwise);
//! every row converges; and the trained experts, applied through the inference path
//! (fused operator, fast ops), give the targets as greedy (argmax) predictions.

mod common;

use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use half::f16;
use mome::SelectionParams;
use mome::{train_batch, TrainRow, TuneOptions};
use mome::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
use mome::{AdapterSites, Adapters, Logits, Mode, Pass};
use mome::{CandidateSet, RequestHook};
use rand::{Rng, SeedableRng};

#[test]
fn rows_train_with_neighbours_and_recall_through_the_fused_path() {
    let model = common::tiny_model(7);
    let d = model.d_model();
    let vocab = model.config().vocab_size as u32;
    let sites = AdapterSites::new(1, &[2, 3]).unwrap();
    let cfg = StoreConfig::new(d as u32, d as u32, 4, vec![2, 3]).with_query_layer(1);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg.clone()).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);

    // Queries: unit vectors; row 1 has a stored neighbour close to its query.
    let unit = |rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        let v: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    };
    let queries: Vec<Vec<f32>> = (0..3).map(|_| unit(&mut rng)).collect();
    let near: Vec<f32> = queries[1]
        .iter()
        .zip(unit(&mut rng))
        .map(|(a, b)| a + 0.3 * b)
        .collect();
    let mut rnd = |n: usize, s: f32| -> Vec<f16> {
        (0..n)
            .map(|_| f16::from_f32(rng.random_range(-s..s)))
            .collect()
    };
    let id = store
        .insert(NewExpert {
            key: near.iter().map(|&x| f16::from_f32(x)).collect(),
            layers: (0..2)
                .map(|_| AdapterPair {
                    a: rnd(4 * d, 0.2),
                    b: rnd(4 * d, 0.2),
                })
                .collect(),
            provenance: Provenance::text("neighbour"),
        })
        .unwrap();
    let neighbour = store.get(id).unwrap();

    let mut trng = rand::rngs::StdRng::seed_from_u64(9);
    let rows: Vec<TrainRow> = (0..3)
        .map(|i| TrainRow {
            prompt: (0..5 + i).map(|_| trng.random_range(3..vocab)).collect(),
            targets: (0..3).map(|_| trng.random_range(3..vocab)).collect(),
            query: queries[i].clone(),
            neighbours: vec![neighbour.clone()],
        })
        .collect();
    // τ 0.5, k 2: row 1 selects its own expert and the neighbour (mixed); the others
    // only their own.
    let params = SelectionParams::new(0.5, 2, 0.5);
    let opts = TuneOptions {
        lr: 0.05,
        max_steps: 300,
        loss_threshold: 0.05,
        ..TuneOptions::default()
    };
    let mut steps = 0;
    let trained = train_batch(&model, &sites, 4, &params, &rows, &opts, |s, _| steps = s).unwrap();
    for (i, t) in trained.iter().enumerate() {
        assert!(
            t.converged,
            "row {i}: loss {} after {} steps",
            t.loss, t.steps
        );
        assert!(t.own_weight > 0.0);
        assert_eq!(t.layers.len(), 2);
    }
    assert!(
        trained[1].own_weight < 1.0,
        "row 1 mixes with its neighbour"
    );
    assert!(trained[0].own_weight == 1.0);
    eprintln!(
        "converged in {steps} steps: {:?}",
        trained.iter().map(|t| t.steps).collect::<Vec<_>>()
    );

    // Inference path: candidates {neighbour} ∪ {the row's expert}, fused operator.
    for (i, r) in rows.iter().enumerate() {
        let mut set = CandidateSet::from_stored(vec![neighbour.clone()]);
        set.push_owned(
            r.query.iter().map(|&x| f16::from_f32(x)).collect(),
            Arc::new(trained[i].layers.clone()),
        );
        let hook = RequestHook::new(
            set,
            params.clone(),
            &[2, 3],
            4,
            d,
            std::slice::from_ref(&r.query),
        )
        .unwrap();
        let mut input = r.prompt.clone();
        input.extend_from_slice(&r.targets[..r.targets.len() - 1]);
        let logits = model
            .forward_batch(
                &[&input],
                Logits::All,
                &Pass::adapted(
                    Adapters {
                        sites: &sites,
                        hook: &hook,
                    },
                    Mode::Fast,
                ),
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        let start = r.prompt.len() - 1;
        let pred: Vec<u32> = logits
            .narrow(0, start, r.targets.len())
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(pred, r.targets, "row {i} through the fused path");
        // And without the expert the bare model does not already produce them.
        let bare: Tensor = model
            .forward_batch(&[&input], Logits::All, &Pass::bare(Mode::Fast))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let bare: Vec<u32> = bare
            .narrow(0, start, r.targets.len())
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(bare, r.targets);
    }
    let _ = Device::Cpu;
}

#[test]
fn empty_batch_is_a_typed_error() {
    let model = common::tiny_model(1);
    let sites = AdapterSites::new(1, &[2]).unwrap();
    let e = train_batch(
        &model,
        &sites,
        4,
        &SelectionParams::new(0.5, 1, 1.0),
        &[],
        &TuneOptions::default(),
        |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, mome::Error::EmptyBatch { .. }), "{e}");
}
