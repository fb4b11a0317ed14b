//! The CubeCL kernels: weight standardization and GroupNorm + ReLU, forward and backward.
//!
//! Each statistic is computed by one cube over its elements (a filter's fan-in, a group of one
//! image), its units striding over them and summing in a shared-memory tree; every pass
//! accumulates in `f32` whatever the tensor's float type, and the variance is taken around
//! the mean (two passes), as the CPU kernels and the reference do. Tensors are contiguous:
//! weights `[out, fan_in]`, activations channels-last `[batch, positions, channels]`.
//!
//! The GroupNorm kernels take the activations' float type `F` and the parameters' `P` apart
//! (half and `f32` in mixed precision); statistics and parameter gradients are `P`.
//!
//! ReLU and its mask are written as Burn's are (`z < 0 → 0`, gradient kept where `z > 0` or
//! `z` is NaN), so a NaN input stays NaN through the network on every backend.

use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// The sum of every unit's `value` over the cube (`CUBE_DIM` a power of two), for every unit.
#[cube]
fn cube_sum(scratch: &mut Shared<[f32]>, value: f32) -> f32 {
    let unit = UNIT_POS as usize;
    scratch[unit] = value;
    sync_cube();
    let mut active = CUBE_DIM as usize;
    while active > 1 {
        active /= 2;
        if unit < active {
            let other = scratch[unit + active];
            scratch[unit] += other;
        }
        sync_cube();
    }
    let total = scratch[0];
    // Nobody overwrites the total before every unit has read it.
    sync_cube();
    total
}

/// One cube per filter: `w_hat = (w - mean) * rstd`, with `rstd = 1 / sqrt(var + eps)`,
/// biased variance over the fan-in; `rstd` is kept for the backward.
#[cube(launch)]
pub(super) fn standardize<F: Float>(
    weight: &Tensor<F>,
    w_hat: &mut Tensor<F>,
    rstd_out: &mut Tensor<F>,
    fan_in: u32,
    eps: f32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let filter = CUBE_POS_X as usize;
    let n = fan_in as usize;
    let base = filter * n;
    let mut scratch = Shared::<[f32]>::new_slice(units);

    // Sums shifted by the filter's first value: a constant filter centres to exact zeros.
    let shift = f32::cast_from(weight[base]);
    let mut sum = f32::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < n {
        sum += f32::cast_from(weight[base + i]) - shift;
        i += units;
    }
    let mean = shift + cube_sum(&mut scratch, sum) / f32::cast_from(fan_in);

    let mut squares = f32::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < n {
        let d = f32::cast_from(weight[base + i]) - mean;
        squares += d * d;
        i += units;
    }
    let var = cube_sum(&mut scratch, squares) / f32::cast_from(fan_in);
    let rstd = f32::new(1.0) / f32::sqrt(var + eps);

    let mut i = UNIT_POS as usize;
    while i < n {
        w_hat[base + i] = F::cast_from((f32::cast_from(weight[base + i]) - mean) * rstd);
        i += units;
    }
    if UNIT_POS == 0 {
        rstd_out[filter] = F::cast_from(rstd);
    }
}

/// One cube per filter: the gradient of the raw weights from `g`, that of the standardized
/// ones, `dw = rstd * (g - mean(g) - w_hat * mean(g * w_hat))`.
#[cube(launch)]
pub(super) fn standardize_backward<F: Float>(
    grad_hat: &Tensor<F>,
    w_hat: &Tensor<F>,
    rstd: &Tensor<F>,
    grad: &mut Tensor<F>,
    fan_in: u32,
    #[comptime] units: usize,
    #[define(F)] _dtype: ElemType,
) {
    let filter = CUBE_POS_X as usize;
    let n = fan_in as usize;
    let base = filter * n;
    let mut scratch = Shared::<[f32]>::new_slice(units);

    let mut sum_g = f32::new(0.0);
    let mut sum_gw = f32::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < n {
        let g = f32::cast_from(grad_hat[base + i]);
        sum_g += g;
        sum_gw += g * f32::cast_from(w_hat[base + i]);
        i += units;
    }
    let count = f32::cast_from(fan_in);
    let mean_g = cube_sum(&mut scratch, sum_g) / count;
    let mean_gw = cube_sum(&mut scratch, sum_gw) / count;
    let r = f32::cast_from(rstd[filter]);

    let mut i = UNIT_POS as usize;
    while i < n {
        let g = f32::cast_from(grad_hat[base + i]);
        let w = f32::cast_from(w_hat[base + i]);
        grad[base + i] = F::cast_from(r * (g - mean_g - w * mean_gw));
        i += units;
    }
}

