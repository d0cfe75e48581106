//! Compaction while readers get and search (through `ExpertIndex`) and a writer inserts
//! and deletes: readers only ever see whole, correct experts; a snapshot taken before
//! compaction still reads its experts and keeps the old files until it is dropped;
//! search results and weights are identical after compaction; the saved index stays
//! consistent (compaction keeps insertion sequences, and purges a tombstone only once the
//! saved index has seen the delete).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use common::{assert_expert, expert, seed_of, small_config};
use mome::StoreError;
use mome::{tombstone_horizon, CompactionPolicy, Store};
use mome::{ExpertIndex, FlatIndex, IndexParams, KeyIndex, OpenedFrom};
use rand::{Rng, SeedableRng};

fn queries(n: usize, seed: u64) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            common::values(seed * 1000 + i as u64, 8)
                .iter()
                .map(|x| x.to_f32())
                .collect()
        })
        .collect()
}

fn answers(index: &ExpertIndex, qs: &[Vec<f32>], k: usize) -> Vec<Vec<(u64, u32)>> {
    qs.iter()
        .map(|q| {
            index
                .search(q, k)
                .unwrap()
                .iter()
                .map(|h| (h.id, h.score.to_bits()))
                .collect()
        })
        .collect()
}

/// Exact answers over the experts live in the store right now.
fn oracle(store: &Store, qs: &[Vec<f32>], k: usize) -> Vec<Vec<u64>> {
    let flat = FlatIndex::new(8);
    for e in store.snapshot().iter() {
        let e = e.unwrap();
        let key: Vec<f32> = e.key().iter().map(|x| x.to_f32()).collect();
        flat.add(e.id(), &key).unwrap();
    }
    qs.iter()
        .map(|q| flat.search(q, k).unwrap().iter().map(|h| h.id).collect())
        .collect()
}

/// Every live expert's raw record bytes, by id.
fn weights(store: &Store) -> BTreeMap<u64, Vec<u8>> {
    store
        .snapshot()
        .iter()
        .map(|e| {
            let e = e.unwrap();
            (e.id(), e.record_bytes().to_vec())
        })
        .collect()
}

fn shard_files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("shards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn metadata_files(store: &Store) -> BTreeSet<String> {
    store
        .stats()
        .unwrap()
        .shards
        .iter()
        .map(|s| format!("{:08}.shard", s.id))
        .collect()
}

fn aggressive() -> CompactionPolicy {
    let mut p = CompactionPolicy::default();
    p.min_live_fraction = 0.95;
    p
}

