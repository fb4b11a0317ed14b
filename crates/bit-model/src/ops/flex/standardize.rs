//! Weight standardization of a kernel and its closed-form backward.
//!
//! For each output filter `o` with fan-in `n` (its `cin * kh * kw` weights):
//! `w_hat = (w - mean) / s` with `s = sqrt(var + eps)` and the *biased* variance, and
//! `dL/dw = (g - mean(g) - w_hat * mean(g * w_hat)) / s` where `g = dL/dw_hat`
//! (the derivative of `s` through the variance gives the last term; the mean's derivative
//! cancels because the centred weights sum to zero).
//!
//! The raw kernel is OIHW (Burn's layout). The standardized kernel and its gradient come in
//! the two layouts the channels-last GEMMs want (see [`KernelLayout`]); both order a filter's
//! weights (kh, kw, cin), like the im2col rows.

use rayon::prelude::*;

/// Kernel dimensions `[cout, cin, kh, kw]`.
pub(crate) type KernelShape = [usize; 4];

/// How a standardized kernel (or its gradient) is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KernelLayout {
    /// `[kh * kw * cin, cout]`: the right-hand side of the forward GEMM, which `gemm` packs.
    Hwio,
    /// `[cout, kh * kw * cin]`: one row per filter; the right-hand side of the input gradient.
    Ohwi,
}

/// Terms summed in f32 before folding into f64: vectorised, and short enough that the f32
/// partial sums keep the data's own precision.
const BLOCK: usize = 64;

/// `sum f(v)` over `values`, in f32 blocks folded into f64.
fn sum(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    values
        .chunks(BLOCK)
        .map(|block| block.iter().map(|&v| f(v)).sum::<f32>() as f64)
        .sum()
}

/// Mean and `1 / sqrt(var + eps)` of one filter (two passes: the variance of the centred
/// values, so a constant filter has exactly zero variance).
fn moments(filter: &[f32], eps: f64) -> (f32, f32) {
    let n = filter.len() as f64;
    let mean = (sum(filter, |v| v) / n) as f32;
    let var = sum(filter, |v| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}

/// Mean and `1 / sqrt(var + eps)` of every filter of the OIHW `raw`.
pub(crate) fn filter_moments(raw: &[f32], fan_in: usize, eps: f64) -> Vec<(f32, f32)> {
    raw.par_chunks(fan_in).map(|f| moments(f, eps)).collect()
}

/// The standardized kernel of the OIHW `raw`, in O-HWI (the other layout is its
/// [`transpose`]), with its [`filter_moments`] (computed while each filter is in cache).
pub(crate) fn standardize(
    raw: &[f32],
    shape: KernelShape,
    eps: f64,
) -> (Vec<f32>, Vec<(f32, f32)>) {
    let [_, c_in, kh, kw] = shape;
    let (fan_in, taps) = (c_in * kh * kw, kh * kw);
    let mut out = vec![0.0f32; raw.len()];
    let moments = out
        .par_chunks_mut(fan_in)
        .zip(raw.par_chunks(fan_in))
        .map(|(dst, filter)| {
            let (mean, inv_std) = moments(filter, eps);
            if taps == 1 {
                for (d, &v) in dst.iter_mut().zip(filter) {
                    *d = (v - mean) * inv_std;
                }
            } else {
                // (cin, tap) -> (tap, cin) within the filter.
                for (tap, dst) in dst.chunks_exact_mut(c_in).enumerate() {
                    for (ci, d) in dst.iter_mut().enumerate() {
                        *d = (filter[ci * taps + tap] - mean) * inv_std;
                    }
                }
            }
            (mean, inv_std)
        })
        .collect();
    (out, moments)
}

/// The `[cols, rows]` transpose of the row-major `[rows, cols]` matrix `m`: 8x8 tiles (read
/// as 8 short rows, written as 8 short rows), in parallel over strips of output rows.
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 8;
    const STRIP: usize = 64;
    let mut out = vec![0.0f32; m.len()];
    out.par_chunks_mut(STRIP * rows)
        .enumerate()
        .for_each(|(t, dst)| {
            let (c0, width) = (t * STRIP, dst.len() / rows);
            let full = width - width % B;
            let mut r = 0;
            while r + B <= rows {
                for c in (0..full).step_by(B) {
                    let mut tile = [[0f32; B]; B];
                    for (i, row) in tile.iter_mut().enumerate() {
                        row.copy_from_slice(&m[(r + i) * cols + c0 + c..][..B]);
                    }
                    for j in 0..B {
                        let d = &mut dst[(c + j) * rows + r..][..B];
                        for (i, d) in d.iter_mut().enumerate() {
                            *d = tile[i][j];
                        }
                    }
                }
                for c in full..width {
                    for i in 0..B {
                        dst[c * rows + r + i] = m[(r + i) * cols + c0 + c];
                    }
                }
                r += B;
            }
            for r in r..rows {
                for c in 0..width {
                    dst[c * rows + r] = m[r * cols + c0 + c];
                }
            }
        });
    out
}

