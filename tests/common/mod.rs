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

/// `n` keys of dimension `dim` drawn from `clusters` clusters, as f32, row-major.
///
/// Each cluster is a random centre plus variation along its own random 16-dimensional
/// subspace and a little isotropic noise. Real keys (pooled hidden states) are
/// anisotropic with a low intrinsic dimension; isotropic Gaussian blobs in 576
/// dimensions are not like them: every point of a blob is almost equidistant from a
/// query, so the "true" top-10 is decided by noise in the third decimal and recall
/// measures nothing (docs/BENCHMARKS.md shows both).
pub fn clustered_keys(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    clustered_keys_with(n, dim, clusters, 16, seed)
}

/// As [`clustered_keys`] with the subspace dimension given; `sub = 0` gives isotropic
/// Gaussian blobs.
pub fn clustered_keys_with(
    n: usize,
    dim: usize,
    clusters: usize,
    sub: usize,
    seed: u64,
) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    // Centres and bases depend only on the cluster layout, so queries drawn with another
    // seed come from the same clusters.
    let mut layout =
        rand::rngs::StdRng::seed_from_u64(0x5EED ^ (clusters as u64) ^ ((dim as u64) << 20));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    fn gauss(r: &mut rand::rngs::StdRng) -> f32 {
        let u1: f32 = r.random_range(f32::EPSILON..1.0);
        let u2: f32 = r.random_range(0.0..1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
    let centres: Vec<f32> = (0..clusters * dim).map(|_| gauss(&mut layout)).collect();
    let bases: Vec<f32> = (0..clusters * dim * sub)
        .map(|_| 0.125 * gauss(&mut layout))
        .collect();
    let noise = if sub == 0 { 0.35 } else { 0.05 };
    let mut out = Vec::with_capacity(n * dim);
    let mut z = vec![0f32; sub];
    for _ in 0..n {
        let c = rng.random_range(0..clusters);
        z.iter_mut().for_each(|v| *v = gauss(&mut rng));
        let centre = &centres[c * dim..(c + 1) * dim];
        let basis = &bases[c * dim * sub..(c + 1) * dim * sub];
        for d in 0..dim {
            let mut x = centre[d] + noise * gauss(&mut rng);
            for (j, zj) in z.iter().enumerate() {
                x += basis[d * sub + j] * zj;
            }
            out.push(x);
        }
    }
    out
}
