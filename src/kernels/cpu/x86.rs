//! AVX2/FMA/F16C micro-kernels for the fp16 weight streams.
//!
//! All of these are safe functions compiled with the features enabled; callers must
//! have proven the features (an `Avx2Fma` token) before calling them from code
//! compiled without them. Loads go through `bytemuck` casts of fixed-size array
//! references, which LLVM lowers to plain unaligned vector loads, so no raw
//! pointers are dereferenced here.

use std::arch::x86_64::*;

use half::f16;

/// 8 fp16 values (exactly 8, else zeros) widened to f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn cvt8(s: &[f16]) -> __m256 {
    let a = <[f16; 8]>::try_from(s).unwrap_or([f16::ZERO; 8]);
    _mm256_cvtph_ps(bytemuck::cast::<[f16; 8], __m128i>(a))
}

/// 8 f32 values (exactly 8, else zeros).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn ld8(s: &[f32]) -> __m256 {
    bytemuck::cast(<[f32; 8]>::try_from(s).unwrap_or([0.0; 8]))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// fp16 → f32 with one `vcvtph2ps` per 8 values.
///
/// Not `half`'s slice conversion: that one calls its F16C routine through a
/// function that cannot be inlined across the target-feature boundary, once per
/// 8 values, which measured several times slower and made weight conversion the
/// largest cost of a decode-sized call.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut s = src[..n].chunks_exact(8);
    let mut d = dst[..n].chunks_exact_mut(8);
    for (sc, dc) in (&mut s).zip(&mut d) {
        dc.copy_from_slice(&bytemuck::cast::<__m256, [f32; 8]>(cvt8(sc)));
    }
    for (a, b) in s.remainder().iter().zip(d.into_remainder()) {
        *b = a.to_f32();
    }
}

/// `a · b` over the common length, four independent 8-lane accumulators.
///
/// Hand-written because LLVM's auto-vectorisation of the generic version used
/// 128-bit registers with per-element shuffles in the scoring loop.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut ca = a.chunks_exact(32);
    let mut cb = b.chunks_exact(32);
    for (pa, pb) in (&mut ca).zip(&mut cb) {
        for (l, acc) in acc.iter_mut().enumerate() {
            let r = l * 8..l * 8 + 8;
            *acc = _mm256_fmadd_ps(ld8(&pa[r.clone()]), ld8(&pb[r]), *acc);
        }
    }
    let mut ta = ca.remainder().chunks_exact(8);
    let mut tb = cb.remainder().chunks_exact(8);
    for (pa, pb) in (&mut ta).zip(&mut tb) {
        acc[0] = _mm256_fmadd_ps(ld8(pa), ld8(pb), acc[0]);
    }
    let mut s = hsum(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    for (p, q) in ta.remainder().iter().zip(tb.remainder()) {
        s = p.mul_add(*q, s);
    }
    s
}

/// `a · x` with `a` in fp16, converted on the fly (no buffer round trip).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn dot_f16(a: &[f16], x: &[f32]) -> f32 {
    let n = a.len().min(x.len());
    let (a, x) = (&a[..n], &x[..n]);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut ca = a.chunks_exact(32);
    let mut cx = x.chunks_exact(32);
    for (pa, px) in (&mut ca).zip(&mut cx) {
        for (l, acc) in acc.iter_mut().enumerate() {
            let r = l * 8..l * 8 + 8;
            *acc = _mm256_fmadd_ps(cvt8(&pa[r.clone()]), ld8(&px[r]), *acc);
        }
    }
    let mut ta = ca.remainder().chunks_exact(8);
    let mut tx = cx.remainder().chunks_exact(8);
    for (pa, px) in (&mut ta).zip(&mut tx) {
        acc[0] = _mm256_fmadd_ps(cvt8(pa), ld8(px), acc[0]);
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    for (p, q) in ta.remainder().iter().zip(tx.remainder()) {
        s = p.to_f32().mul_add(*q, s);
    }
    s
}

