//! Helpers shared by the store's integration tests: deterministic experts from a seed.
#![allow(dead_code)]

use half::f16;
use mome::store::{AdapterPair, ExpertRef, NewExpert, Provenance, StoreConfig};

/// A small shape with tiny shards so that tests cross many roll-overs quickly.
pub fn small_config() -> StoreConfig {
    StoreConfig::new(16, 8, 2, vec![1, 3]).with_shard_size(64 * 1024)
}

/// Deterministic pseudo-random values (splitmix64) mapped to finite fp16 in [-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f16> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            f16::from_f32((z >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// The expert a test writes for `seed`; the seed is also kept in the provenance text so
/// that any expert found in a store can be checked against what was written.
pub fn expert(cfg: &StoreConfig, seed: u64) -> NewExpert {
    let mat = (cfg.rank * cfg.d_model) as usize;
    NewExpert {
        key: values(seed, cfg.key_dim as usize),
        layers: (0..cfg.layers.len() as u64)
            .map(|l| AdapterPair {
                a: values(seed ^ (l << 48) ^ 0xA, mat),
                b: values(seed ^ (l << 48) ^ 0xB, mat),
            })
            .collect(),
        provenance: Provenance::text(format!("seed={seed}")),
    }
}

/// Panics unless the stored expert is byte-identical to `expert(cfg, seed)`.
pub fn assert_expert(cfg: &StoreConfig, got: &ExpertRef, seed: u64) {
    let want = expert(cfg, seed);
    assert_eq!(got.key(), &want.key[..], "key of expert {}", got.id());
    for (l, p) in want.layers.iter().enumerate() {
        assert_eq!(got.a(l), &p.a[..], "A{l} of expert {}", got.id());
        assert_eq!(got.b(l), &p.b[..], "B{l} of expert {}", got.id());
    }
}

/// Reads back the seed recorded in an expert's provenance.
pub fn seed_of(text: &str) -> Option<u64> {
    text.strip_prefix("seed=")?.parse().ok()
}
