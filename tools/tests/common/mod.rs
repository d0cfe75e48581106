//! Helpers for the CLI tests: run the built `mome` binary, build stores to run it on.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use mome::{NewExpert, Provenance, StoreConfig};

/// What a finished `mome` process left.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout parsed as the one JSON object `--json` prints.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs `mome ARGS` to completion.
pub fn mome(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_mome"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run mome");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `mome ARGS` and insists on exit status 0.
pub fn ok(args: &[&str]) -> Out {
    let out = mome(args);
    assert_eq!(
        out.code, 0,
        "mome {args:?} failed\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

/// Runs `mome ARGS` and insists on a failure status.
pub fn fails(args: &[&str]) -> Out {
    let out = mome(args);
    assert_ne!(
        out.code, 0,
        "mome {args:?} succeeded\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

/// The reference model's path; `None` (after saying why) when it is not installed,
/// which only a developer's machine may lack: under CI a missing model fails the test.
pub fn real_model_path() -> Option<std::path::PathBuf> {
    match mome::locate_model(None) {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI without the model: {e}"
            );
            eprintln!("skipping: {e}");
            None
        }
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A small shape with tiny shards so that tests cross many roll-overs quickly.
pub fn small_config() -> StoreConfig {
    StoreConfig::new(16, 8, 2, vec![1, 3]).with_shard_size(64 * 1024)
}

/// The expert a test writes for `seed` (`mome::synth::seeded_expert`), with a fact as
/// provenance.
pub fn expert(cfg: &StoreConfig, seed: u64) -> NewExpert {
    let mut e = mome::synth::seeded_expert(cfg, seed);
    let mut provenance = Provenance::fact(format!("question {seed}?"), format!("answer {seed}"));
    provenance.text = format!("seed={seed}");
    e.provenance = provenance;
    e
}