/// The horizontal sums of eight vectors, as one vector: `out[i] = Σ_l v[i][l]`.
///
/// After two `vhaddps` levels each 128-bit lane holds four vectors' half sums;
/// adding the two lanes finishes them.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn reduce8(v: [__m256; 8]) -> __m256 {
    let s01 = _mm256_hadd_ps(v[0], v[1]);
    let s23 = _mm256_hadd_ps(v[2], v[3]);
    let s45 = _mm256_hadd_ps(v[4], v[5]);
    let s67 = _mm256_hadd_ps(v[6], v[7]);
    let s0123 = _mm256_hadd_ps(s01, s23);
    let s4567 = _mm256_hadd_ps(s45, s67);
    let lo = _mm256_permute2f128_ps::<0x20>(s0123, s4567);
    let hi = _mm256_permute2f128_ps::<0x31>(s0123, s4567);
    _mm256_add_ps(lo, hi)
}

/// `out[i] += b[i, :] · z` for fp16 `b` (`rows × rank`, row-major) and
/// `rank % 8 == 0`: eight rows at a time, each row's dot in one register, the
/// eight partial vectors reduced together by a `vhaddps` tree. Returns false (and
/// does nothing) for other ranks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn expand_f16(b: &[f16], rank: usize, z: &[f32], out: &mut [f32]) -> bool {
    if rank == 0 || !rank.is_multiple_of(8) || z.len() < rank {
        return false;
    }
    let z = &z[..rank];
    let rows = out.len().min(b.len() / rank);
    let (b, out) = (&b[..rows * rank], &mut out[..rows]);
    let mut bc = b.chunks_exact(8 * rank);
    let mut oc = out.chunks_exact_mut(8);
    if rank == 8 {
        // The common rank: each row is exactly one vector, so no inner loop at all.
        let zv = ld8(z);
        for (rows8, o8) in (&mut bc).zip(&mut oc) {
            let p: [__m256; 8] =
                std::array::from_fn(|i| _mm256_mul_ps(cvt8(&rows8[i * 8..i * 8 + 8]), zv));
            let sums = _mm256_add_ps(reduce8(p), ld8(o8));
            o8.copy_from_slice(&bytemuck::cast::<__m256, [f32; 8]>(sums));
        }
    } else {
        for (rows8, o8) in (&mut bc).zip(&mut oc) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (row, acc) in rows8.chunks_exact(rank).zip(acc.iter_mut()) {
                for (c, zc) in row.chunks_exact(8).zip(z.chunks_exact(8)) {
                    *acc = _mm256_fmadd_ps(cvt8(c), ld8(zc), *acc);
                }
            }
            let sums = _mm256_add_ps(reduce8(acc), ld8(o8));
            o8.copy_from_slice(&bytemuck::cast::<__m256, [f32; 8]>(sums));
        }
    }
    for (row, o) in bc.remainder().chunks_exact(rank).zip(oc.into_remainder()) {
        *o += dot_f16(row, z);
    }
    true
}

/// Widens `b` (`rows × rank` fp16, row-major) into `bt` (`rank × rows` f32,
/// rank-major) for `rank % 8 == 0`, 8 × 8 blocks at a time transposed in
/// registers. Returns false (and does nothing) for other ranks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn transpose_f16(b: &[f16], rank: usize, bt: &mut [f32]) -> bool {
    if rank == 0 || !rank.is_multiple_of(8) {
        return false;
    }
    let rows = (b.len() / rank).min(bt.len() / rank);
    let full = rows - rows % 8;
    for i0 in (0..full).step_by(8) {
        for c0 in (0..rank).step_by(8) {
            let r: [__m256; 8] = std::array::from_fn(|i| {
                let at = (i0 + i) * rank + c0;
                cvt8(&b[at..at + 8])
            });
            for (c, v) in transpose8(r).iter().enumerate() {
                let at = (c0 + c) * rows + i0;
                bt[at..at + 8].copy_from_slice(&bytemuck::cast::<__m256, [f32; 8]>(*v));
            }
        }
    }
    for i in full..rows {
        for c in 0..rank {
            bt[c * rows + i] = b[i * rank + c].to_f32();
        }
    }
    true
}

