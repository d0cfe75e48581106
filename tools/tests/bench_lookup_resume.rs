//! `mome bench lookup --resume`: a build killed with SIGKILL after an index checkpoint
//! continues from the store it left (nothing ingested twice, the saved index loaded and
//! caught up), ends with a consistent store and index and the recall of an unbroken run;
//! a finished store resumes to nothing; a store made with other key settings is refused.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::s;

const EXPERTS: &str = "100000";

fn args<'a>(db: &'a str, clusters: &'a str) -> Vec<&'a str> {
    vec![
        "bench",
        "lookup",
        "--experts",
        EXPERTS,
        "--key-dim",
        "16",
        "--rank",
        "1",
        "--clusters",
        clusters,
        "--db",
        db,
        "--resume",
        "--save-every",
        "10000",
        "--ingest-batch",
        "500",
        "--no-raw",
        "--queries",
        "300",
        "--recall-sample",
        "100",
        "--candidates",
        "10",
        "--json",
    ]
}

#[test]
fn killed_build_resumes_to_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let db = s(&db);

    // Killed right after its first index checkpoint.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mome"))
        .args(args(db, "50"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mome");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("checkpoint:") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("no checkpoint within 300 s");
    child.kill().expect("SIGKILL");
    let status = child.wait().unwrap();
    assert!(!status.success(), "the build ended before the kill: {line}");

    // The second run continues where the first one's store ends.
    let out = common::ok(&args(db, "50")).json();
    let resumed = out["resumed_from"].as_u64().expect("resumed_from");
    assert!(
        (10_000..100_000).contains(&resumed),
        "resumed from {resumed} after `{line}`"
    );
    assert_eq!(out["experts"], 100_000);
    let recall = out["recall_at_10"].as_f64().unwrap();
    assert!(recall >= 0.9, "recall@10 {recall} after the resume");
    assert!(out["usearch_p50_us"].is_null(), "--no-raw ran raw usearch");

    // Store ⇄ index consistency, as an operator would check it.
    let v = common::ok(&["verify", "--db", db, "--json"]).json();
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["records_checked"], 100_000, "{v}");
    assert_eq!(v["index"]["keys_after_replay"], 100_000, "{v}");

    // Finished: a third run adds nothing and times the same store.
    let again = common::ok(&args(db, "50")).json();
    assert_eq!(again["resumed_from"], 100_000);
    assert_eq!(again["recall_at_10"], out["recall_at_10"]);

    // Other key settings would make the truth and the stored keys disagree.
    let refused = common::fails(&args(db, "51"));
    assert!(
        refused.stderr.contains("--clusters"),
        "stderr: {}",
        refused.stderr
    );
}
