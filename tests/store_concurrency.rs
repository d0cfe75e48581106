//! Concurrency: reader threads `get` and scan snapshots while one writer inserts and
//! deletes. Readers only ever see whole experts, and never block on the writer.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use common::{assert_expert, expert, small_config};
use mome::Store;
use mome::StoreError;
use rand::{Rng, SeedableRng};

#[test]
fn readers_see_whole_experts_while_a_writer_works() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let store = Arc::new(Store::create(dir.path(), cfg.clone()).unwrap());
    // id → seed; an id is marked "dying" before its delete starts.
    let known: Arc<RwLock<BTreeMap<u64, (u64, bool)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (store, known, stop, reads, cfg) = (
                store.clone(),
                known.clone(),
                stop.clone(),
                reads.clone(),
                cfg.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(r);
                while !stop.load(Ordering::Relaxed) {
                    let pick = {
                        let k = known.read().unwrap();
                        if k.is_empty() {
                            None
                        } else {
                            k.iter()
                                .nth(rng.random_range(0..k.len()))
                                .map(|(&i, &v)| (i, v))
                        }
                    };
                    if let Some((id, (seed, dying))) = pick {
                        match store.get(id) {
                            Ok(e) => assert_expert(&cfg, &e, seed),
                            Err(StoreError::UnknownExpert { .. }) => {
                                // The pick was made under the lock, the get after it: the
                                // writer may have marked the id and deleted it between
                                // the two. It marks before it deletes, so a vanished id
                                // is marked by now, or the store lost a live expert.
                                let dying_now = known.read().unwrap().get(&id).is_some_and(|v| v.1);
                                assert!(dying || dying_now, "live expert {id} vanished")
                            }
                            Err(e) => panic!("reader: {e}"),
                        }
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    if rng.random_bool(0.01) {
                        // A snapshot is self-consistent: every id it lists resolves.
                        let snap = store.snapshot();
                        let mut n = 0u64;
                        for e in snap.iter() {
                            e.unwrap();
                            n += 1;
                        }
                        assert_eq!(n, snap.len());
                    }
                }
            })
        })
        .collect();

    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut seed = 0u64;
    for round in 0..300 {
        let n = rng.random_range(1..8u64);
        let seeds: Vec<u64> = (seed..seed + n).collect();
        seed += n;
        let ids = store
            .insert_batch(seeds.iter().map(|&s| expert(&cfg, s)).collect())
            .unwrap();
        known
            .write()
            .unwrap()
            .extend(ids.into_iter().zip(seeds.into_iter().map(|s| (s, false))));
        if round % 3 == 0 {
            let victim = {
                let mut k = known.write().unwrap();
                let live: Vec<u64> = k.iter().filter(|(_, v)| !v.1).map(|(&i, _)| i).collect();
                let id = live[rng.random_range(0..live.len())];
                k.get_mut(&id).unwrap().1 = true;
                id
            };
            store.delete(victim).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 1000);
    let live = known.read().unwrap().values().filter(|v| !v.1).count() as u64;
    assert_eq!(store.len(), live);
}

#[test]
fn concurrent_writers_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let store = Arc::new(Store::create(dir.path(), cfg.clone()).unwrap());
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (store, cfg) = (store.clone(), cfg.clone());
            std::thread::spawn(move || {
                (0..50u64)
                    .map(|i| {
                        let seed = w * 1000 + i;
                        (store.insert(expert(&cfg, seed)).unwrap(), seed)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<(u64, u64)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(all.len(), 200);
    for &(id, seed) in &all {
        assert_expert(&cfg, &store.get(id).unwrap(), seed);
    }
    // One commit sequence per group: never more commits than inserts.
    assert!(store.seq() <= 200);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.len(), 200);
}