/// 8 × 8 transpose: `out[c][i] = r[i][c]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// `out[i][j] = a[i] · x[j]` for two rows `a` and four rows `x` (the common
/// length): each loaded vector feeds four (or two) FMAs, so the loop is bound by
/// FMA throughput rather than by loads as a plain dot is.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn dot_2x4(a: [&[f32]; 2], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
    let n = a.iter().chain(x.iter()).map(|r| r.len()).min().unwrap_or(0);
    let a = a.map(|r| &r[..n]);
    let x = x.map(|r| &r[..n]);
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let mut c = 0;
    while c + 8 <= n {
        let a0 = ld8(&a[0][c..c + 8]);
        let a1 = ld8(&a[1][c..c + 8]);
        for j in 0..4 {
            let xv = ld8(&x[j][c..c + 8]);
            acc[0][j] = _mm256_fmadd_ps(a0, xv, acc[0][j]);
            acc[1][j] = _mm256_fmadd_ps(a1, xv, acc[1][j]);
        }
        c += 8;
    }
    let mut out = [[0.0f32; 4]; 2];
    for i in 0..2 {
        for j in 0..4 {
            let mut s = hsum(acc[i][j]);
            for t in c..n {
                s = a[i][t].mul_add(x[j][t], s);
            }
            out[i][j] = s;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn has_features() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    #[test]
    fn kernels_match_scalar() {
        if !has_features() {
            return;
        }
        let h: Vec<f16> = (0..203)
            .map(|i| f16::from_f32(((i * 37 % 19) as f32 - 9.0) / 4.0))
            .collect();
        let x: Vec<f32> = (0..203)
            .map(|i| ((i * 11 % 7) as f32 - 3.0) / 2.0)
            .collect();
        // SAFETY: the features were detected above.
        let (dot, conv) = unsafe {
            let mut c = vec![0.0f32; 203];
            f16_to_f32(&h, &mut c);
            (dot_f16(&h, &x), c)
        };
        let want: f32 = h.iter().zip(&x).map(|(a, b)| a.to_f32() * b).sum();
        assert_eq!(dot, want); // small exact values: every order gives the same sum
        assert_eq!(conv, h.iter().map(|v| v.to_f32()).collect::<Vec<_>>());

        for rank in [8usize, 16, 64] {
            for rows in [1usize, 8, 13, 17] {
                let b = &h[..].repeat(rows * rank / 203 + 1)[..rows * rank];
                let z: Vec<f32> = (0..rank).map(|r| r as f32 * 0.25 - 1.0).collect();
                let mut out = vec![1.0f32; rows];
                // SAFETY: as above.
                assert!(unsafe { expand_f16(b, rank, &z, &mut out) });
                for i in 0..rows {
                    let want: f32 = 1.0
                        + (0..rank)
                            .map(|r| b[i * rank + r].to_f32() * z[r])
                            .sum::<f32>();
                    assert_eq!(out[i], want, "rank {rank} rows {rows} row {i}");
                }
            }
        }
        let mut out = [0.0f32; 2];
        // SAFETY: as above.
        assert!(!unsafe { expand_f16(&h[..6], 3, &x, &mut out) });

        for rank in [8usize, 16, 64] {
            for rows in [1usize, 8, 13, 24] {
                let b = &h[..].repeat(rows * rank / 203 + 1)[..rows * rank];
                let mut bt = vec![0.0f32; rows * rank];
                // SAFETY: as above.
                assert!(unsafe { transpose_f16(b, rank, &mut bt) });
                for i in 0..rows {
                    for c in 0..rank {
                        assert_eq!(
                            bt[c * rows + i],
                            b[i * rank + c].to_f32(),
                            "rank {rank} rows {rows}"
                        );
                    }
                }
            }
        }

        let hf: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        for n in [0usize, 5, 8, 203] {
            let a0 = &hf[..n];
            let xs: Vec<Vec<f32>> = (0..4)
                .map(|j| x.iter().map(|v| v * (j as f32 + 1.0)).collect())
                .collect();
            let xr = [&xs[0][..n], &xs[1][..n], &xs[2][..n], &xs[3][..n]];
            let a1: Vec<f32> = a0.iter().map(|v| -v).collect();
            // SAFETY: as above.
            let got = unsafe { dot_2x4([a0, &a1], xr) };
            for j in 0..4 {
                let want: f32 = a0.iter().zip(xr[j]).map(|(p, q)| p * q).sum();
                assert_eq!(got[0][j], want, "n {n} j {j}");
                assert_eq!(got[1][j], -want, "n {n} j {j}");
            }
        }
    }
}
