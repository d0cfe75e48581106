//! A corrupt record and an inconsistent index, found by the tool: `verify` names the
//! expert, shard and offset and exits non-zero; `inspect` shows the bad checksum; an
//! index that has lost a delete, or whose file is damaged, is reported too.

mod common;

use std::sync::Arc;

use common::{expert, fails, ok, s, small_config};
use mome::Store;
use mome::{ExpertIndex, IndexParams};

#[test]
fn verify_names_a_corrupt_record_and_index_problems() {
    let cfg = small_config();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (victim, shard, offset, record_size) = {
        let store = Arc::new(Store::create(&dir, cfg.clone()).unwrap());
        let index = ExpertIndex::open_with(store.clone(), IndexParams::flat()).unwrap();
        index
            .insert_batch((0..400).map(|s| expert(&cfg, s)).collect())
            .unwrap();
        // Shard 2 (experts 161..=320) is sealed; one delete makes it a compaction candidate.
        index.delete(199).unwrap();
        let e = store.get(200).unwrap();
        (200u64, e.shard_id(), e.offset(), store.layout().record_size)
    };
    let db = s(&dir);
    ok(&["verify", "--db", db]);

    // Flip one byte in the middle of expert 200's weights.
    let path = dir.join(format!("shards/{shard:08}.shard"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + record_size / 2] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let out = fails(&["verify", "--db", db]);
    let line = format!("PROBLEM expert {victim} shard {shard} offset {offset}: checksum mismatch");
    assert!(out.stdout.contains(&line), "{}", out.stdout);
    assert!(
        out.stdout.contains("verified 400 records: 1 problems"),
        "{}",
        out.stdout
    );
    let v = fails(&["verify", "--db", db, "--json"]).json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0]["id"], victim);
    assert_eq!(problems[0]["shard"], shard);
    assert_eq!(problems[0]["offset"], offset);

    let out = fails(&["inspect", "--db", db, "--expert", "200"]);
    assert!(out.stdout.contains("checksum: BAD"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("|A|_F"),
        "norms of a corrupt record were shown"
    );
    let sh = fails(&[
        "inspect",
        "--db",
        db,
        "--shard",
        &shard.to_string(),
        "--json",
    ])
    .json();
    assert_eq!(sh["problems"], 1);
    let bad: Vec<_> = sh["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["problem"].is_null())
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["expert"], victim);
    assert_eq!(bad[0]["offset"], offset);
    // Compaction refuses to copy it (rather than spreading or dropping it).
    let out = fails(&["compact", "--db", db, "--min-live-fraction", "1"]);
    assert!(
        out.stderr
            .contains(&format!("corrupt record for expert {victim}")),
        "{}",
        out.stderr
    );

    // Restore the byte; now make the saved index claim a position past a delete it
    // never saw (what purging a tombstone too early would do).
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + record_size / 2] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    ok(&["verify", "--db", db]);
    {
        let store = Store::open(&dir).unwrap();
        store.delete(77).unwrap();
    }
    let meta_path = dir.join("index/index.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["seq"] = serde_json::json!(meta["seq"].as_u64().unwrap() + 1);
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let v = fails(&["verify", "--db", db, "--json"]).json();
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["id"], 77);
    assert!(problems[0]["detail"]
        .as_str()
        .unwrap()
        .contains("deleted expert still in the index"));

    // A damaged index file is reported as unusable (the next open rebuilds it).
    let data = std::fs::read_dir(dir.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "flat"))
        .unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let out = fails(&["verify", "--db", db]);
    assert!(
        out.stdout.contains("saved index unusable"),
        "{}",
        out.stdout
    );
    // Any command that opens the index repairs it; verify is clean again.
    ok(&["delete", "--db", db, "--expert", "78"]);
    ok(&["verify", "--db", db]);
}
