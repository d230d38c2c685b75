//! Two-level int8 scalar quantisation of embeddings, and the dot-product kernels over it.
//!
//! An embedding `x` (the first `D` values of a stored vector) is kept as a *coarse* code
//! `c = round(x / s)` with one scale per vector, `s = max|x_i| / 127`, and a *fine* code of the
//! residual, `f = round((x − s·c) / (s / 254))`. The coarse code (D bytes) lives in memory and
//! ranks candidates; coarse and fine together (2·D bytes, on disk) give
//! `x ≈ s·(c + f / 254)`, within `s / 508 = max|x_i| / 64 516` per component — finer than an
//! f16 copy (relative 2⁻¹¹ ≈ 1 / 2048), so re-ranked scores are the model's exact logits to
//! float noise.

/// Largest code magnitude.
const LEVELS: f32 = 127.0;
/// Fine steps per coarse step.
const FINE_STEPS: f32 = 254.0;

/// One quantised embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Codes {
    /// Per-vector scale `s`.
    pub scale: f32,
    /// Coarse code, `D` values in `-127..=127`.
    pub coarse: Vec<i8>,
    /// Fine code of the residual, `D` values in `-127..=127`.
    pub fine: Vec<i8>,
}

/// The per-vector scale of `x` (0 for an all-zero or non-finite vector).
fn scale_of(x: &[f32]) -> f32 {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max.is_finite() && max > 0.0 {
        max / LEVELS
    } else {
        0.0
    }
}

/// Quantises `x` to its coarse and fine codes. Non-finite components are stored as 0.
pub fn encode(x: &[f32]) -> Codes {
    let scale = scale_of(x);
    let (mut coarse, mut fine) = (Vec::with_capacity(x.len()), Vec::with_capacity(x.len()));
    if scale == 0.0 {
        coarse.resize(x.len(), 0);
        fine.resize(x.len(), 0);
        return Codes {
            scale,
            coarse,
            fine,
        };
    }
    let step = scale / FINE_STEPS;
    for &v in x {
        let v = if v.is_finite() { v } else { 0.0 };
        let c = (v / scale).round().clamp(-LEVELS, LEVELS);
        let f = ((v - c * scale) / step).round().clamp(-LEVELS, LEVELS);
        coarse.push(c as i8);
        fine.push(f as i8);
    }
    Codes {
        scale,
        coarse,
        fine,
    }
}

/// The coarse code alone (what a query is quantised to), with its scale.
pub fn encode_coarse(x: &[f32]) -> (f32, Vec<i8>) {
    let scale = scale_of(x);
    let code = if scale == 0.0 {
        vec![0; x.len()]
    } else {
        x.iter()
            .map(|&v| {
                let v = if v.is_finite() { v } else { 0.0 };
                (v / scale).round().clamp(-LEVELS, LEVELS) as i8
            })
            .collect()
    };
    (scale, code)
}

/// Reconstructs the embedding from both codes.
pub fn decode(scale: f32, coarse: &[i8], fine: &[i8]) -> Vec<f32> {
    coarse
        .iter()
        .zip(fine)
        .map(|(&c, &f)| scale * (f32::from(c) + f32::from(f) / FINE_STEPS))
        .collect()
}

/// Reconstructs the embedding from the coarse code alone.
pub fn decode_coarse(scale: f32, coarse: &[i8]) -> Vec<f32> {
    coarse.iter().map(|&c| scale * f32::from(c)).collect()
}

/// Integer dot product of two codes, values in `-127..=127` as [`encode`] makes them (exact:
/// |sum| ≤ D·127² fits i32 for D < 133 000).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports the feature the function is compiled for.
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    dot_i8_plain(a, b)
}

/// Written so the compiler vectorises it (widening multiply-add over 16 lanes).
#[inline(always)]
fn dot_i8_plain(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let chunks = a.len().min(b.len()) / 16 * 16;
    for (ca, cb) in a[..chunks]
        .chunks_exact(16)
        .zip(b[..chunks].chunks_exact(16))
    {
        for i in 0..16 {
            acc[i] += i32::from(i16::from(ca[i]) * i16::from(cb[i]));
        }
    }
    let mut sum: i32 = acc.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        sum += i32::from(*x) * i32::from(*y);
    }
    sum
}

