//! The index follows the store: after random insert / delete / reopen / crash sequences,
//! searches equal the exact oracle's over the live set; a deleted or corrupt index file
//! is rebuilt and gives the same results; searches run while another thread inserts.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::expert;
use mome::{ExpertIndex, FlatIndex, IndexParams, KeyIndex, OpenedFrom, Quantization};
use mome::{IndexError, StoreError};
use mome::{Store, StoreConfig};
use rand::{Rng, SeedableRng};

fn cfg() -> StoreConfig {
    StoreConfig::new(16, 32, 2, vec![1, 3]).with_shard_size(64 * 1024)
}

/// Search expansion far above the store sizes used here, so HNSW is exact and any
/// difference from the oracle is a consistency bug, not approximation.
fn exact_hnsw() -> IndexParams {
    let mut p = IndexParams::default();
    p.expansion_search = 1024;
    p
}

/// The same over i8 codes, re-ranked exactly (so the answers are the oracle's), searched
/// through the crate's own copy of the graph whenever one serves (after an open or a
/// save; usearch's search between a write and the next save).
fn exact_i8_own() -> IndexParams {
    let mut p = exact_hnsw();
    p.quantization = Quantization::I8;
    p.rerank = 64;
    p.own_search = true;
    p
}

fn queries(n: usize, seed: u64) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            common::values(seed * 1000 + i as u64, 32)
                .iter()
                .map(|x| x.to_f32())
                .collect()
        })
        .collect()
}

/// Exact answers over the experts live in the store right now.
fn oracle(store: &Store, qs: &[Vec<f32>], k: usize) -> Vec<Vec<u64>> {
    let flat = FlatIndex::new(32);
    let snap = store.snapshot();
    for e in snap.iter() {
        let e = e.unwrap();
        let key: Vec<f32> = e.key().iter().map(|x| x.to_f32()).collect();
        flat.add(e.id(), &key).unwrap();
    }
    qs.iter()
        .map(|q| flat.search(q, k).unwrap().iter().map(|h| h.id).collect())
        .collect()
}

fn answers(index: &ExpertIndex, qs: &[Vec<f32>], k: usize) -> Vec<Vec<u64>> {
    qs.iter()
        .map(|q| index.search(q, k).unwrap().iter().map(|h| h.id).collect())
        .collect()
}

#[test]
fn random_sequences_match_the_oracle() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let qs = queries(40, 1);
    for params in [exact_hnsw(), exact_i8_own(), IndexParams::flat()] {
        let mut own_searches = 0;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::create(dir.path(), cfg()).unwrap());
        let mut index = Some(ExpertIndex::open_with(store, params).unwrap());
        let mut live: BTreeMap<u64, ()> = BTreeMap::new();
        let mut seed = 0;
        for step in 0..60 {
            let idx = index.as_ref().unwrap();
            match rng.random_range(0..10) {
                0..=4 => {
                    let n = rng.random_range(1..30u64);
                    let ids = idx
                        .insert_batch((seed..seed + n).map(|s| expert(&cfg(), s)).collect())
                        .unwrap();
                    seed += n;
                    live.extend(ids.into_iter().map(|i| (i, ())));
                }
                5..=6 if !live.is_empty() => {
                    let victims: Vec<u64> = live
                        .keys()
                        .copied()
                        .filter(|_| rng.random_bool(0.2))
                        .collect();
                    if !victims.is_empty() {
                        idx.delete_batch(&victims).unwrap();
                        victims.iter().for_each(|v| {
                            live.remove(v);
                        });
                    }
                }
                7 => {
                    // Clean reopen: the index is saved on close and loaded.
                    let store = index.take().unwrap().store().clone();
                    index = Some(ExpertIndex::open_with(store, params).unwrap());
                }
                8 => {
                    // Writes that bypass the index (as after a crash between the store
                    // commit and the index update): the next open must catch up.
                    let store = index.take().unwrap().store().clone();
                    let saved_then = store.len();
                    std::mem::forget(ExpertIndex::open_with(store.clone(), params).unwrap());
                    let ids = store
                        .insert_batch((seed..seed + 5).map(|s| expert(&cfg(), s)).collect())
                        .unwrap();
                    seed += 5;
                    live.extend(ids.into_iter().map(|i| (i, ())));
                    if let Some(&victim) = live.keys().next() {
                        store.delete(victim).unwrap();
                        live.remove(&victim);
                    }
                    let reopened = ExpertIndex::open_with(store, params).unwrap();
                    assert!(
                        matches!(reopened.opened_from(), OpenedFrom::Loaded { applied } if applied >= 5),
                        "step {step}: {:?} (store had {saved_then})",
                        reopened.opened_from()
                    );
                    index = Some(reopened);
                }
                _ => {}
            }
            let idx = index.as_ref().unwrap();
            own_searches += usize::from(idx.own_search_active());
            assert_eq!(idx.len(), live.len(), "step {step}");
            assert_eq!(
                answers(idx, &qs, 10),
                oracle(idx.store(), &qs, 10),
                "step {step}"
            );
        }
        // Both searches of the i8 index were checked against the oracle.
        if params.quantization == Quantization::I8 {
            assert!(
                (1..60).contains(&own_searches),
                "own search served {own_searches} of 60 steps"
            );
        } else {
            assert_eq!(own_searches, 0);
        }
    }
}

