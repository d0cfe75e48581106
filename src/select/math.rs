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

/// Normalises each `key_dim`-long row of `keys` into `out` (same length).
///
/// A zero row stays zero, so its cosine with anything is 0 rather than NaN.
/// A non-finite element is an error naming the candidate.
#[inline(always)]
pub(crate) fn normalize_rows_into<const FMA: bool>(
    keys: &[f32],
    key_dim: usize,
    out: &mut [f32],
) -> Result<(), SelectError> {
    if key_dim == 0 {
        return Ok(());
    }
    for (j, (src, dst)) in keys
        .chunks_exact(key_dim)
        .zip(out.chunks_exact_mut(key_dim))
        .enumerate()
    {
        let norm = checked_norm::<FMA>(src).ok_or(SelectError::NonFiniteKey { candidate: j })?;
        if norm > 0.0 {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s / norm;
            }
        } else {
            dst.fill(0.0);
        }
    }
    Ok(())
}

/// Selects the experts for one token.
///
/// `q` is the token's raw query (`key_dim`), `keys_n` the *normalised* candidate keys
/// (`K × key_dim`), `scores` scratch of length ≥ K. Writes the selected experts, best
/// first, into the front of `out` (length ≥ `min(top_k, K)`) and returns how many.
///
/// The parameters must already have been validated for this K
/// ([`SelectionParams::validate`]); `token` only names the row in errors.
#[inline(always)]
pub(crate) fn select_token<const FMA: bool>(
    q: &[f32],
    keys_n: &[f32],
    key_dim: usize,
    params: &SelectionParams,
    token: usize,
    scores: &mut [f32],
    out: &mut [Selected],
) -> Result<usize, SelectError> {
    let k_cap = params.top_k.min(out.len());
    let norm = checked_norm::<FMA>(q).ok_or(SelectError::NonFiniteQuery { token })?;
    let candidates = keys_n
        .len()
        .checked_div(key_dim)
        .unwrap_or(scores.len())
        .min(scores.len());
    let scores = &mut scores[..candidates];
    if norm > 0.0 && key_dim > 0 {
        // Dividing the K dots by |q| is cheaper than normalising q first; the two
        // differ by an ulp or so, far inside the parity tolerance.
        for (s, key) in scores.iter_mut().zip(keys_n.chunks_exact(key_dim)) {
            *s = dot::<FMA>(q, key) / norm;
        }
    } else {
        scores.fill(0.0);
    }
    if let Some(p) = params.penalty.as_deref() {
        for (s, p) in scores.iter_mut().zip(p) {
            *s -= p;
        }
    }
    let n = top_k_into(scores, params.tau, k_cap, out);
    softmax_selected(&mut out[..n], params.temperature);
    Ok(n)
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
