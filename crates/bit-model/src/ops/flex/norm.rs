//! GroupNorm followed by ReLU on channels-last (NHWC) data, forward and closed-form backward.
//!
//! Forward, per image: one pass accumulates per-channel sums of `x - k[c]` and of its square,
//! shifted by the channel's first value `k[c]` so that the variance does not cancel
//! catastrophically when the mean is large; they give each group's mean and
//! `rstd = 1 / sqrt(var + eps)` (biased variance, as PyTorch). A second pass writes
//! `y = max(0, x * a[c] + b[c])` with `a = gamma * rstd` and `b = beta - mean * a`. Only the
//! per-group statistics are kept for the backward.
//!
//! Backward, with `z = x * a + b` recomputed exactly as in the forward (so the ReLU mask is
//! bit-identical), `dz = dy * [z > 0]` and `x_hat = (x - mean) * rstd`:
//! `dbeta = sum dz`, `dgamma = sum dz * x_hat`, and per group
//! `dx = rstd * (gamma * dz - mean(gamma * dz) - x_hat * mean(gamma * dz * x_hat))`.

use rayon::prelude::*;

/// Shape of one GroupNorm: `batch` images of `positions` pixels and `channels` channels, in
/// `groups` groups of consecutive channels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NormGeometry {
    pub batch: usize,
    pub positions: usize,
    pub channels: usize,
    pub groups: usize,
}

/// Positions summed in f32 before folding into the f64 totals: vectorised adds, and each f32
/// partial covers few enough terms that its rounding stays at the data's own precision.
const BLOCK: usize = 16;

impl NormGeometry {
    fn group_size(&self) -> usize {
        self.channels / self.groups
    }

    fn image_len(&self) -> usize {
        self.positions * self.channels
    }

    /// Per-channel copies of per-group values.
    fn per_channel(&self, per_group: &[f32]) -> Vec<f32> {
        let cg = self.group_size();
        (0..self.channels).map(|c| per_group[c / cg]).collect()
    }
}

/// Per-channel sums of `f(c, x)` and `g(c, x)` over the rows of one image, in f64.
fn channel_sums(
    rows: &[f32],
    channels: usize,
    f: impl Fn(usize, f32) -> f32,
    g: impl Fn(usize, f32) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let mut first = vec![0.0f64; channels];
    let mut second = vec![0.0f64; channels];
    let mut p1 = vec![0.0f32; channels];
    let mut p2 = vec![0.0f32; channels];
    for block in rows.chunks(BLOCK * channels) {
        p1.fill(0.0);
        p2.fill(0.0);
        for row in block.chunks_exact(channels) {
            for (c, ((a, b), &v)) in p1.iter_mut().zip(p2.iter_mut()).zip(row).enumerate() {
                *a += f(c, v);
                *b += g(c, v);
            }
        }
        for c in 0..channels {
            first[c] += p1[c] as f64;
            second[c] += p2[c] as f64;
        }
    }
    (first, second)
}

/// The affine map `z = x * a[c] + b[c]` that the forward applies before the ReLU.
fn affine(gamma: &[f32], beta: &[f32], mean_c: &[f32], rstd_c: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = gamma.iter().zip(rstd_c).map(|(g, r)| g * r).collect();
    let b: Vec<f32> = beta
        .iter()
        .zip(mean_c)
        .zip(&a)
        .map(|((b, m), a)| b - m * a)
        .collect();
    (a, b)
}

/// `y = relu(group_norm(x))`; returns the per-image, per-group `(mean, rstd)`, `[batch * groups]`.
pub(crate) fn forward(
    g: &NormGeometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    y: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let (cg, len, channels) = (g.group_size(), g.image_len(), g.channels);
    let stats: Vec<(Vec<f32>, Vec<f32>)> = x
        .par_chunks(len)
        .zip(y.par_chunks_mut(len))
        .map(|(image, out)| {
            let shift = &image[..channels];
            let (s1, s2) = channel_sums(
                image,
                channels,
                |c, v| v - shift[c],
                |c, v| (v - shift[c]) * (v - shift[c]),
            );
            let per_channel = g.positions as f64;
            let count = per_channel * cg as f64;
            let (mut mean, mut rstd) = (vec![0.0f32; g.groups], vec![0.0f32; g.groups]);
            for k in 0..g.groups {
                let cs = k * cg..(k + 1) * cg;
                let m = cs
                    .clone()
                    .map(|c| shift[c] as f64 * per_channel + s1[c])
                    .sum::<f64>()
                    / count;
                // sum (x - m)^2 = sum over channels of S2 + 2 (k - m) S1 + n (k - m)^2.
                let sq: f64 = cs
                    .map(|c| {
                        let d = shift[c] as f64 - m;
                        s2[c] + 2.0 * d * s1[c] + per_channel * d * d
                    })
                    .sum();
                // Clamps rounding below zero; a NaN stays NaN (`max` would make it 0).
                let var = if sq < 0.0 { 0.0 } else { sq / count };
                mean[k] = m as f32;
                rstd[k] = (1.0 / (var + eps).sqrt()) as f32;
            }
            let (a, b) = affine(gamma, beta, &g.per_channel(&mean), &g.per_channel(&rstd));
            for (src, dst) in image
                .chunks_exact(channels)
                .zip(out.chunks_exact_mut(channels))
            {
                for (((d, &v), a), b) in dst.iter_mut().zip(src).zip(&a).zip(&b) {
                    // ReLU as Burn's: NaN stays NaN, so a diverged input is seen downstream.
                    let z = v * a + b;
                    *d = if z < 0.0 { 0.0 } else { z };
                }
            }
            (mean, rstd)
        })
        .collect();
    let (mean, rstd): (Vec<Vec<f32>>, Vec<Vec<f32>>) = stats.into_iter().unzip();
    (mean.concat(), rstd.concat())
}