/// `dL/dw` (OIHW) from the raw kernel, its [`filter_moments`] and `dL/dw_hat` (in `layout`).
pub(crate) fn standardize_backward(
    raw: &[f32],
    moments: &[(f32, f32)],
    grad: &[f32],
    shape: KernelShape,
    layout: KernelLayout,
) -> Vec<f32> {
    let [c_out, c_in, kh, kw] = shape;
    let (fan_in, taps) = (c_in * kh * kw, kh * kw);
    let transposed = match layout {
        KernelLayout::Ohwi => None,
        KernelLayout::Hwio => Some(transpose(grad, fan_in, c_out)),
    };
    let rows = transposed.as_deref().unwrap_or(grad);
    let mut out = vec![0.0f32; raw.len()];
    out.par_chunks_mut(fan_in)
        .zip(raw.par_chunks(fan_in))
        .zip(rows.par_chunks(fan_in))
        .zip(moments)
        .for_each(|(((dw, filter), g), &stats)| filter_backward(filter, stats, g, c_in, taps, dw));
    out
}

/// One filter: `dw` (OIHW order) from its raw weights, their moments and `g = dL/dw_hat`
/// ((kh, kw, cin) order).
fn filter_backward(
    filter: &[f32],
    (mean, inv_std): (f32, f32),
    g: &[f32],
    c_in: usize,
    taps: usize,
    dw: &mut [f32],
) {
    let n = filter.len() as f64;
    // Permute g to OIHW order first, so everything below is element-wise.
    if taps == 1 {
        dw.copy_from_slice(g);
    } else {
        for (ci, d) in dw.chunks_exact_mut(taps).enumerate() {
            for (tap, d) in d.iter_mut().enumerate() {
                *d = g[tap * c_in + ci];
            }
        }
    }
    let w_hat = |v: f32| (v - mean) * inv_std;
    let g_mean = (sum(dw, |g| g) / n) as f32;
    let gw_mean = (dw
        .chunks(BLOCK)
        .zip(filter.chunks(BLOCK))
        .map(|(g, v)| g.iter().zip(v).map(|(&g, &v)| g * w_hat(v)).sum::<f32>() as f64)
        .sum::<f64>()
        / n) as f32;
    for (d, &v) in dw.iter_mut().zip(filter) {
        *d = (*d - g_mean - w_hat(v) * gw_mean) * inv_std;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardized_filters_have_zero_mean_and_unit_variance() {
        let shape = [3, 2, 3, 3];
        let raw: Vec<f32> = (0..54)
            .map(|i| (i as f32 * 0.37).sin() * 3.0 + 1.5)
            .collect();
        let (ohwi, moments) = standardize(&raw, shape, 1e-10);
        assert_eq!(moments, filter_moments(&raw, 18, 1e-10));
        let hwio = transpose(&ohwi, 3, 18);
        for co in 0..3 {
            let filter: Vec<f64> = (0..18).map(|i| ohwi[co * 18 + i] as f64).collect();
            let column: Vec<f64> = (0..18).map(|i| hwio[i * 3 + co] as f64).collect();
            assert_eq!(filter, column);
            let mean = filter.iter().sum::<f64>() / 18.0;
            let var = filter.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 18.0;
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5,
                "{mean} {var}"
            );
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        let shape = [2, 3, 2, 2];
        let eps = 1e-3;
        let raw: Vec<f32> = (0..24).map(|i| (i as f32 * 0.71).cos()).collect();
        let upstream: Vec<f32> = (0..24).map(|i| (i as f32 * 1.3).sin()).collect();
        let loss = |w: &[f32]| -> f64 {
            let (ohwi, _) = standardize(w, shape, eps);
            ohwi.iter()
                .zip(&upstream)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let moments = filter_moments(&raw, 12, eps);
        let grad = standardize_backward(&raw, &moments, &upstream, shape, KernelLayout::Ohwi);
        // The same gradient given in HWIO order.
        let fan_in = 12;
        let upstream_hwio: Vec<f32> = (0..24)
            .map(|i| upstream[(i % 2) * fan_in + i / 2])
            .collect();
        let from_hwio =
            standardize_backward(&raw, &moments, &upstream_hwio, shape, KernelLayout::Hwio);
        assert_eq!(grad, from_hwio);
        for j in 0..raw.len() {
            let h = 1e-2f32;
            let (mut plus, mut minus) = (raw.clone(), raw.clone());
            plus[j] += h;
            minus[j] -= h;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            assert!(
                (grad[j] as f64 - numeric).abs() < 2e-3,
                "{j}: {} vs {numeric}",
                grad[j]
            );
        }
    }

    #[test]
    fn transpose_of_every_shape() {
        for (rows, cols) in [(1, 1), (3, 5), (8, 8), (17, 70), (64, 147), (9, 130)] {
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&m, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        m[r * cols + c],
                        "{rows}x{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }

    #[test]
    fn a_constant_filter_stays_finite() {
        let raw = vec![0.25f32; 8];
        let (ohwi, moments) = standardize(&raw, [1, 2, 2, 2], 1e-10);
        assert!(ohwi.iter().all(|v| *v == 0.0));
        let grad =
            standardize_backward(&raw, &moments, &[1.0; 8], [1, 2, 2, 2], KernelLayout::Ohwi);
        assert!(grad.iter().all(|v| v.is_finite()));
    }
}
