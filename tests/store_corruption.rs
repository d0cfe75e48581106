//! Corruption test: flip random bytes in shard files; every read and verify of an affected
//! record reports a checksum error naming the expert, shard and offset; nothing panics and
//! unaffected records read back intact.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{assert_expert, expert, small_config};
use mome::StoreError;
use mome::{RecordLayout, Store};
use rand::{Rng, SeedableRng};

#[test]
fn flipped_bytes_are_reported_never_used() {
    let cfg = small_config();
    let layout = RecordLayout::for_config(&cfg);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..8 {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path(), cfg.clone()).unwrap();
        let ids = store
            .insert_batch((0..400).map(|s| expert(&cfg, s)).collect())
            .unwrap();
        // (shard, offset) → (id, seed)
        let mut where_: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
        for (seed, &id) in ids.iter().enumerate() {
            let e = store.get(id).unwrap();
            where_.insert((e.shard_id(), e.offset()), (id, seed as u64));
        }
        drop(store);

        let mut hit: BTreeSet<u64> = BTreeSet::new();
        for _ in 0..rng.random_range(1..20) {
            let (&(shard, offset), &(id, _)) = where_
                .iter()
                .nth(rng.random_range(0..where_.len()))
                .unwrap();
            let path = dir.path().join(format!("shards/{shard:08}.shard"));
            let mut bytes = std::fs::read(&path).unwrap();
            let pos = offset as usize + rng.random_range(0..layout.record_size);
            bytes[pos] ^= 1 << rng.random_range(0..8);
            std::fs::write(&path, bytes).unwrap();
            hit.insert(id);
        }

        let store = Store::open(dir.path()).unwrap();
        for (&(shard, offset), &(id, seed)) in &where_ {
            match store.get(id) {
                Ok(e) => {
                    assert!(
                        !hit.contains(&id),
                        "round {round}: corrupt expert {id} was served"
                    );
                    assert_expert(&cfg, &e, seed);
                }
                Err(StoreError::CorruptRecord {
                    id: eid,
                    shard: s,
                    offset: o,
                    ..
                }) => {
                    assert!(
                        hit.contains(&id),
                        "round {round}: intact expert {id} rejected"
                    );
                    assert_eq!((eid, s, o), (id, shard, offset));
                }
                Err(other) => panic!("round {round}: unexpected error {other}"),
            }
            // A second read must not be served from a "verified" cache.
            if hit.contains(&id) {
                assert!(store.get(id).is_err());
            }
        }
        let report = store.verify().unwrap();
        let reported: BTreeSet<u64> = report.problems.iter().filter_map(|p| p.id).collect();
        assert_eq!(
            reported, hit,
            "round {round}: verify must name exactly the corrupt records"
        );
        for p in &report.problems {
            let (shard, offset) = (p.shard.unwrap(), p.offset.unwrap());
            assert_eq!(where_[&(shard, offset)].0, p.id.unwrap());
        }
        assert!(store.get_many(&ids).is_err());
    }
}

#[test]
fn corrupt_shard_header_fails_open_with_the_path() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path(), cfg.clone()).unwrap();
    store.insert(expert(&cfg, 1)).unwrap();
    drop(store);
    let path = dir.path().join("shards/00000001.shard");
    for pos in [0usize, 9, 17, 25, 41, 62] {
        let orig = std::fs::read(&path).unwrap();
        let mut bytes = orig.clone();
        bytes[pos] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::NotAShard { path: p, .. }) => assert_eq!(p, path),
            other => panic!("byte {pos}: expected NotAShard, got {other:?}"),
        }
        std::fs::write(&path, &orig).unwrap();
    }
    assert_expert(&cfg, &Store::open(dir.path()).unwrap().get(1).unwrap(), 1);
}
