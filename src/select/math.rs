//! Numeric building blocks of stage-2 selection: norms, cosine scores, top-k, softmax.
//!
//! Everything here is plain safe Rust written so that LLVM can vectorise it. The
//! helpers are `#[inline(always)]` on purpose: the fused CPU kernel calls them from
//! functions compiled with AVX2/FMA enabled, and only inlined code picks up those
//! target features.

use super::{SelectError, Selected, SelectionParams};

/// Width of the independent accumulator array in [`dot`]. Four AVX2 registers'
/// worth keeps enough FMAs in flight to hide their latency.
const LANES: usize = 32;

/// `a * b + c`, fused when the caller was compiled with FMA (`FMA = true`).
///
/// Without hardware FMA `mul_add` becomes a libm call, so the unfused form is the
/// only sensible one for the baseline build.
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product of two equally long slices (extra elements of the longer one are ignored).
///
/// Uses `LANES` independent partial sums so the compiler may vectorise; float addition
/// is not associative, so it would not reorder a single running sum by itself.
#[inline(always)]
pub(crate) fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for i in 0..LANES {
            acc[i] = madd::<FMA>(xa[i], xb[i], acc[i]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = madd::<FMA>(*x, *y, tail);
    }
    // Pairwise reduction keeps the rounding error at O(log LANES) instead of O(LANES).
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// Euclidean norm of `x`, or `None` when `x` holds a NaN or an infinity.
///
/// The fast path squares in f32; if that overflows although every element is finite
/// (|x| ≳ 1.8e19), the vector is rescaled by its largest magnitude first.
#[inline(always)]
pub(crate) fn checked_norm<const FMA: bool>(x: &[f32]) -> Option<f32> {
    let sq = dot::<FMA>(x, x);
    if sq.is_finite() {
        return Some(sq.sqrt());
    }
    if x.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let inv = 1.0 / scale;
    let s: f32 = x.iter().map(|v| (v * inv) * (v * inv)).sum();
    Some(s.sqrt() * scale)
}

/// `(a·b, b·b)` in one pass over `b` (extra elements of the longer slice ignored).
#[inline(always)]
pub(crate) fn dot_and_sq<const FMA: bool>(a: &[f32], b: &[f32]) -> (f32, f32) {
    const L: usize = LANES / 2;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut ab = [0.0f32; L];
    let mut bb = [0.0f32; L];
    let mut ca = a.chunks_exact(L);
    let mut cb = b.chunks_exact(L);
    for (xa, xb) in (&mut ca).zip(&mut cb) {
        for i in 0..L {
            ab[i] = madd::<FMA>(xa[i], xb[i], ab[i]);
            bb[i] = madd::<FMA>(xb[i], xb[i], bb[i]);
        }
    }
    let (mut tab, mut tbb) = (0.0f32, 0.0f32);
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tab = madd::<FMA>(*x, *y, tab);
        tbb = madd::<FMA>(*y, *y, tbb);
    }
    let mut width = L / 2;
    while width > 0 {
        for i in 0..width {
            ab[i] += ab[i + width];
            bb[i] += bb[i + width];
        }
        width /= 2;
    }
    (ab[0] + tab, bb[0] + tbb)
}

/// `1/|x|` (0 for a zero vector, so cosines with it are 0, not NaN), or `None` when
/// `x` holds a NaN or an infinity. `sq` is `x·x` if already known.
#[inline(always)]
pub(crate) fn inv_norm<const FMA: bool>(x: &[f32], sq: Option<f32>) -> Option<f32> {
    let norm = match sq {
        Some(sq) if sq.is_finite() => sq.sqrt(),
        _ => checked_norm::<FMA>(x)?,
    };
    Some(if norm > 0.0 { 1.0 / norm } else { 0.0 })
}

