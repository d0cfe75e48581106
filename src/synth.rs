//! Synthetic data for benchmarks and tests: clustered keys shaped like real ones.
//!
//! Real keys (pooled hidden states) are anisotropic with a low intrinsic dimension.
//! Isotropic Gaussian blobs in 576 dimensions are not like them: every point of a blob
//! is almost equidistant from a query, so the "true" top-10 is decided by noise in the
//! third decimal and recall measures nothing (docs/BENCHMARKS.md shows both). Here each
//! cluster is a random centre plus variation along its own random low-dimensional
//! subspace and a little isotropic noise.

use half::f16;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::store::{AdapterPair, NewExpert, Provenance, StoreConfig};

/// Rows generated from one seeded stream; chunks run in parallel, and the output depends
/// only on the arguments, not on the number of threads.
const CHUNK_ROWS: usize = 4096;

/// `n` keys of dimension `dim` drawn from `clusters` clusters (16-dimensional cluster
/// subspaces), as f32, row-major. Keys drawn with another `seed` come from the same
/// clusters, so they serve as queries.
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
    let clusters = clusters.max(1);
    // Centres and bases depend only on the cluster layout.
    let mut layout =
        rand::rngs::StdRng::seed_from_u64(0x5EED ^ (clusters as u64) ^ ((dim as u64) << 20));
    let centres: Vec<f32> = (0..clusters * dim).map(|_| gauss(&mut layout)).collect();
    let bases: Vec<f32> = (0..clusters * dim * sub)
        .map(|_| 0.125 * gauss(&mut layout))
        .collect();
    let noise = if sub == 0 { 0.35 } else { 0.05 };
    let mut out = vec![0f32; n * dim];
    if dim == 0 {
        return out;
    }
    out.par_chunks_mut(CHUNK_ROWS * dim)
        .enumerate()
        .for_each(|(chunk, rows)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ chunk as u64,
            );
            let mut z = vec![0f32; sub];
            for row in rows.chunks_exact_mut(dim) {
                let c = rng.random_range(0..clusters);
                z.iter_mut().for_each(|v| *v = gauss(&mut rng));
                let centre = &centres[c * dim..(c + 1) * dim];
                let basis = &bases[c * dim * sub..(c + 1) * dim * sub];
                for (d, x) in row.iter_mut().enumerate() {
                    let mut v = centre[d] + noise * gauss(&mut rng);
                    for (j, zj) in z.iter().enumerate() {
                        v += basis[d * sub + j] * zj;
                    }
                    *x = v;
                }
            }
        });
    out
}

/// Twenty everyday prompts that no memorized fact is about: the locality probe of the
/// memorization test and benchmark (an engine must answer them exactly as the bare
/// backbone does).
pub const LOCALITY_PROMPTS: [&str; 20] = [
    "What is the capital of France?",
    "Write one word about the sea.",
    "How many legs does a spider have?",
    "What is 2 + 2?",
    "Name a colour of the sky.",
    "Who wrote Hamlet?",
    "What is the boiling point of water?",
    "Translate 'cat' into French.",
    "Give me a synonym for happy.",
    "What is the largest planet in the solar system?",
    "How do I make a cup of tea?",
    "What does a bee make?",
    "Say hello in Spanish.",
    "What is the opposite of cold?",
    "Which animal is known as the king of the jungle?",
    "What is the square root of 81?",
    "Name a fruit that is yellow.",
    "What language is spoken in Brazil?",
    "How many days are in a week?",
    "What is photosynthesis?",
];

/// A random pronounceable capitalised name of 2–3 syllables plus a consonant
/// ("Zoninid"): subjects of random facts nothing could know.
pub fn random_name(rng: &mut impl Rng) -> String {
    const C: &[u8] = b"bcdfghklmnprstvz";
    const V: &[u8] = b"aeiou";
    let mut s = String::new();
    for i in 0..rng.random_range(2..4) {
        let c = C[rng.random_range(0..C.len())] as char;
        s.push(if i == 0 { c.to_ascii_uppercase() } else { c });
        s.push(V[rng.random_range(0..V.len())] as char);
    }
    s.push(C[rng.random_range(0..C.len())] as char);
    s
}

fn gauss(r: &mut impl Rng) -> f32 {
    let u1: f32 = r.random_range(f32::EPSILON..1.0);
    let u2: f32 = r.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Deterministic pseudo-random values (splitmix64) mapped to finite fp16 in [-1, 1).
pub fn seeded_values(seed: u64, n: usize) -> Vec<f16> {
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

/// An expert of shape `cfg` that depends only on `seed`; the seed is kept in the
/// provenance text (`seed=N`) so that tests can check any expert found in a store
/// against what was written.
pub fn seeded_expert(cfg: &StoreConfig, seed: u64) -> NewExpert {
    let mat = (cfg.rank * cfg.d_model) as usize;
    NewExpert {
        key: seeded_values(seed, cfg.key_dim as usize),
        layers: (0..cfg.layers.len() as u64)
            .map(|l| AdapterPair {
                a: seeded_values(seed ^ (l << 48) ^ 0xA, mat),
                b: seeded_values(seed ^ (l << 48) ^ 0xB, mat),
            })
            .collect(),
        provenance: Provenance::text(format!("seed={seed}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_shaped() {
        let a = clustered_keys(5000, 8, 10, 1);
        let b = clustered_keys(5000, 8, 10, 1);
        assert_eq!(a, b);
        assert_eq!(a.len(), 5000 * 8);
        assert_ne!(a, clustered_keys(5000, 8, 10, 2));
        assert!(a.iter().all(|x| x.is_finite()));
        assert!(clustered_keys(0, 8, 10, 1).is_empty());
    }

    #[test]
    fn queries_share_the_clusters() {
        // A query from another seed lies much closer to its nearest key than the typical
        // distance between keys of different clusters.
        let dim = 32;
        let keys = clustered_keys(2000, dim, 4, 1);
        let q = &clustered_keys(1, dim, 4, 9)[..dim];
        let d2 = |k: &[f32]| k.iter().zip(q).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
        let mut ds: Vec<f32> = keys.chunks_exact(dim).map(d2).collect();
        ds.sort_by(f32::total_cmp);
        assert!(
            ds[0] * 4.0 < ds[ds.len() / 2],
            "{} vs {}",
            ds[0],
            ds[ds.len() / 2]
        );
    }
}
