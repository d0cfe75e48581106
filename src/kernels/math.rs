//! Numeric building blocks of the CPU kernel: fused multiply-add and dot products.
//!
//! Plain safe Rust written so that LLVM can vectorise it. The helpers are
//! `#[inline(always)]` on purpose: the fused CPU kernel calls them from functions
//! compiled with AVX2/FMA enabled, and only inlined code picks up those target
//! features.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