/// Cosine of `q` (with inverse norm `q_inv`) and `k` (with `k_inv`) from their raw
/// dot product; recomputed on normalised copies in the (huge-vector) case where the
/// raw dot overflowed.
#[inline(always)]
pub(crate) fn cosine(q: &[f32], q_inv: f32, k: &[f32], k_inv: f32, raw_dot: f32) -> f32 {
    let c = raw_dot * q_inv * k_inv;
    if c.is_finite() {
        return c;
    }
    q.iter()
        .zip(k)
        .map(|(a, b)| (a * q_inv) * (b * k_inv))
        .sum()
}

/// Cosine scores of `n` query rows against K raw keys, both row-major with rows of
/// `key_dim`: `scores[u·K + j] = cos(q_u, key_j)`.
///
/// `q_inv` holds the queries' inverse norms ([`inv_norm`]). A non-finite key is an
/// error.
#[inline(always)]
pub(crate) fn cosine_block<const FMA: bool>(
    queries: &[f32],
    q_inv: &[f32],
    keys: &[f32],
    key_dim: usize,
    scores: &mut [f32],
) -> Result<(), SelectError> {
    if key_dim == 0 {
        return Err(SelectError::ZeroKeyDim);
    }
    let candidates = keys.len() / key_dim;
    for (j, key) in keys.chunks_exact(key_dim).enumerate() {
        cosine_column::<FMA>(queries, q_inv, key, j, candidates, scores)?;
    }
    Ok(())
}

/// Column `j` of [`cosine_block`]: the cosines of every query with one key
/// (`key_dim = key.len()`), written to `scores[u·candidates + j]`.
///
/// The key's norm is computed in the same pass as the first query's dot product,
/// so a key row is read from memory once per call and never copied.
#[inline(always)]
pub(crate) fn cosine_column<const FMA: bool>(
    queries: &[f32],
    q_inv: &[f32],
    key: &[f32],
    j: usize,
    candidates: usize,
    scores: &mut [f32],
) -> Result<(), SelectError> {
    let kd = key.len();
    if kd == 0 {
        return Err(SelectError::ZeroKeyDim);
    }
    let mut k_inv = None;
    for (u, (qu, &qi)) in queries.chunks_exact(kd).zip(q_inv).enumerate() {
        let (d, ki) = match k_inv {
            Some(ki) => (dot::<FMA>(qu, key), ki),
            None => {
                let (d, kk) = dot_and_sq::<FMA>(qu, key);
                let ki = inv_norm::<FMA>(key, Some(kk))
                    .ok_or(SelectError::NonFiniteKey { candidate: j })?;
                k_inv = Some(ki);
                (d, ki)
            }
        };
        if let Some(s) = scores.get_mut(u * candidates + j) {
            *s = cosine(qu, qi, key, ki, d);
        }
    }
    Ok(())
}

/// Turns one token's cosine scores (length K) into its selection: subtracts the
/// penalty (in place), keeps the top-k strictly above τ, best first, and writes
/// their softmax weights. Returns how many were written to the front of `out`.
///
/// The parameters must already have been validated for this K
/// ([`SelectionParams::validate`]).
#[inline(always)]
pub(crate) fn finish_token(
    scores: &mut [f32],
    params: &SelectionParams,
    out: &mut [Selected],
) -> usize {
    if let Some(p) = params.penalty.as_deref() {
        for (s, p) in scores.iter_mut().zip(p) {
            *s -= p;
        }
    }
    let n = top_k_into(scores, params.tau, params.top_k.min(out.len()), out);
    softmax_selected(&mut out[..n], params.temperature);
    n
}

