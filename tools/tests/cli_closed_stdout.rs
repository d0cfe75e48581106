//! The tool into a pipe whose reader has gone (`mome stats ... | head -c 0`): the
//! command ends quietly with the status its work earned — no panic, no "Broken pipe".
//! The admin reports (text and `--json`) on a small store always run; `mome ask`'s
//! streamed text and `--json` are skipped when the model is absent (never in CI).

mod common;

use std::process::{Command, Stdio};

use common::{expert, s, small_config};
use mome::{Engine, Store};

/// Runs `mome args` with its stdout closed before it writes anything; returns the
/// status and stderr.
fn into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mome"))
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mome");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for mome");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_reports_into_a_closed_pipe_end_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    let cfg = small_config();
    let store = Store::create(&db, cfg.clone()).unwrap();
    store
        .insert_batch((0..20).map(|i| expert(&cfg, i)).collect())
        .unwrap();
    drop(store);
    for cmd in ["stats", "verify", "inspect"] {
        for json in [false, true] {
            let mut args = vec![cmd, "--db", s(&db)];
            if cmd == "inspect" {
                args.extend(["--shard", "1"]);
            }
            if json {
                args.push("--json");
            }
            let read = common::mome(&args);
            assert!(!read.stdout.is_empty(), "mome {args:?} printed nothing");
            let (status, stderr) = into_closed_pipe(&args);
            assert_eq!(
                status.code(),
                Some(read.code),
                "mome {args:?} into a closed pipe: {status:?}\nstderr: {stderr}"
            );
            assert!(
                !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
                "mome {args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn ask_into_a_closed_pipe_ends_quietly() {
    if common::real_model_path().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("store");
    drop(Engine::open_or_create(&db, None).unwrap());
    for json in [false, true] {
        let mut args = vec!["ask", "--db", s(&db), "--max-tokens", "4"];
        if json {
            args.push("--json");
        }
        args.push("What is the capital of France?");
        // The reader goes before the model has even loaded: every write gets EPIPE.
        let (status, stderr) = into_closed_pipe(&args);
        assert!(
            status.success(),
            "mome {args:?} into a closed pipe: {status:?}\nstderr: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "mome {args:?}: {stderr}"
        );
    }
}
