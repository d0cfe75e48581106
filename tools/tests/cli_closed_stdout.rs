//! `mome ask` into a pipe whose reader has gone (`mome ask ... | head -c 0`): the
//! command ends quietly with status 0 — no panic, no "Broken pipe" — for the streamed
//! text and for `--json`. Skipped when the model is absent (never in CI).

mod common;

use std::process::{Command, Stdio};

use common::s;
use mome::Engine;

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
        let mut child = Command::new(env!("CARGO_BIN_EXE_mome"))
            .args(&args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mome");
        // The reader goes before the model has even loaded: every write gets EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for mome");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "mome {args:?} into a closed pipe: {:?}\nstderr: {stderr}",
            out.status
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "mome {args:?}: {stderr}"
        );
    }
}