#[test]
fn compaction_keeps_results_weights_snapshots_and_the_saved_index() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg.clone()).unwrap());
    let index = ExpertIndex::open_with(store.clone(), IndexParams::flat()).unwrap();
    let ids = index
        .insert_batch((0..1500).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    // Hollow out the first shards (two of every three experts), keep the rest whole.
    let victims: Vec<u64> = ids[..800]
        .iter()
        .copied()
        .filter(|id| id % 3 != 0)
        .collect();
    index.delete_batch(&victims).unwrap();
    index.save().unwrap();
    let qs = queries(30, 1);
    let results = answers(&index, &qs, 10);
    let bytes = weights(&store);

    let before = store.snapshot();
    let held = store.get(ids[2]).unwrap(); // id 3: live, in the first (sparse) shard
    let files_before = shard_files(dir.path());
    let seq = store.seq();

    let report = store
        .compact(&CompactionPolicy::default(), tombstone_horizon(store.dir()))
        .unwrap();
    assert!(!report.plan.shards.is_empty(), "{report:?}");
    assert!(report.records_copied > 0);
    assert_eq!(report.deleted_during_copy, 0);
    // The index was saved after the deletes: every reclaimed tombstone can go.
    assert_eq!(report.tombstones_kept, 0);
    assert_eq!(report.tombstones_purged, report.plan.dropped_records);
    assert_eq!(store.seq(), seq, "compaction is not a logical change");

    // The old snapshot still reads everything it had, from the old files.
    assert_eq!(shard_files(dir.path()), {
        let mut all = files_before.clone();
        all.extend(metadata_files(&store));
        all
    });
    assert_eq!(held.shard_id(), 1);
    assert_expert(&cfg, &held, 2);
    for e in before.iter() {
        let e = e.unwrap();
        assert_eq!(e.record_bytes(), &bytes[&e.id()][..]);
    }
    drop(before);
    drop(held);
    assert_eq!(
        shard_files(dir.path()),
        metadata_files(&store),
        "old shard files must go with the last reader"
    );

    assert_eq!(answers(&index, &qs, 10), results);
    assert_eq!(weights(&store), bytes);
    let v = store.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let stats = store.stats().unwrap();
    assert_eq!(stats.orphan_slots, 0);
    assert!(stats.orphan_files.is_empty());
    assert!(
        store
            .compact(&CompactionPolicy::default(), tombstone_horizon(store.dir()))
            .unwrap()
            .plan
            .is_empty(),
        "compacting a compacted store changes nothing"
    );

    // Reopen: the saved index loads with nothing to replay (insertion sequences kept).
    drop(index);
    drop(store);
    let store = Arc::new(Store::open(dir.path()).unwrap());
    assert_eq!(weights(&store), bytes);
    let index = ExpertIndex::open_with(store.clone(), IndexParams::flat()).unwrap();
    assert_eq!(index.opened_from(), OpenedFrom::Loaded { applied: 0 });
    assert_eq!(answers(&index, &qs, 10), results);

    // Deletes the saved index has not seen: compaction reclaims their bytes but keeps
    // their tombstones, and the next open of the index replays them.
    drop(index); // saved at the current sequence
    let survivors: Vec<u64> = store.snapshot().ids().collect();
    let late: Vec<u64> = survivors[..300].to_vec();
    store.delete_batch(&late).unwrap();
    let report = store
        .compact(&aggressive(), tombstone_horizon(store.dir()))
        .unwrap();
    assert!(report.tombstones_kept > 0, "{report:?}");
    assert_eq!(report.tombstones_purged, 0);
    assert_eq!(
        store.stats().unwrap().reclaimed_tombstones,
        report.tombstones_kept
    );
    let check = ExpertIndex::check_saved(&store).unwrap();
    assert!(
        check.missing.is_empty() && check.stale.is_empty(),
        "{check:?}"
    );
    let index = ExpertIndex::open_with(store.clone(), IndexParams::flat()).unwrap();
    assert_eq!(
        index.opened_from(),
        OpenedFrom::Loaded {
            applied: late.len()
        }
    );
    assert_eq!(index.len() as u64, store.len());
    for id in &late {
        assert!(!index.contains(*id));
    }
    let ids: Vec<Vec<u64>> = answers(&index, &qs, 10)
        .into_iter()
        .map(|r| r.into_iter().map(|(id, _)| id).collect())
        .collect();
    assert_eq!(ids, oracle(&store, &qs, 10));
    // Once the index is saved past them, the next compaction purges the kept tombstones.
    let kept = report.tombstones_kept;
    index.save().unwrap();
    let report = store
        .compact(&aggressive(), tombstone_horizon(store.dir()))
        .unwrap();
    assert!(report.tombstones_purged >= kept, "{report:?}");
    assert_eq!(store.stats().unwrap().reclaimed_tombstones, 0);
}

