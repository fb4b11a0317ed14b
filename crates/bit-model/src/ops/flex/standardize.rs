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

/// Filters handled together when writing HWIO, so that each output row gets a run of
/// consecutive floats.
const FILTERS: usize = 16;

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

/// The standardized filters `first..` of the OIHW `raw`, each as one row ordered
/// (kh, kw, cin), into `rows`.
fn standardized_rows(raw: &[f32], shape: KernelShape, eps: f64, first: usize, rows: &mut [f32]) {
    let [_, c_in, kh, kw] = shape;
    let (fan_in, taps) = (c_in * kh * kw, kh * kw);
    for (i, dst) in rows.chunks_exact_mut(fan_in).enumerate() {
        let filter = &raw[(first + i) * fan_in..(first + i + 1) * fan_in];
        let (mean, inv_std) = moments(filter, eps);
        for tap in 0..taps {
            let dst = &mut dst[tap * c_in..(tap + 1) * c_in];
            for (ci, d) in dst.iter_mut().enumerate() {
                *d = (filter[ci * taps + tap] - mean) * inv_std;
            }
        }
    }
}

/// The standardized kernel of the OIHW `raw`.
pub(crate) fn standardize(
    raw: &[f32],
    shape: KernelShape,
    eps: f64,
    layout: KernelLayout,
) -> Vec<f32> {
    let [c_out, c_in, kh, kw] = shape;
    let fan_in = c_in * kh * kw;
    let mut out = vec![0.0f32; raw.len()];
    match layout {
        KernelLayout::Ohwi => out
            .par_chunks_mut(FILTERS * fan_in)
            .enumerate()
            .for_each(|(b, rows)| standardized_rows(raw, shape, eps, b * FILTERS, rows)),
        KernelLayout::Hwio => {
            // Standardize a block of filters as rows, then write them as columns.
            let blocks: Vec<(usize, Vec<f32>)> = (0..c_out.div_ceil(FILTERS))
                .into_par_iter()
                .map(|b| {
                    let first = b * FILTERS;
                    let count = FILTERS.min(c_out - first);
                    let mut rows = vec![0.0f32; count * fan_in];
                    standardized_rows(raw, shape, eps, first, &mut rows);
                    (first, rows)
                })
                .collect();
            out.par_chunks_mut(c_out).enumerate().for_each(|(k, dst)| {
                for (first, rows) in &blocks {
                    for (i, row) in rows.chunks_exact(fan_in).enumerate() {
                        dst[first + i] = row[k];
                    }
                }
            });
        }
    }
    out
}

/// `dL/dw` (OIHW) from the raw kernel and `dL/dw_hat` (in `layout`).
pub(crate) fn standardize_backward(
    raw: &[f32],
    grad: &[f32],
    shape: KernelShape,
    eps: f64,
    layout: KernelLayout,
) -> Vec<f32> {
    let [c_out, c_in, kh, kw] = shape;
    let (fan_in, taps) = (c_in * kh * kw, kh * kw);
    let mut out = vec![0.0f32; raw.len()];
    out.par_chunks_mut(FILTERS * fan_in)
        .enumerate()
        .for_each(|(b, dws)| {
            let first = b * FILTERS;
            // This block's gradient rows, (kh, kw, cin) order.
            let rows: Vec<f32> = match layout {
                KernelLayout::Ohwi => grad[first * fan_in..first * fan_in + dws.len()].to_vec(),
                KernelLayout::Hwio => {
                    let count = dws.len() / fan_in;
                    let mut rows = vec![0.0f32; dws.len()];
                    for (k, src) in grad.chunks_exact(c_out).enumerate() {
                        for (i, &g) in src[first..first + count].iter().enumerate() {
                            rows[i * fan_in + k] = g;
                        }
                    }
                    rows
                }
            };
            for (i, (dw, g)) in dws
                .chunks_exact_mut(fan_in)
                .zip(rows.chunks_exact(fan_in))
                .enumerate()
            {
                let filter = &raw[(first + i) * fan_in..(first + i + 1) * fan_in];
                filter_backward(filter, g, c_in, taps, eps, dw);
            }
        });
    out
}

/// One filter: `dw` (OIHW order) from its raw weights and `g = dL/dw_hat` ((kh, kw, cin)
/// order).
fn filter_backward(filter: &[f32], g: &[f32], c_in: usize, taps: usize, eps: f64, dw: &mut [f32]) {
    let (mean, inv_std) = moments(filter, eps);
    let n = filter.len() as f64;
    // Permute g to OIHW order first, so everything below is element-wise.
    for (ci, d) in dw.chunks_exact_mut(taps).enumerate() {
        for (tap, d) in d.iter_mut().enumerate() {
            *d = g[tap * c_in + ci];
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
        let ohwi = standardize(&raw, shape, 1e-10, KernelLayout::Ohwi);
        let hwio = standardize(&raw, shape, 1e-10, KernelLayout::Hwio);
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
            let ohwi = standardize(w, shape, eps, KernelLayout::Ohwi);
            ohwi.iter()
                .zip(&upstream)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let grad = standardize_backward(&raw, &upstream, shape, eps, KernelLayout::Ohwi);
        // The same gradient given in HWIO order.
        let fan_in = 12;
        let upstream_hwio: Vec<f32> = (0..24)
            .map(|i| upstream[(i % 2) * fan_in + i / 2])
            .collect();
        let from_hwio = standardize_backward(&raw, &upstream_hwio, shape, eps, KernelLayout::Hwio);
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
    fn a_constant_filter_stays_finite() {
        let raw = vec![0.25f32; 8];
        let ohwi = standardize(&raw, [1, 2, 2, 2], 1e-10, KernelLayout::Ohwi);
        assert!(ohwi.iter().all(|v| *v == 0.0));
        let grad = standardize_backward(&raw, &[1.0; 8], [1, 2, 2, 2], 1e-10, KernelLayout::Ohwi);
        assert!(grad.iter().all(|v| v.is_finite()));
    }
}
