//! Memory-tuning mechanics on a tiny random model (fast): a batch of rows, each its own
//! expert active where its plan says, one row together with a frozen stored neighbour
//! that its plan also activates; every trainable tensor receives a gradient
//! (`train_batch` fails otherwise); every row converges; and the trained experts,
//! applied with the same plans through the inference hook (fused operator, fast ops),
//! give the targets as greedy (argmax) predictions.

mod common;

use std::sync::Arc;

use candle_core::{Device, Tensor, D};
use half::f16;
use mome::{train_batch, TrainRow, TuneOptions};
use mome::{AdapterPair, NewExpert, Provenance, Store, StoreConfig};
use mome::{AdapterSites, Adapters, Logits, Mode, Pass};
use mome::{CandidateSet, RowPlan, SelectionHook};
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

    let mut rnd = |n: usize, s: f32| -> Vec<f16> {
        (0..n)
            .map(|_| f16::from_f32(rng.random_range(-s..s)))
            .collect()
    };
    let id = store
        .insert(NewExpert {
            key: vec![f16::from_f32(0.1); d],
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

    // Plans over [new expert, neighbour]: rows 0 and 2 use their own expert from user
    // position 2 on (user message at 1..4); row 1 uses its own and the neighbour at
    // every position (each weighs 1/2).
    let plan = |i: usize| -> RowPlan {
        if i == 1 {
            RowPlan::always(2)
        } else {
            let mut p = RowPlan::none(2);
            p.offset = 1;
            p.user_len = 3;
            p.active = vec![(0, 2)];
            p
        }
    };
    let mut trng = rand::rngs::StdRng::seed_from_u64(9);
    let rows: Vec<TrainRow> = (0..3)
        .map(|i| TrainRow {
            prompt: (0..5 + i).map(|_| trng.random_range(3..vocab)).collect(),
            targets: (0..3).map(|_| trng.random_range(3..vocab)).collect(),
            neighbours: CandidateSet::from_stored(vec![neighbour.clone()]),
            plan: plan(i),
        })
        .collect();
    let opts = TuneOptions {
        lr: 0.05,
        max_steps: 300,
        loss_threshold: 0.05,
        ..TuneOptions::default()
    };
    let mut steps = 0;
    let trained = train_batch(&model, &sites, 4, &rows, &opts, |s, _| steps = s).unwrap();
    for (i, t) in trained.iter().enumerate() {
        assert!(
            t.converged,
            "row {i}: loss {} after {} steps",
            t.loss, t.steps
        );
        assert_eq!(t.layers.len(), 2);
    }
    eprintln!(
        "converged in {steps} steps: {:?}",
        trained.iter().map(|t| t.steps).collect::<Vec<_>>()
    );

    // Inference path: candidates {neighbour, the row's expert} (stored first), the
    // same plans with the columns swapped, fused operator.
    for (i, r) in rows.iter().enumerate() {
        let mut set = CandidateSet::from_stored(vec![neighbour.clone()]);
        set.push_owned(Arc::new(trained[i].layers.clone()));
        let mut p = r.plan.clone();
        p.active = p.active.iter().map(|&(c, from)| (1 - c, from)).collect();
        let hook = SelectionHook::new(vec![(set, p)], &[2, 3], 4, d).unwrap();
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
    let e = train_batch(&model, &sites, 4, &[], &TuneOptions::default(), |_, _| {}).unwrap_err();
    assert!(matches!(e, mome::Error::EmptyBatch { .. }), "{e}");
}