#[test]
fn readers_and_a_writer_run_while_compaction_rewrites_shards() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg.clone()).unwrap());
    let index = Arc::new(ExpertIndex::open_with(store.clone(), IndexParams::flat()).unwrap());
    // id → (seed, dying). "Stable" experts are never deleted; readers check them hardest.
    let known: Arc<RwLock<BTreeMap<u64, (u64, bool)>>> = Arc::default();
    let ids = index
        .insert_batch((0..2000).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    known
        .write()
        .unwrap()
        .extend(ids.iter().zip(0u64..).map(|(&id, s)| (id, (s, false))));
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let qs = queries(16, 2);

    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (index, known, stop, reads, cfg, qs) = (
                index.clone(),
                known.clone(),
                stop.clone(),
                reads.clone(),
                cfg.clone(),
                qs.clone(),
            );
            std::thread::spawn(move || {
                let store = index.store().clone();
                let mut rng = rand::rngs::StdRng::seed_from_u64(r);
                while !stop.load(Ordering::Relaxed) {
                    let pick = {
                        let k = known.read().unwrap();
                        k.iter()
                            .nth(rng.random_range(0..k.len()))
                            .map(|(&i, &v)| (i, v))
                    };
                    if let Some((id, (seed, dying))) = pick {
                        match store.get(id) {
                            Ok(e) => assert_expert(&cfg, &e, seed),
                            Err(StoreError::UnknownExpert { .. }) => {
                                assert!(dying, "live expert {id} vanished")
                            }
                            Err(e) => panic!("reader {r}: {e}"),
                        }
                    }
                    let q = &qs[rng.random_range(0..qs.len())];
                    let hits = index.search(q, 8).unwrap();
                    assert!(!hits.is_empty());
                    for h in hits {
                        match store.get(h.id) {
                            Ok(e) => {
                                let seed = seed_of(&store.meta(h.id).map_or_else(
                                    |_| format!("seed={}", known.read().unwrap()[&h.id].0),
                                    |m| m.provenance.text,
                                ))
                                .unwrap();
                                assert_expert(&cfg, &e, seed);
                            }
                            // Deleted between the search and this read.
                            Err(StoreError::UnknownExpert { .. }) => {}
                            Err(e) => panic!("reader {r}: hit {}: {e}", h.id),
                        }
                    }
                    if rng.random_bool(0.02) {
                        let snap = store.snapshot();
                        let mut n = 0u64;
                        for e in snap.iter() {
                            e.unwrap();
                            n += 1;
                        }
                        assert_eq!(n, snap.len());
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let writer = {
        let (index, known, stop, cfg) = (index.clone(), known.clone(), stop.clone(), cfg.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(77);
            let mut seed = 10_000u64;
            while !stop.load(Ordering::Relaxed) {
                let n = rng.random_range(1..20u64);
                let ids = index
                    .insert_batch((seed..seed + n).map(|s| expert(&cfg, s)).collect())
                    .unwrap();
                known
                    .write()
                    .unwrap()
                    .extend(ids.into_iter().zip((seed..seed + n).map(|s| (s, false))));
                seed += n;
                let victims: Vec<u64> = {
                    let mut k = known.write().unwrap();
                    let live: Vec<u64> = k.iter().filter(|(_, v)| !v.1).map(|(&i, _)| i).collect();
                    let v: Vec<u64> = (0..rng.random_range(1..12))
                        .map(|_| live[rng.random_range(0..live.len())])
                        .collect::<BTreeSet<u64>>()
                        .into_iter()
                        .collect();
                    for id in &v {
                        k.get_mut(id).unwrap().1 = true;
                    }
                    v
                };
                index.delete_batch(&victims).unwrap();
                if rng.random_bool(0.1) {
                    index.save().unwrap();
                }
            }
        })
    };

    let mut runs = 0;
    let mut copied = 0;
    let mut during = 0;
    let t = std::time::Instant::now();
    while runs < 40 || t.elapsed().as_millis() < 2500 {
        let r = store
            .compact(&aggressive(), tombstone_horizon(store.dir()))
            .unwrap();
        copied += r.records_copied;
        during += r.deleted_during_copy;
        runs += 1;
        if r.plan.shards.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    eprintln!(
        "{runs} compactions copied {copied} records ({during} deleted while being copied); {} reader iterations",
        reads.load(Ordering::Relaxed)
    );
    assert!(copied > 1000, "compaction copied only {copied} records");
    assert!(reads.load(Ordering::Relaxed) > 500);

    let k = known.read().unwrap();
    let live: BTreeMap<u64, u64> = k
        .iter()
        .filter(|(_, v)| !v.1)
        .map(|(&id, v)| (id, v.0))
        .collect();
    assert_eq!(store.len(), live.len() as u64);
    for (&id, &seed) in &live {
        assert_expert(&cfg, &store.get(id).unwrap(), seed);
    }
    let v = store.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(store.stats().unwrap().orphan_slots, 0);
    assert_eq!(index.len() as u64, store.len());
    let ids: Vec<Vec<u64>> = answers(&index, &qs, 10)
        .into_iter()
        .map(|r| r.into_iter().map(|(id, _)| id).collect())
        .collect();
    assert_eq!(ids, oracle(&store, &qs, 10));
    assert_eq!(shard_files(dir.path()), metadata_files(&store));

    // Reopen: the saved index plus catch-up equals the live set.
    drop(k);
    drop(index);
    drop(store);
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let check = ExpertIndex::check_saved(&store).unwrap();
    assert!(
        check.missing.is_empty() && check.stale.is_empty(),
        "{check:?}"
    );
    for (&id, &seed) in &live {
        assert_expert(&cfg, &store.get(id).unwrap(), seed);
    }
}