/// Where element `e` of group `group` of image `image` lives in a `[batch, positions,
/// channels]` tensor, and its channel: the group's channels are consecutive at each position.
#[cube]
fn group_element(
    e: usize,
    image: usize,
    group: usize,
    per_group: usize,
    channels: usize,
    positions: usize,
) -> (usize, usize) {
    let position = e / per_group;
    let channel = group * per_group + e % per_group;
    (
        image * positions * channels + position * channels + channel,
        channel,
    )
}

/// One cube per (group, image): the group's mean and `rstd`, then
/// `relu((x - mean) * rstd * gamma + beta)`.
#[cube(launch)]
pub(super) fn group_norm_relu<F: Float, P: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<P>,
    beta: &Tensor<P>,
    output: &mut Tensor<F>,
    mean_out: &mut Tensor<P>,
    rstd_out: &mut Tensor<P>,
    positions: u32,
    channels: u32,
    per_group: u32,
    eps: f32,
    #[comptime] units: usize,
    #[define(F, P)] _dtypes: [ElemType; 2],
) {
    let (group, image) = (CUBE_POS_X as usize, CUBE_POS_Y as usize);
    let (hw, c, cpg) = (positions as usize, channels as usize, per_group as usize);
    let n = hw * cpg;
    let mut scratch = Shared::<[f32]>::new_slice(units);

    // Sums shifted by the group's first value: a constant group centres to exact zeros.
    let (first, _) = group_element(0, image, group, cpg, c, hw);
    let shift = f32::cast_from(x[first]);
    let mut sum = f32::new(0.0);
    let mut e = UNIT_POS as usize;
    while e < n {
        let (at, _) = group_element(e, image, group, cpg, c, hw);
        sum += f32::cast_from(x[at]) - shift;
        e += units;
    }
    let count = f32::cast_from(n as u32);
    let mean = shift + cube_sum(&mut scratch, sum) / count;

    let mut squares = f32::new(0.0);
    let mut e = UNIT_POS as usize;
    while e < n {
        let (at, _) = group_element(e, image, group, cpg, c, hw);
        let d = f32::cast_from(x[at]) - mean;
        squares += d * d;
        e += units;
    }
    let var = cube_sum(&mut scratch, squares) / count;
    let rstd = f32::new(1.0) / f32::sqrt(var + eps);

    let mut e = UNIT_POS as usize;
    while e < n {
        let (at, channel) = group_element(e, image, group, cpg, c, hw);
        let z = (f32::cast_from(x[at]) - mean) * rstd * f32::cast_from(gamma[channel])
            + f32::cast_from(beta[channel]);
        output[at] = F::cast_from(select(z < f32::new(0.0), f32::new(0.0), z));
        e += units;
    }
    if UNIT_POS == 0 {
        let stat = image * (c / cpg) + group;
        mean_out[stat] = P::cast_from(mean);
        rstd_out[stat] = P::cast_from(rstd);
    }
}

/// The gradient through the ReLU, `x_hat` and `z`'s channel of element `at`.
#[cube]
fn relu_grad<F: Float, P: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<P>,
    beta: &Tensor<P>,
    output_grad: &Tensor<F>,
    at: usize,
    channel: usize,
    mean: f32,
    rstd: f32,
) -> (f32, f32) {
    let x_hat = (f32::cast_from(x[at]) - mean) * rstd;
    let z = x_hat * f32::cast_from(gamma[channel]) + f32::cast_from(beta[channel]);
    let dy = f32::cast_from(output_grad[at]);
    (select(z <= f32::new(0.0), f32::new(0.0), dy), x_hat)
}

