//! Exact re-ranking of a graph's candidates: the graph may traverse on compressed codes
//! (i8), and the survivors are scored again by exact cosine against their fp16 keys,
//! which the store already holds in its shards. Pure: the caller resolves the keys
//! (through the store's read path, so every key read is checksum-verified).

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::flat::dot;
use super::Hit;

/// Keys are converted from f16 in blocks of this many elements, on the stack.
const BLOCK: usize = 64;

/// Dot product of `q` with `key` and the squared norm of `key`, in f32.
fn dot_f16(q: &[f32], key: &[f16]) -> (f32, f32) {
    let mut buf = [0f32; BLOCK];
    let (mut qk, mut kk) = (0f32, 0f32);
    for (qc, kc) in q.chunks(BLOCK).zip(key.chunks(BLOCK)) {
        let b = &mut buf[..kc.len()];
        // Vectorised conversion (F16C where the CPU has it).
        kc.convert_to_f32_slice(b);
        qk += dot(&qc[..b.len()], b);
        kk += dot(b, b);
    }
    (qk, kk)
}

/// The `k` of `candidates` (id, fp16 key) most similar to `query` by exact cosine, best
/// first; ties by ascending id, as [`FlatIndex`](super::FlatIndex) orders them. A zero
/// key or query scores 0. Keys of another length than the query are scored on their
/// common prefix (the store guarantees `key_dim`; this only keeps the function total).
pub(crate) fn rerank<'a>(
    query: &[f32],
    candidates: impl IntoIterator<Item = (u64, &'a [f16])>,
    k: usize,
) -> Vec<Hit> {
    let qq = dot(query, query);
    let mut hits: Vec<Hit> = candidates
        .into_iter()
        .map(|(id, key)| {
            let (qk, kk) = dot_f16(query, key);
            let norms = (qq * kk).sqrt();
            let score = if norms > 0.0 { qk / norms } else { 0.0 };
            Hit { id, score }
        })
        .collect();
    let by_score = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id));
    if k == 0 {
        return Vec::new();
    }
    if k < hits.len() {
        hits.select_nth_unstable_by(k - 1, by_score);
        hits.truncate(k);
    }
    hits.sort_by(by_score);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Re-ranking equals the exact cosine order (computed independently in f64) on the
    /// candidates it is given, whatever order they arrive in, and its scores are the
    /// exact cosines.
    #[test]
    fn rerank_is_exact_cosine_order_of_the_candidates() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (dim, n, k) in [(576usize, 300usize, 10usize), (37, 50, 50), (8, 5, 10)] {
            let query: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            let keys: Vec<(u64, Vec<f16>)> = (0..n)
                .map(|i| {
                    // Ids out of order; keys near the query so that scores crowd together.
                    let id = (i as u64 * 7919) % 100_003 + 1;
                    let key = query
                        .iter()
                        .map(|&x| f16::from_f32(x + 0.4 * (rng.random::<f32>() - 0.5)))
                        .collect();
                    (id, key)
                })
                .collect();
            let got = rerank(&query, keys.iter().map(|(id, k)| (*id, &k[..])), k);

            let exact = |key: &[f16]| {
                let (mut qk, mut qq, mut kk) = (0f64, 0f64, 0f64);
                for (&q, &x) in query.iter().zip(key) {
                    let (q, x) = (f64::from(q), f64::from(x.to_f32()));
                    qk += q * x;
                    qq += q * q;
                    kk += x * x;
                }
                qk / (qq * kk).sqrt()
            };
            let mut want: Vec<(u64, f64)> = keys.iter().map(|(id, k)| (*id, exact(k))).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(k);

            assert_eq!(got.len(), k.min(n), "dim {dim}");
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (f64::from(g.score) - w.1).abs() < 1e-5,
                    "dim {dim}: score {} of {} vs exact {} of {}",
                    g.score,
                    g.id,
                    w.1,
                    w.0
                );
                // The same id unless two exact scores are closer than f32 can tell.
                if g.id != w.0 {
                    let gs = exact(&keys.iter().find(|(id, _)| *id == g.id).unwrap().1);
                    assert!(
                        (gs - w.1).abs() < 1e-6,
                        "dim {dim}: {} in place of {}",
                        g.id,
                        w.0
                    );
                }
            }
            assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }

    #[test]
    fn zero_vectors_and_k_zero() {
        let z = [f16::ZERO; 4];
        let one = [f16::ONE; 4];
        let hits = rerank(&[1.0, 0.0, 0.0, 0.0], [(2, &z[..]), (1, &one[..])], 5);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(hits[1].score, 0.0);
        assert!((hits[0].score - 0.5).abs() < 1e-6);
        assert!(rerank(&[0.0; 4], [(1, &one[..])], 1)[0].score == 0.0);
        assert!(rerank(&[1.0; 4], [(1, &one[..])], 0).is_empty());
    }
}
