//! Helpers for the CLI tests: run the built `mome` binary, build stores to run it on.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use half::f16;
use mome::store::{AdapterPair, NewExpert, Provenance, StoreConfig};

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

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A small shape with tiny shards so that tests cross many roll-overs quickly.
pub fn small_config() -> StoreConfig {
    StoreConfig::new(16, 8, 2, vec![1, 3]).with_shard_size(64 * 1024)
}

/// Deterministic pseudo-random values (splitmix64) mapped to finite fp16 in [-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f16> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            f16::from_f32((z >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// The expert a test writes for `seed`, with a fact as provenance.
pub fn expert(cfg: &StoreConfig, seed: u64) -> NewExpert {
    let mat = (cfg.rank * cfg.d_model) as usize;
    let mut provenance = Provenance::fact(format!("question {seed}?"), format!("answer {seed}"));
    provenance.text = format!("seed={seed}");
    NewExpert {
        key: values(seed, cfg.key_dim as usize),
        layers: (0..cfg.layers.len() as u64)
            .map(|l| AdapterPair {
                a: values(seed ^ (l << 48) ^ 0xA, mat),
                b: values(seed ^ (l << 48) ^ 0xB, mat),
            })
            .collect(),
        provenance,
    }
}
