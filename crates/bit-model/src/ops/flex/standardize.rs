//! Weight standardization of a kernel and its closed-form backward.
//!
//! For each output filter `o` with fan-in `n` (its `cin * kh * kw` weights):
//! `w_hat = (w - mean) / s` with `s = sqrt(var + eps)` and the *biased* variance, and
//! `dL/dw = (g - mean(g) - w_hat * mean(g * w_hat)) / s` where `g = dL/dw_hat`
//! (the derivative of `s` through the variance gives the last term; the mean's derivative
//! cancels because the centred weights sum to zero).
//!
//! The raw kernel is OIHW (Burn's layout); the standardized kernel and its gradient are HWIO,
//! `[kh * kw * cin, cout]`, the layout the channels-last GEMMs consume.

use rayon::prelude::*;

/// Kernel dimensions `[cout, cin, kh, kw]`.
pub(crate) type KernelShape = [usize; 4];

/// Mean and `1 / sqrt(var + eps)` of one filter, accumulated in f64.
fn moments(filter: &[f32], eps: f64) -> (f64, f64) {
    let n = filter.len() as f64;
    let mean = filter.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = filter
        .iter()
        .map(|&v| {
            let d = v as f64 - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The standardized kernel of the OIHW `raw`, in HWIO.
pub(crate) fn standardize(raw: &[f32], shape: KernelShape, eps: f64) -> Vec<f32> {
    let [c_out, c_in, kh, kw] = shape;
    let fan_in = c_in * kh * kw;
    let taps = kh * kw;
    let stats: Vec<(f32, f32)> = raw
        .par_chunks(fan_in)
        .map(|filter| {
            let (mean, inv_std) = moments(filter, eps);
            (mean as f32, inv_std as f32)
        })
        .collect();
    // Written in HWIO order, one (tap, input channel) row of all filters at a time; the reads
    // stride over the filters, so rows are produced in blocks of input channels that stay in
    // cache.
    let mut hwio = vec![0.0f32; raw.len()];
    hwio.par_chunks_mut(c_in * c_out)
        .enumerate()
        .for_each(|(tap, dst)| {
            for (ci, row) in dst.chunks_exact_mut(c_out).enumerate() {
                for (co, d) in row.iter_mut().enumerate() {
                    let (mean, inv_std) = stats[co];
                    *d = (raw[co * fan_in + ci * taps + tap] - mean) * inv_std;
                }
            }
        });
    hwio
}

/// `dL/dw` (OIHW) from the raw kernel and `dL/dw_hat` (HWIO).
pub(crate) fn standardize_backward(
    raw: &[f32],
    grad_hwio: &[f32],
    shape: KernelShape,
    eps: f64,
) -> Vec<f32> {
    let [c_out, c_in, kh, kw] = shape;
    let fan_in = c_in * kh * kw;
    let taps = kh * kw;
    let mut out = vec![0.0f32; raw.len()];
    out.par_chunks_mut(fan_in)
        .zip(raw.par_chunks(fan_in))
        .enumerate()
        .for_each(|(co, (dw, filter))| {
            // Gather this filter's gradient into OIHW order.
            for (i, d) in dw.iter_mut().enumerate() {
                let (ci, tap) = (i / taps, i % taps);
                *d = grad_hwio[(tap * c_in + ci) * c_out + co];
            }
            let (mean, inv_std) = moments(filter, eps);
            let n = fan_in as f64;
            let (mut g_sum, mut gw_sum) = (0.0f64, 0.0f64);
            for (&g, &v) in dw.iter().zip(filter) {
                let w_hat = (v as f64 - mean) * inv_std;
                g_sum += g as f64;
                gw_sum += g as f64 * w_hat;
            }
            let (g_mean, gw_mean) = (g_sum / n, gw_sum / n);
            for (d, &v) in dw.iter_mut().zip(filter) {
                let w_hat = (v as f64 - mean) * inv_std;
                *d = ((*d as f64 - g_mean - w_hat * gw_mean) * inv_std) as f32;
            }
        });
    out
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
        let hwio = standardize(&raw, shape, 1e-10);
        for co in 0..3 {
            let filter: Vec<f64> = (0..18).map(|i| hwio[i * 3 + co] as f64).collect();
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
            let hwio = standardize(w, shape, eps);
            hwio.iter()
                .zip(&upstream)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let grad = standardize_backward(&raw, &upstream, shape, eps);
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
        let hwio = standardize(&raw, [1, 2, 2, 2], 1e-10);
        assert!(hwio.iter().all(|v| *v == 0.0));
        let grad = standardize_backward(&raw, &[1.0; 8], [1, 2, 2, 2], 1e-10);
        assert!(grad.iter().all(|v| v.is_finite()));
    }
}