/// Top-`k` of the scores strictly above `tau`, best first, ties to the lower index.
///
/// Insertion into a tiny sorted list: k is at most a few dozen, and this touches the
/// scores once without allocating.
#[inline(always)]
pub(crate) fn top_k_into(scores: &[f32], tau: f32, k: usize, out: &mut [Selected]) -> usize {
    let k = k.min(out.len());
    if k == 0 {
        return 0;
    }
    let mut n = 0usize;
    for (j, &s) in scores.iter().enumerate() {
        // NaN cannot occur after validation; dropping it keeps the order total.
        if s.is_nan() || s <= tau {
            continue;
        }
        if n == k && s <= out[n - 1].score {
            continue;
        }
        // Later candidates go after earlier ones with an equal score.
        let mut pos = if n < k { n } else { k - 1 };
        while pos > 0 && out[pos - 1].score < s {
            if pos < k {
                out[pos] = out[pos - 1];
            }
            pos -= 1;
        }
        out[pos] = Selected {
            candidate: j as u32,
            score: s,
            weight: 0.0,
        };
        if n < k {
            n += 1;
        }
    }
    n
}

/// Softmax of `score / temperature` over `sel` (best first), written into `weight`.
///
/// Computed as `exp((s - s_max) / T)`: the shift comes before the division so that a
/// tiny temperature gives a one-hot result instead of `inf - inf = NaN`.
#[inline(always)]
pub(crate) fn softmax_selected(sel: &mut [Selected], temperature: f32) {
    let Some(first) = sel.first() else {
        return;
    };
    let max = first.score;
    let mut sum = 0.0f32;
    for s in sel.iter_mut() {
        s.weight = ((s.score - max) / temperature).exp();
        sum += s.weight;
    }
    // sum ≥ 1 because the best entry contributes exp(0).
    for s in sel.iter_mut() {
        s.weight /= sum;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sel(scores: &[f32], tau: f32, k: usize) -> Vec<(u32, f32)> {
        let mut out = vec![Selected::default(); k];
        let n = top_k_into(scores, tau, k, &mut out);
        out[..n].iter().map(|s| (s.candidate, s.score)).collect()
    }

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        for n in [0usize, 1, 7, 31, 32, 33, 577] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot::<false>(&a, &b) as f64 - naive).abs() < 1e-4, "n={n}");
            assert!((dot::<true>(&a, &b) as f64 - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn norm_handles_zero_overflow_and_nan() {
        assert_eq!(checked_norm::<false>(&[0.0, 0.0]), Some(0.0));
        let big = checked_norm::<false>(&[3e30, 4e30]).unwrap();
        assert!((big / 5e30 - 1.0).abs() < 1e-6);
        assert_eq!(checked_norm::<false>(&[1.0, f32::NAN]), None);
        assert_eq!(checked_norm::<false>(&[f32::INFINITY, 1.0]), None);
    }

    #[test]
    fn top_k_threshold_is_strict_and_ties_go_to_lower_index() {
        assert_eq!(
            sel(&[0.5, 0.2, 0.5, 0.9], 0.2, 3),
            vec![(3, 0.9), (0, 0.5), (2, 0.5)]
        );
        assert_eq!(sel(&[0.5, 0.5, 0.5], 0.0, 2), vec![(0, 0.5), (1, 0.5)]);
        assert_eq!(sel(&[0.1, 0.1], 0.1, 4), vec![]);
        assert_eq!(sel(&[0.3, 0.2], 0.0, 8), vec![(0, 0.3), (1, 0.2)]);
        assert_eq!(
            sel(&[0.1, 0.2, 0.3, 0.4], -1.0, 2),
            vec![(3, 0.4), (2, 0.3)]
        );
    }

    #[test]
    fn softmax_is_normalised_and_survives_tiny_temperature() {
        let mut s = vec![
            Selected {
                candidate: 0,
                score: 0.9,
                weight: 0.0,
            },
            Selected {
                candidate: 1,
                score: 0.5,
                weight: 0.0,
            },
        ];
        softmax_selected(&mut s, 1.0);
        assert!((s[0].weight + s[1].weight - 1.0).abs() < 1e-6);
        assert!(s[0].weight > s[1].weight);
        softmax_selected(&mut s, f32::MIN_POSITIVE);
        assert_eq!((s[0].weight, s[1].weight), (1.0, 0.0));
    }
}