/// AVX2, 32 products per step: `|a| · (b · sign a)` with `maddubs` (pairs of products fit i16
/// for values in -127..=127), then pairs summed into i32 with `madd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let steps = n / 32;
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_si256();
    for step in 0..steps {
        // SAFETY: `step * 32 + 32 <= n`, so both 32-byte loads are in bounds (unaligned loads).
        let (va, vb) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().add(step * 32) as *const __m256i),
                _mm256_loadu_si256(b.as_ptr().add(step * 32) as *const __m256i),
            )
        };
        let products = _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(products, ones));
    }
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` holds exactly 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
    let mut sum: i32 = lanes.iter().sum();
    for (x, y) in a[steps * 32..n].iter().zip(&b[steps * 32..n]) {
        sum += i32::from(*x) * i32::from(*y);
    }
    sum
}

/// f32 dot product (vectorised, 8 accumulators).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_f32_avx2(a, b) };
        }
    }
    dot_f32_plain(a, b)
}

#[inline(always)]
fn dot_f32_plain(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len().min(b.len()) / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        sum += x * y;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_plain(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: &mut u64, n: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * amp
            })
            .collect()
    }

    #[test]
    fn both_codes_reconstruct_within_the_documented_bound_and_finer_than_f16() {
        let mut seed = 3;
        for amp in [1e-3f32, 0.07, 1.0, 40.0] {
            let x = sample(&mut seed, 768, amp);
            let codes = encode(&x);
            let back = decode(codes.scale, &codes.coarse, &codes.fine);
            let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = x
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= max / 64_516.0 * 1.01, "{worst} vs max {max}");
            let f16_worst = x
                .iter()
                .map(|v| (v - half::f16::from_f32(*v).to_f32()).abs())
                .fold(0f32, f32::max);
            assert!(worst < f16_worst, "{worst} vs f16 {f16_worst}");
            // The coarse code alone is within half a step.
            let coarse = decode_coarse(codes.scale, &codes.coarse);
            let worst = x
                .iter()
                .zip(&coarse)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= codes.scale * 0.5001);
        }
    }

    #[test]
    fn zero_and_non_finite_vectors_encode_to_zero_codes() {
        let codes = encode(&[0.0; 5]);
        assert_eq!(
            (codes.scale, codes.coarse, codes.fine),
            (0.0, vec![0; 5], vec![0; 5])
        );
        let codes = encode(&[f32::NAN, 1.0, -0.5]);
        assert_eq!(codes.coarse, vec![0, 127, -64]);
        let codes = encode(&[f32::INFINITY, 1.0]);
        assert_eq!((codes.scale, codes.coarse), (0.0, vec![0, 0]));
    }

    #[test]
    fn kernels_equal_the_plain_sums() {
        let mut seed = 9;
        for n in [0usize, 1, 15, 16, 17, 768, 769] {
            let a = sample(&mut seed, n, 1.0);
            let b = sample(&mut seed, n, 1.0);
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot_f32(&a, &b)) - want).abs() < 1e-4);
            let (_, ca) = encode_coarse(&a);
            let (_, cb) = encode_coarse(&b);
            let want: i32 = ca
                .iter()
                .zip(&cb)
                .map(|(x, y)| i32::from(*x) * i32::from(*y))
                .sum();
            assert_eq!(dot_i8(&ca, &cb), want);
        }
        // Extremes do not overflow, signs mix, zeros stay zero.
        let a = vec![-127i8; 768];
        assert_eq!(dot_i8(&a, &a), 768 * 127 * 127);
        let b: Vec<i8> = (0..771).map(|i| [127i8, -127, 0, 5, -1][i % 5]).collect();
        let c: Vec<i8> = (0..771)
            .map(|i| [-127i8, -127, 99, 0, 3][i % 7 % 5])
            .collect();
        let want: i32 = b
            .iter()
            .zip(&c)
            .map(|(x, y)| i32::from(*x) * i32::from(*y))
            .sum();
        assert_eq!(dot_i8(&b, &c), want);
        assert_eq!(dot_i8_plain(&b, &c), want);
    }
}
