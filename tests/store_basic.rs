//! Store lifecycle and bad input: create, open, config checks, lock, versions, typed errors.

mod common;

use common::{assert_expert, expert, small_config};
use half::f16;
use mome::StoreError;
use mome::{Provenance, Store, StoreConfig};

#[test]
fn insert_get_delete_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let store = Store::create(dir.path().join("db"), cfg.clone()).unwrap();
    assert!(store.is_empty());
    let ids = store
        .insert_batch((0..300).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    assert_eq!(ids, (1..=300).collect::<Vec<_>>());
    let one = store.insert(expert(&cfg, 999)).unwrap();
    assert_eq!(one, 301);
    assert_eq!(store.len(), 301);
    for (i, &id) in ids.iter().enumerate() {
        assert_expert(&cfg, &store.get(id).unwrap(), i as u64);
    }
    let snap = store.snapshot();
    store.delete(5).unwrap();
    store.delete_batch(&[6, 7, 7]).unwrap();
    assert!(matches!(
        store.get(5),
        Err(StoreError::UnknownExpert { id: 5 })
    ));
    // The snapshot taken before the delete still sees the expert, byte for byte.
    assert_expert(&cfg, &snap.get(5).unwrap(), 4);
    assert_eq!(store.len(), 298);
    assert!(matches!(
        store.delete(5),
        Err(StoreError::UnknownExpert { id: 5 })
    ));
    let meta = store.meta(1).unwrap();
    assert_eq!(meta.provenance.text, "seed=0");
    assert!(meta.created_at_ms > 0);
    store.add_usage(&[(1, 3), (1, 2)]).unwrap();
    assert_eq!(store.usage(1).unwrap(), 5);

    let stats = store.stats().unwrap();
    assert_eq!(stats.live, 298);
    assert_eq!(stats.deleted, 3);
    assert_eq!(stats.orphan_slots, 0);
    assert!(
        stats.shards.len() >= 2,
        "300 records must roll over 64 KiB shards"
    );
    assert_eq!(
        stats
            .shards
            .iter()
            .map(|s| s.used_slots as u64)
            .sum::<u64>(),
        301
    );
    drop(snap);
    drop(store);

    let store = Store::open(dir.path().join("db")).unwrap();
    assert_eq!(store.len(), 298);
    assert_eq!(store.usage(1).unwrap(), 5);
    assert!(store.get(6).is_err());
    assert_expert(&cfg, &store.get(300).unwrap(), 299);
    // Ids are never reused, even after deletes and a reopen.
    assert_eq!(store.insert(expert(&cfg, 1000)).unwrap(), 302);
    let ids: Vec<u64> = store.snapshot().ids().collect();
    assert_eq!(ids.len(), 299);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert!(store.verify().unwrap().problems.is_empty());
}

#[test]
fn config_is_persisted_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config().with_backbone_digest("abc");
    drop(Store::create(dir.path(), cfg.clone()).unwrap());
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.config(), &cfg);
    drop(store);
    assert!(Store::open_with(dir.path(), &cfg).is_ok());
    let other = StoreConfig::new(16, 8, 4, vec![1, 3]).with_shard_size(64 * 1024);
    match Store::open_with(dir.path(), &other) {
        Err(StoreError::ConfigMismatch {
            field,
            stored,
            given,
        }) => {
            assert_eq!(field, "rank");
            assert_eq!((stored.as_str(), given.as_str()), ("2", "4"));
        }
        other => panic!("expected a config mismatch, got {other:?}"),
    }
    assert!(matches!(
        Store::create(dir.path(), cfg),
        Err(StoreError::AlreadyExists { .. })
    ));
}

#[test]
fn second_writer_gets_a_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::create(dir.path(), small_config()).unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn bad_inputs_are_typed_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let store = Store::create(dir.path(), cfg.clone()).unwrap();

    let mut short_key = expert(&cfg, 1);
    short_key.key.pop();
    match store.insert_batch(vec![expert(&cfg, 0), short_key]) {
        Err(StoreError::DimMismatch {
            what,
            expected,
            found,
        }) => {
            assert!(what.contains("expert 1") && what.contains("key"), "{what}");
            assert_eq!((expected, found), (8, 7));
        }
        other => panic!("{other:?}"),
    }
    let mut nan = expert(&cfg, 2);
    nan.layers[1].b[5] = f16::NAN;
    match store.insert(nan) {
        Err(StoreError::NonFinite { what, index }) => {
            assert!(what.contains("layer 1 B"), "{what}");
            assert_eq!(index, 5);
        }
        other => panic!("{other:?}"),
    }
    let mut inf = expert(&cfg, 2);
    inf.key[0] = f16::INFINITY;
    assert!(matches!(
        store.insert(inf),
        Err(StoreError::NonFinite { .. })
    ));
    let mut layers = expert(&cfg, 3);
    layers.layers.pop();
    assert!(matches!(
        store.insert(layers),
        Err(StoreError::DimMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
    let mut a = expert(&cfg, 3);
    a.layers[0].a.push(f16::ZERO);
    assert!(matches!(
        store.insert(a),
        Err(StoreError::DimMismatch { .. })
    ));
    assert!(matches!(
        store.insert_batch(vec![]),
        Err(StoreError::EmptyBatch { .. })
    ));
    assert!(matches!(
        store.delete_batch(&[]),
        Err(StoreError::EmptyBatch { .. })
    ));
    assert!(matches!(
        store.get(42),
        Err(StoreError::UnknownExpert { id: 42 })
    ));
    assert!(matches!(
        store.get(0),
        Err(StoreError::UnknownExpert { id: 0 })
    ));
    assert!(matches!(
        store.get(u64::MAX),
        Err(StoreError::UnknownExpert { .. })
    ));
    assert!(matches!(
        store.meta(42),
        Err(StoreError::UnknownExpert { id: 42 })
    ));
    assert!(matches!(
        store.get_many(&[1, 2]),
        Err(StoreError::UnknownExpert { id: 1 })
    ));
    // Nothing above reached the disk: no record, no id consumed.
    assert!(store.is_empty());
    assert_eq!(store.stats().unwrap().shards.len(), 0);
    assert_eq!(store.insert(expert(&cfg, 9)).unwrap(), 1);

    let bad = StoreConfig::new(0, 8, 2, vec![1]);
    assert!(matches!(
        Store::create(dir.path().join("x"), bad),
        Err(StoreError::InvalidConfig {
            field: "d_model",
            ..
        })
    ));
    let _ = Provenance::fact("p", "a");
}

#[test]
fn open_refuses_what_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::NotAStore { .. })
    ));
    assert!(matches!(
        Store::open(dir.path().join("missing")),
        Err(StoreError::NotAStore { .. })
    ));
}