/// One cube per (group, image): the input's gradient,
/// `dx = rstd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))`, `dx_hat = dz * gamma`.
#[cube(launch)]
pub(super) fn group_norm_relu_backward_x<F: Float, P: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<P>,
    beta: &Tensor<P>,
    mean_in: &Tensor<P>,
    rstd_in: &Tensor<P>,
    output_grad: &Tensor<F>,
    grad: &mut Tensor<F>,
    positions: u32,
    channels: u32,
    per_group: u32,
    #[comptime] units: usize,
    #[define(F, P)] _dtypes: [ElemType; 2],
) {
    let (group, image) = (CUBE_POS_X as usize, CUBE_POS_Y as usize);
    let (hw, c, cpg) = (positions as usize, channels as usize, per_group as usize);
    let n = hw * cpg;
    let stat = image * (c / cpg) + group;
    let (mean, rstd) = (f32::cast_from(mean_in[stat]), f32::cast_from(rstd_in[stat]));
    let mut scratch = Shared::<[f32]>::new_slice(units);

    let mut sum_d = f32::new(0.0);
    let mut sum_dx = f32::new(0.0);
    let mut e = UNIT_POS as usize;
    while e < n {
        let (at, channel) = group_element(e, image, group, cpg, c, hw);
        let (dz, x_hat) = relu_grad::<F, P>(x, gamma, beta, output_grad, at, channel, mean, rstd);
        let d = dz * f32::cast_from(gamma[channel]);
        sum_d += d;
        sum_dx += d * x_hat;
        e += units;
    }
    let count = f32::cast_from(n as u32);
    let mean_d = cube_sum(&mut scratch, sum_d) / count;
    let mean_dx = cube_sum(&mut scratch, sum_dx) / count;

    let mut e = UNIT_POS as usize;
    while e < n {
        let (at, channel) = group_element(e, image, group, cpg, c, hw);
        let (dz, x_hat) = relu_grad::<F, P>(x, gamma, beta, output_grad, at, channel, mean, rstd);
        let d = dz * f32::cast_from(gamma[channel]);
        grad[at] = F::cast_from(rstd * (d - mean_d - x_hat * mean_dx));
        e += units;
    }
}

/// One unit per (image, channel): that image's share of the gradients of `gamma`
/// (`sum dz * x_hat`) and `beta` (`sum dz`) over its positions, `[batch, channels]` each.
#[cube(launch)]
pub(super) fn group_norm_relu_backward_affine<F: Float, P: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<P>,
    beta: &Tensor<P>,
    mean_in: &Tensor<P>,
    rstd_in: &Tensor<P>,
    output_grad: &Tensor<F>,
    grad_gamma: &mut Tensor<P>,
    grad_beta: &mut Tensor<P>,
    batch: u32,
    positions: u32,
    channels: u32,
    per_group: u32,
    #[define(F, P)] _dtypes: [ElemType; 2],
) {
    let (hw, c) = (positions as usize, channels as usize);
    let slot = ABSOLUTE_POS;
    if slot >= batch as usize * c {
        terminate!();
    }
    let (image, channel) = (slot / c, slot % c);
    let stat = image * (c / per_group as usize) + channel / per_group as usize;
    let (mean, rstd) = (f32::cast_from(mean_in[stat]), f32::cast_from(rstd_in[stat]));
    let mut sum_g = f32::new(0.0);
    let mut sum_b = f32::new(0.0);
    for position in 0..hw {
        let at = (image * hw + position) * c + channel;
        let (dz, x_hat) = relu_grad::<F, P>(x, gamma, beta, output_grad, at, channel, mean, rstd);
        sum_g += dz * x_hat;
        sum_b += dz;
    }
    grad_gamma[slot] = P::cast_from(sum_g);
    grad_beta[slot] = P::cast_from(sum_b);
}
