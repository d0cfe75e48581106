//! Property test: random insert / delete / get / snapshot / reopen sequences against an
//! in-memory model of the store.

mod common;

use std::collections::BTreeMap;

use common::{assert_expert, expert, small_config};
use mome::Store;
use mome::StoreError;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Insert(u8),
    Delete(usize),
    DeleteUnknown,
    Get(usize),
    Reopen,
    SnapshotThenDelete(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u8..40).prop_map(Op::Insert),
        2 => any::<usize>().prop_map(Op::Delete),
        1 => Just(Op::DeleteUnknown),
        2 => any::<usize>().prop_map(Op::Get),
        1 => Just(Op::Reopen),
        1 => any::<usize>().prop_map(Op::SnapshotThenDelete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config();
        let mut store = Some(Store::create(dir.path(), cfg.clone()).unwrap());
        let mut model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut next_seed = 0u64;
        let mut next_id = 1u64;
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::Insert(n) => {
                    let seeds: Vec<u64> = (0..n as u64).map(|i| next_seed + i).collect();
                    next_seed += n as u64;
                    let ids = s.insert_batch(seeds.iter().map(|&x| expert(&cfg, x)).collect()).unwrap();
                    let want: Vec<u64> = (next_id..next_id + n as u64).collect();
                    prop_assert_eq!(&ids, &want);
                    next_id += n as u64;
                    model.extend(ids.into_iter().zip(seeds));
                }
                Op::Delete(i) if !model.is_empty() => {
                    let id = *model.keys().nth(i % model.len()).unwrap();
                    s.delete(id).unwrap();
                    model.remove(&id);
                }
                Op::Delete(_) | Op::DeleteUnknown => {
                    let id = next_id + 7;
                    let unknown = matches!(s.delete(id), Err(StoreError::UnknownExpert { id: x }) if x == id);
                    prop_assert!(unknown);
                }
                Op::Get(i) if !model.is_empty() => {
                    let (&id, &seed) = model.iter().nth(i % model.len()).unwrap();
                    assert_expert(&cfg, &s.get(id).unwrap(), seed);
                }
                Op::Get(_) => prop_assert!(s.get(1).is_err()),
                Op::Reopen => {
                    drop(store.take());
                    store = Some(Store::open(dir.path()).unwrap());
                }
                Op::SnapshotThenDelete(i) if !model.is_empty() => {
                    let (&id, &seed) = model.iter().nth(i % model.len()).unwrap();
                    let snap = s.snapshot();
                    s.delete(id).unwrap();
                    model.remove(&id);
                    assert_expert(&cfg, &snap.get(id).unwrap(), seed);
                    prop_assert!(s.get(id).is_err());
                }
                Op::SnapshotThenDelete(_) => {}
            }
            let s = store.as_ref().unwrap();
            prop_assert_eq!(s.len(), model.len() as u64);
        }
        let s = store.as_ref().unwrap();
        let ids: Vec<u64> = s.snapshot().ids().collect();
        prop_assert_eq!(ids, model.keys().copied().collect::<Vec<_>>());
        for (&id, &seed) in &model {
            assert_expert(&cfg, &s.get(id).unwrap(), seed);
        }
        prop_assert!(s.verify().unwrap().problems.is_empty());
    }
}
