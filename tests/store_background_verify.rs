//! Background verification (`Store::verify_in_background`): it names exactly the corrupt
//! records, never makes one readable, skips what reads already verified, runs beside
//! readers, writers and compaction, and neither outlives nor pins a dropped store.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{assert_expert, expert, small_config};
use mome::{BackgroundVerifyPolicy, CompactionPolicy, RecordLayout, Store, StoreError};
use rand::{Rng, SeedableRng};

/// Flips one bit in each of `n` random records; returns the ids hit.
fn corrupt_some(
    dir: &std::path::Path,
    store: &Store,
    ids: &[u64],
    n: usize,
    seed: u64,
) -> BTreeSet<u64> {
    let layout = RecordLayout::for_config(store.config());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hit = BTreeSet::new();
    while hit.len() < n {
        let id = ids[rng.random_range(0..ids.len())];
        let e = store.get(id).unwrap();
        let path = dir.join(format!("shards/{:08}.shard", e.shard_id()));
        let mut bytes = std::fs::read(&path).unwrap();
        let pos = e.offset() as usize + rng.random_range(0..layout.record_size);
        bytes[pos] ^= 1 << rng.random_range(0..8);
        std::fs::write(&path, bytes).unwrap();
        hit.insert(id);
    }
    hit
}

#[test]
fn names_exactly_the_corrupt_records_and_never_marks_them() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), cfg.clone()).unwrap();
    let ids = store
        .insert_batch((0..600).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    let hit = corrupt_some(dir.path(), &store, &ids, 9, 11);
    drop(store);

    let store = Arc::new(Store::open(dir.path()).unwrap());
    // Some records read (and so verified) before the background pass starts.
    let read_first: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !hit.contains(id))
        .take(50)
        .collect();
    for &id in &read_first {
        store.get(id).unwrap();
    }
    let status = store
        .verify_in_background(BackgroundVerifyPolicy::unthrottled())
        .wait();
    assert!(status.finished);
    let named: BTreeSet<u64> = status.problems.iter().filter_map(|p| p.id).collect();
    assert_eq!(named, hit, "the pass must name exactly the corrupt records");
    for p in &status.problems {
        let e_loc = store.snapshot().location(p.id.unwrap()).unwrap();
        assert_eq!(p.shard, Some(e_loc.shard));
        assert_eq!(
            p.offset,
            Some(store.layout().slot_offset(e_loc.slot)),
            "expert {:?}",
            p.id
        );
    }
    assert_eq!(status.records_skipped, read_first.len() as u64);
    assert_eq!(
        status.records_checked + status.records_skipped,
        ids.len() as u64
    );
    assert_eq!(
        status.bytes_checked,
        status.records_checked * store.layout().record_size as u64
    );
    // After the pass: every intact record reads back byte-identical, every corrupt one
    // still fails on each read.
    for (seed, &id) in ids.iter().enumerate() {
        if hit.contains(&id) {
            for _ in 0..2 {
                assert!(
                    matches!(store.get(id), Err(StoreError::CorruptRecord { id: e, .. }) if e == id),
                    "corrupt expert {id} served after background verification"
                );
            }
        } else {
            assert_expert(&cfg, &store.get(id).unwrap(), seed as u64);
        }
    }
    // A second pass has nothing left to check but the corrupt ones.
    let again = store
        .verify_in_background(BackgroundVerifyPolicy::unthrottled())
        .wait();
    assert_eq!(again.records_checked, hit.len() as u64);
    assert_eq!(again.records_skipped, (ids.len() - hit.len()) as u64);
}

#[test]
fn runs_beside_readers_writers_and_compaction() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg.clone()).unwrap());
    let ids = store
        .insert_batch((0..800).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    // Half deleted so that compaction has shards to rewrite.
    let deleted: Vec<u64> = ids.iter().copied().step_by(2).collect();
    let bg = store.verify_in_background(BackgroundVerifyPolicy::unthrottled());
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..3 {
                for (seed, &id) in ids.iter().enumerate().skip(1).step_by(2) {
                    assert_expert(&cfg, &store.get(id).unwrap(), seed as u64);
                }
                let _ = round;
            }
        });
        s.spawn(|| {
            store.delete_batch(&deleted).unwrap();
            store
                .insert_batch((800..1000).map(|s| expert(&cfg, s)).collect())
                .unwrap();
            store
                .compact(&CompactionPolicy::default(), u64::MAX)
                .unwrap();
        });
    });
    let status = bg.wait();
    assert!(status.finished);
    assert!(status.problems.is_empty(), "{:?}", status.problems);
    assert!(status.records_checked > 0);
    for (seed, &id) in ids.iter().enumerate().skip(1).step_by(2) {
        assert_expert(&cfg, &store.get(id).unwrap(), seed as u64);
    }
    assert!(store.verify().unwrap().problems.is_empty());
}

#[test]
fn stops_on_request_and_never_pins_a_dropped_store() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::create(dir.path(), cfg.clone()).unwrap());
    let ids = store
        .insert_batch((0..300).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    drop(store);
    let record = RecordLayout::for_config(&cfg).record_size as u64;

    // One record a second: `stop` returns at once, part of the way through.
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let bg = store.verify_in_background(BackgroundVerifyPolicy::throttled(record));
    let status = bg.stop();
    assert!(status.finished);
    assert!(status.records_checked < ids.len() as u64);

    // Dropping the store while a (throttled) pass runs: the pass ends, the writer lock
    // is released, and the store reopens for writing.
    let bg = store.verify_in_background(BackgroundVerifyPolicy::throttled(record));
    drop(store);
    let status = bg.wait();
    assert!(status.finished);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.len(), ids.len() as u64);

    // Dropping the handle stops the thread too (the test would hang otherwise).
    let store = Arc::new(store);
    drop(store.verify_in_background(BackgroundVerifyPolicy::throttled(record)));
}
