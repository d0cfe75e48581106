//! Archives: export → import into a fresh store gives identical keys, weights,
//! provenance and usage (new ids, the index follows); a different-config, truncated,
//! bit-flipped or padded archive is refused with a typed error before anything is
//! written to the store.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{expert, small_config};
use mome::ArchiveError;
use mome::{ExpertIndex, IndexParams};
use mome::{Provenance, Store, StoreConfig};

/// Experts of `cfg` with rich provenance, some used and some deleted.
fn source_store(dir: &Path, cfg: &StoreConfig, n: u64) -> Store {
    let store = Store::create(dir, cfg.clone()).unwrap();
    let experts = (0..n)
        .map(|s| {
            let mut e = expert(cfg, s);
            e.provenance = Provenance::fact(format!("prompt {s} ✓"), format!("answer {s}"))
                .with_training(0.001 * s as f32, 10 + s as u32)
                .with_backbone_digest("sha256:abc");
            e.provenance.text = format!("seed={s}");
            e
        })
        .collect();
    let ids = store.insert_batch(experts).unwrap();
    store
        .add_usage(&ids.iter().map(|&id| (id, id % 7)).collect::<Vec<_>>())
        .unwrap();
    store.delete_batch(&[ids[1], ids[5]]).unwrap();
    store
}

/// Everything an archive must carry, keyed by the seed in the provenance text.
fn contents(store: &Store) -> BTreeMap<String, (Vec<u8>, Provenance, u64, u64)> {
    let layout = store.layout();
    store
        .snapshot()
        .iter()
        .map(|e| {
            let e = e.unwrap();
            let meta = store.meta(e.id()).unwrap();
            let mut bytes: Vec<u8> = bytemuck_f16(e.key());
            for l in 0..layout.n_layers {
                bytes.extend(bytemuck_f16(e.a(l)));
                bytes.extend(bytemuck_f16(e.b(l)));
            }
            (
                meta.provenance.text.clone(),
                (bytes, meta.provenance, meta.usage, meta.created_at_ms),
            )
        })
        .collect()
}

