//! The admin subcommands as processes on a store built here: `--help` of each, `stats`,
//! `inspect`, `delete`, `verify` (and `--recall` refusing a store the model does not fit), `compact` (dry run, then
//! for real), with their human and `--json` outputs and exit codes. After compaction
//! every expert reads back byte-identical and `verify` is clean.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{expert, fails, ok, s, small_config};
use mome::Store;
use mome::{ExpertIndex, IndexParams};

#[test]
fn every_subcommand_has_help() {
    let top = ok(&["--help"]).stdout;
    for sub in [
        "smoke", "stats", "inspect", "verify", "compact", "export", "import", "search", "delete",
    ] {
        assert!(top.contains(sub), "top-level help lacks {sub}");
        let help = ok(&[sub, "--help"]).stdout;
        assert!(help.contains("--db"), "{sub} --help: {help}");
        if sub != "smoke" {
            assert!(help.contains("--json"), "{sub} --help lacks --json");
        }
    }
    assert!(ok(&["search", "--help"]).stdout.contains("stage 1"));
    assert!(ok(&["verify", "--help"]).stdout.contains("--recall"));
    assert!(ok(&["compact", "--help"]).stdout.contains("--dry-run"));
    // A usage error is not a success either.
    let bad = fails(&["inspect", "--db", "/nonexistent"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    let missing = fails(&["stats", "--db", "/nonexistent/store"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("not a mome store"),
        "{}",
        missing.stderr
    );
}

/// Every live expert's record bytes, by id.
fn records(db: &std::path::Path) -> BTreeMap<u64, Vec<u8>> {
    let store = Store::open(db).unwrap();
    let snap = store.snapshot();
    snap.iter()
        .map(|e| {
            let e = e.unwrap();
            (e.id(), e.record_bytes().to_vec())
        })
        .collect()
}

#[test]
fn stats_inspect_delete_verify_compact() {
    let cfg = small_config();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    {
        let store = Arc::new(Store::create(&db, cfg.clone()).unwrap());
        let index = ExpertIndex::open_with(store.clone(), IndexParams::flat()).unwrap();
        index
            .insert_batch((0..1000).map(|s| expert(&cfg, s)).collect())
            .unwrap();
        // Hollow out the first three shards (160 records each).
        let victims: Vec<u64> = (1..=480).filter(|id| id % 4 != 0).collect();
        index.delete_batch(&victims).unwrap();
        store
            .add_usage(&[(8, 40), (12, 7), (16, 7), (20, 1)])
            .unwrap();
    }
    let db = s(&db);

    // stats
    let st = ok(&["stats", "--db", db, "--json"]).json();
    assert_eq!(st["live"], 640);
    assert_eq!(st["deleted"], 360);
    assert_eq!(st["orphan_bytes"], 0);
    assert_eq!(st["config"]["rank"], 2);
    assert_eq!(st["index"]["present"], true);
    assert_eq!(st["index"]["keys"], 640);
    assert_eq!(st["index"]["seq"], st["seq"]);
    assert_eq!(st["usage"]["most_used"][0]["id"], 8);
    assert_eq!(st["usage"]["most_used"][0]["count"], 40);
    assert_eq!(st["usage"]["experts_never_used"], 636);
    assert_eq!(st["usage"]["least_used"][0]["count"], 0);
    let shards = st["shards"].as_array().unwrap();
    assert!(shards.len() >= 7);
    assert!(shards[0]["live_fraction"].as_f64().unwrap() < 0.3);
    let text = ok(&["stats", "--db", db]).stdout;
    for want in [
        "640 live",
        "360 deleted",
        "index: Flat, 640 keys",
        "most used:  8 (40)",
    ] {
        assert!(text.contains(want), "stats lacks {want:?}:\n{text}");
    }

    // inspect an expert
    let e = ok(&["inspect", "--db", db, "--expert", "8", "--json"]).json();
    assert_eq!(e["checksum"], "ok");
    assert_eq!(e["shard"], 1);
    assert_eq!(e["slot"], 7);
    assert_eq!(e["usage"], 40);
    assert_eq!(e["provenance"]["prompt"], "question 7?");
    assert_eq!(e["layers"].as_array().unwrap().len(), 2);
    assert!(e["key_norm"].as_f64().unwrap() > 0.0);
    let text = ok(&["inspect", "--db", db, "--expert", "8"]).stdout;
    assert!(
        text.contains("checksum: ok") && text.contains("answer: \"answer 7\""),
        "{text}"
    );
    let gone = fails(&["inspect", "--db", db, "--expert", "1"]);
    assert!(
        gone.stderr.contains("expert 1 was deleted"),
        "{}",
        gone.stderr
    );
    let unknown = fails(&["inspect", "--db", db, "--expert", "99999"]);
    assert!(
        unknown.stderr.contains("unknown expert id 99999"),
        "{}",
        unknown.stderr
    );

    // inspect a shard
    let sh = ok(&["inspect", "--db", db, "--shard", "1", "--json"]).json();
    let rows = sh["records"].as_array().unwrap();
    assert_eq!(rows.len(), 160);
    assert_eq!(rows[0]["state"], "deleted");
    assert_eq!(rows[3]["state"], "live");
    assert_eq!(rows[3]["expert"], 4);
    assert_eq!(sh["problems"], 0);
    let missing = fails(&["inspect", "--db", db, "--shard", "999"]);
    assert!(
        missing.stderr.contains("unknown shard 999"),
        "{}",
        missing.stderr
    );

    // delete
    let d = ok(&[
        "delete", "--db", db, "--expert", "600", "--expert", "601", "--json",
    ])
    .json();
    assert_eq!(d["deleted"], serde_json::json!([600, 601]));
    let bad = fails(&["delete", "--db", db, "--expert", "602", "--expert", "600"]);
    assert!(
        bad.stderr.contains("unknown expert id 600"),
        "{}",
        bad.stderr
    );
    assert!(ok(&["inspect", "--db", db, "--expert", "602"])
        .stdout
        .contains("checksum: ok"));
    let st = ok(&["stats", "--db", db, "--json"]).json();
    assert_eq!(
        (st["live"].as_u64(), st["deleted"].as_u64()),
        (Some(638), Some(362))
    );
    assert_eq!(st["index"]["keys"], 638);

    // verify (store, index); --recall would replay the stored facts through the model,
    // which this synthetic shape (d_model 16) does not fit: a clear error, not a pass
    // (tools/tests/cli_recall.rs replays real facts).
    let v = ok(&["verify", "--db", db, "--json"]).json();
    assert_eq!(v["records_checked"], 1000);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    assert_eq!(v["index"]["keys_after_replay"], 638);
    assert_eq!(v["recall"]["checked"], false);
    let text = ok(&["verify", "--db", db]).stdout;
    assert!(text.contains("verified 1000 records: 0 problems"), "{text}");
    let r = fails(&["verify", "--db", db, "--recall"]);
    assert!(r.stderr.contains("model"), "{}", r.stderr);

    // compact: dry run changes nothing, the real run reclaims the hollow shards
    let before = records(std::path::Path::new(db));
    let plan = ok(&["compact", "--db", db, "--dry-run", "--json"]).json();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["plan"]["shards"], serde_json::json!([1, 2, 3]));
    assert_eq!(plan["plan"]["live_records"], 120);
    assert_eq!(
        ok(&["stats", "--db", db, "--json"]).json()["shard_count"],
        st["shard_count"]
    );
    let text = ok(&["compact", "--db", db, "--dry-run"]).stdout;
    assert!(
        text.contains("dry run") && text.contains("[1, 2, 3]"),
        "{text}"
    );
    let run = ok(&["compact", "--db", db, "--json"]).json();
    assert_eq!(run["records_copied"], 120);
    assert_eq!(run["tombstones_purged"], 360);
    assert_eq!(run["new_shards"].as_array().unwrap().len(), 1);
    assert_eq!(records(std::path::Path::new(db)), before);
    let st = ok(&["stats", "--db", db, "--json"]).json();
    assert_eq!(
        (st["live"].as_u64(), st["deleted"].as_u64()),
        (Some(638), Some(2))
    );
    let first_shard = st["shards"].as_array().unwrap()[0]["id"].as_u64().unwrap();
    assert!(first_shard > 3, "shards 1..=3 should be gone");
    assert!(ok(&["compact", "--db", db])
        .stdout
        .contains("nothing to compact"));
    let v = ok(&["verify", "--db", db, "--json"]).json();
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    let e = ok(&["inspect", "--db", db, "--expert", "8", "--json"]).json();
    assert_eq!(e["checksum"], "ok");
    assert_eq!(e["usage"], 40);
    assert_eq!(e["seq"], 1, "compaction keeps the insertion sequence");

    // a bad policy is refused
    let bad = fails(&["compact", "--db", db, "--min-live-fraction", "2"]);
    assert!(bad.stderr.contains("min_live_fraction"), "{}", bad.stderr);
}