#[test]
fn deleted_or_corrupt_index_file_is_rebuilt_with_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg()).unwrap());
    let index = ExpertIndex::open_with(store, exact_hnsw()).unwrap();
    index
        .insert_batch((0..500).map(|s| expert(&cfg(), s)).collect())
        .unwrap();
    index.delete_batch(&[3, 30, 300]).unwrap();
    let qs = queries(30, 2);
    let before = answers(&index, &qs, 10);
    let store = index.store().clone();
    drop(index);

    let index = ExpertIndex::open_with(store.clone(), exact_hnsw()).unwrap();
    assert_eq!(index.opened_from(), OpenedFrom::Loaded { applied: 0 });
    assert_eq!(answers(&index, &qs, 10), before);
    drop(index);

    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let index = ExpertIndex::open_with(store.clone(), exact_hnsw()).unwrap();
    assert_eq!(index.opened_from(), OpenedFrom::Rebuilt);
    assert_eq!(answers(&index, &qs, 10), before);
    drop(index);

    // The data file of the latest save (named by its generation).
    let data = std::fs::read_dir(dir.path().join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "usearch"))
        .unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&data, bytes).unwrap();
    let index = ExpertIndex::open_with(store.clone(), exact_hnsw()).unwrap();
    assert_eq!(index.opened_from(), OpenedFrom::Rebuilt);
    assert_eq!(answers(&index, &qs, 10), before);
    drop(index);

    // Other structural parameters force a rebuild; the flat index agrees exactly.
    let index = ExpertIndex::open_with(store, IndexParams::flat()).unwrap();
    assert_eq!(index.opened_from(), OpenedFrom::Rebuilt);
    assert_eq!(answers(&index, &qs, 10), before);
}

#[test]
fn crash_between_store_and_index_is_repaired_on_open() {
    // A process that dies after committing to the store never saves its index; the next
    // open replays everything after the saved sequence.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg()).unwrap());
    let index = ExpertIndex::open_with(store, exact_hnsw()).unwrap();
    index
        .insert_batch((0..100).map(|s| expert(&cfg(), s)).collect())
        .unwrap();
    index.save().unwrap();
    index
        .insert_batch((100..150).map(|s| expert(&cfg(), s)).collect())
        .unwrap();
    index.delete_batch(&[1, 2, 120]).unwrap();
    let store = index.store().clone();
    std::mem::forget(index); // no save on drop: as if killed
    let index = ExpertIndex::open_with(store, exact_hnsw()).unwrap();
    assert_eq!(
        index.opened_from(), // 49 inserts still live (120 was deleted again) + 3 deletes.
        OpenedFrom::Loaded { applied: 52 }
    );
    assert_eq!(index.len(), 147);
    let qs = queries(20, 3);
    assert_eq!(answers(&index, &qs, 10), oracle(index.store(), &qs, 10));
}