fn bytemuck_f16(v: &[half::f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn round_trip_into_a_fresh_store_is_identical() {
    let cfg = small_config();
    let src_dir = tempfile::tempdir().unwrap();
    let src = source_store(src_dir.path(), &cfg, 400);
    let file = src_dir.path().join("experts.mome");
    let report = mome::export_archive(&src, &file).unwrap();
    assert_eq!(report.experts, 398);
    assert_eq!(report.bytes, std::fs::metadata(&file).unwrap().len());
    assert!(!src_dir.path().join("experts.mome.partial").exists());
    let summary = mome::check_archive(&file).unwrap();
    assert_eq!(summary.experts, 398);
    assert_eq!(summary.config, cfg);

    // Another shard size is a storage choice, not another kind of expert.
    let dst_dir = tempfile::tempdir().unwrap();
    let dst =
        Arc::new(Store::create(dst_dir.path(), cfg.clone().with_shard_size(1 << 20)).unwrap());
    let index = ExpertIndex::open_with(dst.clone(), IndexParams::flat()).unwrap();
    let imported = mome::import_archive(&index, &file).unwrap();
    assert_eq!(imported.experts, 398);
    assert_eq!(imported.ids, (1..=398).collect::<Vec<u64>>());
    assert_eq!(contents(&dst), contents(&src));
    // The index followed: each imported key finds its own expert first.
    for &id in imported.ids.iter().step_by(37) {
        let key: Vec<f32> = dst
            .get(id)
            .unwrap()
            .key()
            .iter()
            .map(|x| x.to_f32())
            .collect();
        let hits = index.search(&key, 1).unwrap();
        assert_eq!(hits[0].id, id);
    }
    assert_eq!(index.len(), 398);
    let v = dst.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);

    // An empty store exports a valid, empty archive.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Store::create(empty_dir.path().join("s"), cfg.clone()).unwrap();
    let efile = empty_dir.path().join("empty.mome");
    assert_eq!(mome::export_archive(&empty, &efile).unwrap().experts, 0);
    assert_eq!(mome::check_archive(&efile).unwrap().experts, 0);
}

/// Imports `file` and expects a refusal that left the store exactly as it was.
fn refused(index: &ExpertIndex, file: &Path) -> ArchiveError {
    let store = index.store();
    let (seq, len, next) = (store.seq(), store.len(), store.next_id());
    let err = mome::import_archive(index, file).expect_err("a bad archive was imported");
    assert_eq!(
        (store.seq(), store.len(), store.next_id()),
        (seq, len, next),
        "a refused import wrote to the store ({err})"
    );
    err
}

#[test]
fn bad_archives_are_refused_without_touching_the_store() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let src = source_store(&dir.path().join("src"), &cfg, 6);
    let file = dir.path().join("a.mome");
    mome::export_archive(&src, &file).unwrap();
    let good = std::fs::read(&file).unwrap();

    let dst = Arc::new(Store::create(dir.path().join("dst"), cfg.clone()).unwrap());
    let index = ExpertIndex::open_with(dst.clone(), IndexParams::flat()).unwrap();
    let bad = dir.path().join("bad.mome");

    // Truncated anywhere: refused, naming the archive.
    for cut in 0..good.len() {
        std::fs::write(&bad, &good[..cut]).unwrap();
        match refused(&index, &bad) {
            ArchiveError::Corrupt { path, .. } => assert_eq!(path, bad),
            other => panic!("cut at {cut}: {other}"),
        }
    }
    // Any single flipped bit: refused (a version flip is an unsupported version).
    for pos in 0..good.len() {
        let mut b = good.clone();
        b[pos] ^= 1 << (pos % 8);
        std::fs::write(&bad, &b).unwrap();
        match refused(&index, &bad) {
            ArchiveError::Corrupt { .. } | ArchiveError::UnsupportedVersion { .. } => {}
            other => panic!("flip at {pos}: {other}"),
        }
    }
    // Bytes after the trailer.
    let mut b = good.clone();
    b.push(0);
    std::fs::write(&bad, &b).unwrap();
    let e = refused(&index, &bad);
    assert!(e.to_string().contains("after the trailer"), "{e}");
    // Not an archive at all.
    std::fs::write(&bad, b"hello, world, this is not an archive").unwrap();
    let e = refused(&index, &bad);
    assert!(e.to_string().contains("bad magic"), "{e}");

    // A store of another shape refuses it by field name, before reading further.
    let other_dir = dir.path().join("other");
    let other =
        Arc::new(Store::create(&other_dir, StoreConfig::new(16, 8, 4, vec![1, 3])).unwrap());
    let other_index = ExpertIndex::open_with(other, IndexParams::flat()).unwrap();
    match refused(&other_index, &file) {
        ArchiveError::Incompatible {
            field,
            archive,
            store,
            ..
        } => {
            assert_eq!(field, "rank");
            assert_eq!((archive.as_str(), store.as_str()), ("2", "4"));
        }
        other => panic!("{other}"),
    }
    let digest_dir = dir.path().join("digest");
    let digest = Arc::new(
        Store::create(
            &digest_dir,
            cfg.clone().with_backbone_digest("sha256:other"),
        )
        .unwrap(),
    );
    let digest_index = ExpertIndex::open_with(digest, IndexParams::flat()).unwrap();
    let e = refused(&digest_index, &file);
    assert!(e.to_string().contains("backbone_digest"), "{e}");

    // And the good archive still imports.
    assert_eq!(mome::import_archive(&index, &file).unwrap().experts, 4);
}

#[test]
fn importing_again_inserts_nothing_and_concurrent_imports_never_duplicate() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let src = source_store(&dir.path().join("src"), &cfg, 1100);
    let file = dir.path().join("experts.mome");
    let n = mome::export_archive(&src, &file).unwrap().experts;
    let id = mome::check_archive(&file).unwrap().id;
    assert_eq!(id.len(), 32, "{id}");

    // Four threads import one archive into one store at once: its records are
    // inserted once, whichever thread commits each batch.
    let dst = Arc::new(Store::create(dir.path().join("dst"), cfg.clone()).unwrap());
    let index = Arc::new(ExpertIndex::open_with(dst.clone(), IndexParams::flat()).unwrap());
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| mome::import_archive(&index, &file)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut inserted = 0;
    for r in &results {
        match r {
            Ok(r) => {
                assert_eq!(r.archive_id, id);
                inserted += r.experts;
            }
            Err(e) => assert!(
                e.to_string().contains("another import of the same archive"),
                "{e}"
            ),
        }
    }
    assert_eq!(dst.len(), n);
    assert_eq!(index.len() as u64, n);
    assert!(inserted <= n);
    assert_eq!(contents(&dst), contents(&src));

    // Once complete, importing again inserts nothing and says so.
    let again = mome::import_archive(&index, &file).unwrap();
    assert_eq!((again.experts, again.skipped), (0, n));
    assert_eq!(dst.len(), n);
    let p = dst.import_progress(&hex_id(&id)).unwrap().unwrap();
    assert_eq!((p.done, p.total), (n, n));
}

fn hex_id(s: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    id
}