/// Gradients of [`forward`] from its parameters `(gamma, beta)` and statistics `(mean, rstd)`:
/// writes `dx` (NHWC) and returns `(dgamma, dbeta)`.
pub(crate) fn backward(
    g: &NormGeometry,
    x: &[f32],
    (gamma, beta): (&[f32], &[f32]),
    (mean, rstd): (&[f32], &[f32]),
    dy: &[f32],
    dx: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let (cg, len, channels) = (g.group_size(), g.image_len(), g.channels);
    let count = (g.positions * cg) as f64;
    let per_image: Vec<(Vec<f64>, Vec<f64>)> = x
        .par_chunks(len)
        .zip(dy.par_chunks(len))
        .zip(dx.par_chunks_mut(len))
        .enumerate()
        .map(|(n, ((image, grad), out))| {
            let groups = n * g.groups..(n + 1) * g.groups;
            let mean_c = g.per_channel(&mean[groups.clone()]);
            let rstd_c = g.per_channel(&rstd[groups]);
            let (a, b) = affine(gamma, beta, &mean_c, &rstd_c);
            let (dz_sum, dzx_sum) =
                relu_grad_sums(image, grad, (&a, &b), (&mean_c, &rstd_c), channels);
            let (shift, slope) = group_terms(g, gamma, &rstd_c, (&dz_sum, &dzx_sum), count);
            let gain: Vec<f32> = gamma.iter().zip(&rstd_c).map(|(g, r)| g * r).collect();
            // Pass 2: dx.
            for ((xr, gr), dr) in image
                .chunks_exact(channels)
                .zip(grad.chunks_exact(channels))
                .zip(out.chunks_exact_mut(channels))
            {
                for c in 0..channels {
                    let (v, dy) = (xr[c], gr[c]);
                    let dz = if v * a[c] + b[c] <= 0.0 { 0.0 } else { dy };
                    let x_hat = (v - mean_c[c]) * rstd_c[c];
                    dr[c] = gain[c] * dz - shift[c] - x_hat * slope[c];
                }
            }
            (dz_sum, dzx_sum)
        })
        .collect();
    let mut dgamma = vec![0.0f64; channels];
    let mut dbeta = vec![0.0f64; channels];
    for (dz_sum, dzx_sum) in &per_image {
        for c in 0..channels {
            dbeta[c] += dz_sum[c];
            dgamma[c] += dzx_sum[c];
        }
    }
    (
        dgamma.into_iter().map(|v| v as f32).collect(),
        dbeta.into_iter().map(|v| v as f32).collect(),
    )
}

/// Pass 1 of the backward over one image: per channel, `sum(dz)` and `sum(dz * x_hat)`, where
/// `dz` is the gradient through the ReLU of `a * x + b` (blocks summed in f32, totals in f64).
fn relu_grad_sums(
    image: &[f32],
    grad: &[f32],
    (a, b): (&[f32], &[f32]),
    (mean_c, rstd_c): (&[f32], &[f32]),
    channels: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut dz_sum = vec![0.0f64; channels];
    let mut dzx_sum = vec![0.0f64; channels];
    let mut p1 = vec![0.0f32; channels];
    let mut p2 = vec![0.0f32; channels];
    for (xs, gs) in image
        .chunks(BLOCK * channels)
        .zip(grad.chunks(BLOCK * channels))
    {
        p1.fill(0.0);
        p2.fill(0.0);
        for (xr, gr) in xs.chunks_exact(channels).zip(gs.chunks_exact(channels)) {
            for c in 0..channels {
                let (v, dy) = (xr[c], gr[c]);
                let dz = if v * a[c] + b[c] <= 0.0 { 0.0 } else { dy };
                p1[c] += dz;
                p2[c] += dz * ((v - mean_c[c]) * rstd_c[c]);
            }
        }
        for c in 0..channels {
            dz_sum[c] += p1[c] as f64;
            dzx_sum[c] += p2[c] as f64;
        }
    }
    (dz_sum, dzx_sum)
}

/// Per group, the two means of the backward formula folded with rstd, per channel:
/// `dx = rstd * gamma * dz - shift - x_hat * slope` with `shift = rstd * m1`,
/// `slope = rstd * m2` over the group's `count` values.
fn group_terms(
    g: &NormGeometry,
    gamma: &[f32],
    rstd_c: &[f32],
    (dz_sum, dzx_sum): (&[f64], &[f64]),
    count: f64,
) -> (Vec<f32>, Vec<f32>) {
    let cg = g.group_size();
    let mut shift = vec![0.0f32; g.channels];
    let mut slope = vec![0.0f32; g.channels];
    for k in 0..g.groups {
        let cs = k * cg..(k + 1) * cg;
        let m1 = cs.clone().map(|c| gamma[c] as f64 * dz_sum[c]).sum::<f64>() / count;
        let m2 = cs
            .clone()
            .map(|c| gamma[c] as f64 * dzx_sum[c])
            .sum::<f64>()
            / count;
        for c in cs {
            shift[c] = (rstd_c[c] as f64 * m1) as f32;
            slope[c] = (rstd_c[c] as f64 * m2) as f32;
        }
    }
    (shift, slope)
}