#[test]
fn search_while_another_thread_inserts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg()).unwrap());
    let index = Arc::new(ExpertIndex::open_with(store, IndexParams::default()).unwrap());
    index
        .insert_batch((0..50).map(|s| expert(&cfg(), s)).collect())
        .unwrap();
    let writer = {
        let index = index.clone();
        std::thread::spawn(move || {
            for b in 0..40u64 {
                index
                    .insert_batch(
                        (1000 + b * 50..1050 + b * 50)
                            .map(|s| expert(&cfg(), s))
                            .collect(),
                    )
                    .unwrap();
                if b % 4 == 0 {
                    index.delete(b + 1).unwrap();
                }
            }
        })
    };
    let qs = queries(16, 4);
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (index, qs) = (index.clone(), qs.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while n < 300 {
                    let flat: Vec<f32> = qs.concat();
                    for hits in index.search_batch(&flat, 8).unwrap() {
                        let snap = index.store().snapshot();
                        assert!(!hits.is_empty());
                        for h in hits {
                            // Never a deleted expert, never a torn one.
                            if snap.contains(h.id) {
                                index.store().get(h.id).unwrap();
                            }
                            assert!((-1.001..=1.001).contains(&h.score), "reader {r}");
                        }
                    }
                    n += 1;
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(index.len() as u64, index.store().len());
}

#[test]
fn bad_queries_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg()).unwrap());
    let index = ExpertIndex::open(store).unwrap();
    // An empty store answers with nothing.
    assert!(index.search(&[0.5; 32], 10).unwrap().is_empty());
    assert!(matches!(
        index.search(&[0.5; 31], 10),
        Err(IndexError::DimMismatch {
            expected: 32,
            found: 31,
            ..
        })
    ));
    let mut nan = vec![0.5f32; 32];
    nan[7] = f32::NAN;
    assert!(matches!(
        index.search(&nan, 10),
        Err(IndexError::NonFinite { index: 7, .. })
    ));
    assert!(matches!(
        index.search(&[0.5; 32], 0),
        Err(IndexError::InvalidArgument { name: "k", .. })
    ));
    assert!(matches!(
        index.search_batch(&[0.5; 40], 3),
        Err(IndexError::DimMismatch { .. })
    ));
}

#[test]
fn parallel_adds_leave_no_unreachable_expert() {
    // usearch's concurrent inserts can strand a node no search reaches; add_reachable
    // re-inserts those. Every key must find itself, build after build.
    use mome::{add_reachable, HnswIndex};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let items: Vec<(u64, Vec<f32>)> = (0..500u64)
        .map(|i| {
            (
                i + 1,
                (0..32).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            )
        })
        .collect();
    for _ in 0..20 {
        let idx = HnswIndex::new(32, &exact_hnsw()).unwrap();
        add_reachable(&idx, &items).unwrap();
        for (id, key) in &items {
            assert!(
                idx.search(key, 10).unwrap().iter().any(|h| h.id == *id),
                "expert {id} unreachable"
            );
        }
    }
}

#[test]
fn relinking_an_expert_keeps_the_index_equal_to_the_store() {
    // The engine relinks a stored fact's node when search stops finding it; the index
    // must still hold exactly the live experts, each findable, before and after reopen.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg()).unwrap());
    let index = ExpertIndex::open_with(store, exact_hnsw()).unwrap();
    let ids = index
        .insert_batch((0..200).map(|s| expert(&cfg(), s)).collect())
        .unwrap();
    index.delete_batch(&ids[..5]).unwrap();
    for &id in &ids[5..25] {
        index.relink(id).unwrap();
    }
    assert!(matches!(
        index.relink(ids[0]),
        Err(IndexError::Store(StoreError::UnknownExpert { .. }))
    ));
    let items: Vec<(u64, Vec<f32>)> = ids[5..]
        .iter()
        .map(|&id| {
            let key = index
                .store()
                .get(id)
                .unwrap()
                .key()
                .iter()
                .map(|x| x.to_f32())
                .collect();
            (id, key)
        })
        .collect();
    let (relinked, lost) = index
        .ensure_findable(&items, |key| index.search(key, 10))
        .unwrap();
    assert!(
        relinked.is_empty() && lost.is_empty(),
        "{relinked:?} {lost:?}"
    );
    // A retrieval that never returns an expert: each is relinked and reported lost.
    let (relinked, lost) = index
        .ensure_findable(&items[..3], |_| Ok::<_, IndexError>(Vec::new()))
        .unwrap();
    assert_eq!(relinked, ids[5..8]);
    assert_eq!(lost, ids[5..8]);
    assert_eq!(index.len(), 195);
    let qs = queries(20, 4);
    assert_eq!(answers(&index, &qs, 10), oracle(index.store(), &qs, 10));
    index.save().unwrap();
    let store = index.store().clone();
    drop(index);
    let index = ExpertIndex::open_with(store, exact_hnsw()).unwrap();
    assert_eq!(index.len(), 195);
    assert_eq!(answers(&index, &qs, 10), oracle(index.store(), &qs, 10));
}