#[test]
fn a_file_that_is_not_a_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let store = Store::create(dir.path(), cfg.clone()).unwrap();
    store.insert(expert(&cfg, 1)).unwrap();
    drop(store);
    let shard = dir.path().join("shards/00000001.shard");
    std::fs::write(&shard, b"this is not a shard file at all").unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::NotAShard { path, .. }) => assert_eq!(path, shard),
        other => panic!("expected NotAShard, got {other:?}"),
    }
    assert!(matches!(
        mome::read_header(&dir.path().join("meta/CURRENT")),
        Err(StoreError::NotAShard { .. })
    ));
}

#[test]
fn newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::create(dir.path(), small_config()).unwrap());
    {
        let cfs = ["meta", "loc", "keys", "prov", "usage", "shards", "dead"];
        let mut o = rocksdb::Options::default();
        o.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&o, dir.path().join("meta"), cfs).unwrap();
        let cf = db.cf_handle("meta").unwrap();
        db.put_cf(cf, b"format_version", 99u32.to_le_bytes())
            .unwrap();
    }
    match Store::open(dir.path()) {
        Err(StoreError::UnsupportedVersion {
            found, supported, ..
        }) => assert_eq!((found, supported), (99, 1)),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

#[test]
fn truncated_shard_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let store = Store::create(dir.path(), cfg.clone()).unwrap();
    store
        .insert_batch((0..10).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    drop(store);
    let shard = dir.path().join("shards/00000001.shard");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len - 100).unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::TruncatedShard {
            shard,
            expected,
            found,
            ..
        }) => assert_eq!((shard, expected, found), (1, len, len - 100)),
        other => panic!("expected TruncatedShard, got {other:?}"),
    }
}

#[test]
fn uncommitted_tail_is_truncated_and_orphan_files_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let store = Store::create(dir.path(), cfg.clone()).unwrap();
    store
        .insert_batch((0..3).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    drop(store);
    let shard = dir.path().join("shards/00000001.shard");
    let len = std::fs::metadata(&shard).unwrap().len();
    // Simulate a crash between the shard append and the metadata commit.
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes.extend(std::iter::repeat_n(0xAB, 1000));
    std::fs::write(&shard, &bytes).unwrap();
    std::fs::write(dir.path().join("shards/00000009.shard"), b"junk").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(std::fs::metadata(&shard).unwrap().len(), len);
    assert_eq!(store.len(), 3);
    let stats = store.stats().unwrap();
    assert_eq!(stats.orphan_files.len(), 1);
    assert_eq!(stats.orphan_files[0].bytes, 4);
    // A new shard never reuses the orphan's number.
    let mut more = Vec::new();
    for s in 0..400 {
        more.push(expert(&cfg, 100 + s));
    }
    store.insert_batch(more).unwrap();
    assert!(!store.stats().unwrap().shards.iter().any(|s| s.id == 9));
    assert!(store.verify().unwrap().problems.is_empty());
}

#[test]
fn usage_counts_accumulate_in_memory_and_persist_on_flush() {
    use mome::UsageAccumulator;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config();
    let store = Store::create(dir.path(), cfg.clone()).unwrap();
    let ids = store
        .insert_batch((0..3).map(|s| expert(&cfg, s)).collect())
        .unwrap();
    let acc = Arc::new(UsageAccumulator::new());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (acc, ids) = (acc.clone(), ids.clone());
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    acc.record(&[ids[0], ids[1], ids[0]]);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(
        store.usage(ids[0]).unwrap(),
        0,
        "nothing persisted before flush"
    );
    assert_eq!(acc.total(&store, ids[0]).unwrap(), 8000);
    acc.flush(&store).unwrap();
    assert_eq!(acc.pending_len(), 0);
    acc.record(&[ids[1]]);
    acc.flush(&store).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.usage(ids[0]).unwrap(), 8000);
    assert_eq!(store.usage(ids[1]).unwrap(), 4001);
    assert_eq!(store.usage(ids[2]).unwrap(), 0);
    assert_eq!(store.meta(ids[1]).unwrap().usage, 4001);
}
