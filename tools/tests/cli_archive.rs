//! `mome export` / `mome import` as processes: a round trip into a fresh store gives
//! identical keys, weights and provenance under new ids; a store of another config, a
//! truncated archive and a damaged one are refused with a clear error and the store
//! left as it was.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{expert, fails, ok, s, small_config};
use mome::{Provenance, Store, StoreConfig};

/// Weights (key, A, B of each layer, as fp16 bits) and provenance of every live expert,
/// keyed by the seed in its provenance.
fn contents(db: &Path) -> BTreeMap<String, (Vec<u16>, Provenance)> {
    let store = Store::open(db).unwrap();
    let n = store.layout().n_layers;
    let snap = store.snapshot();
    snap.iter()
        .map(|e| {
            let e = e.unwrap();
            let mut w: Vec<u16> = e.key().iter().map(|x| x.to_bits()).collect();
            for l in 0..n {
                w.extend(e.a(l).iter().map(|x| x.to_bits()));
                w.extend(e.b(l).iter().map(|x| x.to_bits()));
            }
            let p = store.meta(e.id()).unwrap().provenance;
            (p.text.clone(), (w, p))
        })
        .collect()
}

#[test]
fn export_import_round_trip_and_refusals() {
    let cfg = small_config();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    {
        let store = Store::create(&src, cfg.clone()).unwrap();
        store
            .insert_batch((0..250).map(|s| expert(&cfg, s)).collect())
            .unwrap();
        store.delete_batch(&[3, 4, 5]).unwrap();
    }
    let file = tmp.path().join("experts.mome");
    let out = ok(&["export", "--db", s(&src), "--out", s(&file), "--json"]).json();
    assert_eq!(out["experts"], 247);
    assert_eq!(out["bytes"], std::fs::metadata(&file).unwrap().len());
    let text = ok(&["export", "--db", s(&src), "--out", s(&file)]).stdout;
    assert!(text.starts_with("exported 247 experts"), "{text}");

    // Into a fresh store holding one expert already: new ids follow its own.
    let dst = tmp.path().join("dst");
    {
        let store = Store::create(&dst, cfg.clone()).unwrap();
        store.insert(expert(&cfg, 9999)).unwrap();
    }
    let out = ok(&["import", "--db", s(&dst), "--in", s(&file), "--json"]).json();
    assert_eq!(out["experts"], 247);
    assert_eq!(
        (out["first_id"].as_u64(), out["last_id"].as_u64()),
        (Some(2), Some(248))
    );
    let mut want = contents(&src);
    let got = contents(&dst);
    assert!(got.contains_key("seed=9999"));
    want.insert("seed=9999".into(), got["seed=9999"].clone());
    assert_eq!(got, want);
    ok(&["verify", "--db", s(&dst)]);
    let st = ok(&["stats", "--db", s(&dst), "--json"]).json();
    assert_eq!(st["index"]["keys"], 248);

    // Refusals leave the target store as it was.
    let seq_of = |db: &Path| ok(&["stats", "--db", s(db), "--json"]).json()["seq"].clone();
    let other = tmp.path().join("other");
    drop(Store::create(&other, StoreConfig::new(16, 8, 2, vec![1, 2])).unwrap());
    let before = seq_of(&other);
    let e = fails(&["import", "--db", s(&other), "--in", s(&file)]);
    assert!(
        e.stderr.contains(
            "does not fit this store: `layers` is [1, 3] in the archive but [1, 2] in the store"
        ),
        "{}",
        e.stderr
    );
    assert_eq!(seq_of(&other), before);

    let bytes = std::fs::read(&file).unwrap();
    let cut = tmp.path().join("cut.mome");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let before = seq_of(&dst);
    let e = fails(&["import", "--db", s(&dst), "--in", s(&cut)]);
    assert!(e.stderr.contains("truncated"), "{}", e.stderr);
    assert_eq!(seq_of(&dst), before);

    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x08;
    std::fs::write(&cut, &damaged).unwrap();
    let e = fails(&["import", "--db", s(&dst), "--in", s(&cut)]);
    assert!(e.stderr.contains("checksum mismatch"), "{}", e.stderr);
    assert_eq!(seq_of(&dst), before);
    assert_eq!(contents(&dst).len(), 248);

    // Export to a directory that does not exist fails cleanly.
    let e = fails(&[
        "export",
        "--db",
        s(&src),
        "--out",
        "/nonexistent/dir/x.mome",
    ]);
    assert!(e.stderr.contains("/nonexistent/dir"), "{}", e.stderr);
}
