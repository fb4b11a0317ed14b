//! The default bodies of [`BitOps`](super::BitOps): each operation and its closed-form
//! backward written with a backend's ordinary primitives, for the backends without kernels of
//! their own. Burn's convolution is NCHW, so activations are permuted at the boundaries (a
//! metadata change on every backend).

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{IntDType, Shape, Slice};

use super::{
    GroupNormOptions, GroupNormReluGrads, GroupNormReluOutput, PoolOptions, StdConvOptions,
};

fn dims4<B: Backend>(t: &FloatTensor<B>) -> [usize; 4] {
    let shape = t.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

pub(super) fn to_nchw<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    B::float_permute(t, &[0, 3, 1, 2])
}

pub(super) fn to_nhwc<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    B::float_permute(t, &[0, 2, 3, 1])
}

/// `t` in `like`'s float type (itself when they agree): in mixed precision the kernel and the
/// GroupNorm parameters are `f32` and the activations half.
pub(super) fn cast_like<B: Backend>(t: FloatTensor<B>, like: &FloatTensor<B>) -> FloatTensor<B> {
    let dtype = like.dtype();
    match t.dtype() == dtype {
        true => t,
        false => B::float_cast(t, dtype.into()),
    }
}

pub(super) fn conv_options(options: &StdConvOptions) -> ConvOptions<2> {
    let (s, p) = (options.stride, options.padding);
    ConvOptions::new([s, s], [p, p], [1, 1], 1)
}

/// The standardized kernel and `1 / sqrt(var + eps)` per filter (`[out, 1]`).
fn standardize<B: Backend>(weight: FloatTensor<B>, eps: f64) -> (FloatTensor<B>, FloatTensor<B>) {
    let [o, i, kh, kw] = dims4::<B>(&weight);
    let flat = B::float_reshape(weight, Shape::new([o, i * kh * kw]));
    let mean = B::float_mean_dim(flat.clone(), 1);
    let centered = B::float_sub(flat, mean);
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), 1);
    let std = B::float_sqrt(B::float_add_scalar(var, eps.into()));
    let w_hat = B::float_div(centered, std.clone());
    (
        B::float_reshape(w_hat, Shape::new([o, i, kh, kw])),
        B::float_recip(std),
    )
}

/// Burn's convolution of NHWC `x` with an already standardized kernel `w_hat`, NHWC out.
pub(super) fn conv2d_nhwc<B: Backend>(
    x: FloatTensor<B>,
    w_hat: FloatTensor<B>,
    options: StdConvOptions,
) -> FloatTensor<B> {
    to_nhwc::<B>(B::conv2d(
        to_nchw::<B>(x),
        w_hat,
        None,
        conv_options(&options),
    ))
}

/// Gradient of [`conv2d_nhwc`] with respect to `x`.
pub(super) fn conv2d_nhwc_x_backward<B: Backend>(
    x: FloatTensor<B>,
    w_hat: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: StdConvOptions,
) -> FloatTensor<B> {
    let (x, grad) = (to_nchw::<B>(x), to_nchw::<B>(output_grad));
    to_nhwc::<B>(B::conv2d_x_backward(x, w_hat, grad, conv_options(&options)))
}

/// Gradient of [`conv2d_nhwc`] with respect to the standardized kernel `w_hat`.
pub(super) fn conv2d_nhwc_weight_backward<B: Backend>(
    x: FloatTensor<B>,
    w_hat: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: StdConvOptions,
) -> FloatTensor<B> {
    let (x, grad) = (to_nchw::<B>(x), to_nchw::<B>(output_grad));
    B::conv2d_weight_backward(x, w_hat, grad, conv_options(&options))
}

pub(super) fn std_conv2d<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    options: StdConvOptions,
) -> FloatTensor<B> {
    let (w_hat, _) = standardize::<B>(weight, options.eps);
    let w_hat = cast_like::<B>(w_hat, &x);
    conv2d_nhwc::<B>(x, w_hat, options)
}

pub(super) fn std_conv2d_add<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    residual: FloatTensor<B>,
    options: StdConvOptions,
) -> FloatTensor<B> {
    B::float_add(std_conv2d::<B>(x, weight, options), residual)
}

pub(super) fn std_conv2d_x_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: StdConvOptions,
) -> FloatTensor<B> {
    let (w_hat, _) = standardize::<B>(weight, options.eps);
    let w_hat = cast_like::<B>(w_hat, &output_grad);
    conv2d_nhwc_x_backward::<B>(x, w_hat, output_grad, options)
}

/// `dw = (g - mean(g) - w_hat * mean(g * w_hat)) / sqrt(var + eps)` per filter, where `g` is
/// the gradient of the standardized kernel.
pub(super) fn std_conv2d_weight_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: StdConvOptions,
) -> FloatTensor<B> {
    let shape = weight.shape();
    let [o, i, kh, kw] = dims4::<B>(&weight);
    let (w_hat, inv_std) = standardize::<B>(weight, options.eps);
    let w_hat_x = cast_like::<B>(w_hat.clone(), &x);
    let grad_hat = conv2d_nhwc_weight_backward::<B>(x, w_hat_x, output_grad, options);
    let grad_hat = cast_like::<B>(grad_hat, &w_hat);
    let flat = Shape::new([o, i * kh * kw]);
    let g = B::float_reshape(grad_hat, flat.clone());
    let w_hat = B::float_reshape(w_hat, flat);
    let g_mean = B::float_mean_dim(g.clone(), 1);
    let gw_mean = B::float_mean_dim(B::float_mul(g.clone(), w_hat.clone()), 1);
    let centered = B::float_sub(B::float_sub(g, g_mean), B::float_mul(w_hat, gw_mean));
    B::float_reshape(B::float_mul(centered, inv_std), shape)
}

/// `x` (NHWC) as NCHW, zero-padded on height and width.
fn zero_padded<B: Backend>(x: FloatTensor<B>, p: usize) -> FloatTensor<B> {
    B::float_pad(
        to_nchw::<B>(x),
        &[(0, 0), (0, 0), (p, p), (p, p)],
        PadMode::Constant(0.0),
    )
}

pub(super) fn zero_pad_max_pool2d<B: Backend>(
    x: FloatTensor<B>,
    options: PoolOptions,
) -> FloatTensor<B> {
    let padded = zero_padded::<B>(x, options.padding);
    let (k, s) = ([options.kernel; 2], [options.stride; 2]);
    to_nhwc::<B>(B::max_pool2d(padded, k, s, [0, 0], [1, 1], false))
}

pub(super) fn zero_pad_max_pool2d_backward<B: Backend>(
    x: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: PoolOptions,
) -> FloatTensor<B> {
    let [n, h, w, c] = dims4::<B>(&x);
    let p = options.padding;
    let padded = zero_padded::<B>(x, p);
    let (k, s) = ([options.kernel; 2], [options.stride; 2]);
    // 32-bit indices: every backend has them (64-bit ones are garbage on some wgpu adapters),
    // and they address any image plane up to 2^31 values.
    let pooled =
        B::max_pool2d_with_indices(padded.clone(), k, s, [0, 0], [1, 1], false, IntDType::I32);
    let grad = B::max_pool2d_with_indices_backward(
        padded,
        k,
        s,
        [0, 0],
        [1, 1],
        false,
        to_nchw::<B>(output_grad),
        pooled.indices,
    );
    let inside = [
        Slice::from(0..n),
        Slice::from(0..c),
        Slice::from(p..p + h),
        Slice::from(p..p + w),
    ];
    to_nhwc::<B>(B::float_slice(grad.x_grad, &inside))
}

/// `x` as `[n, groups, rest]` with its group statistics `[n, groups, 1]`.
struct Grouped<B: Backend> {
    x: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
}

fn grouped<B: Backend>(x: FloatTensor<B>, groups: usize) -> (FloatTensor<B>, [usize; 4]) {
    let [n, c, h, w] = dims4::<B>(&x);
    (
        B::float_reshape(x, Shape::new([n, groups, (c / groups) * h * w])),
        [n, c, h, w],
    )
}

fn channel_vector<B: Backend>(t: FloatTensor<B>, c: usize) -> FloatTensor<B> {
    B::float_reshape(t, Shape::new([1, c, 1, 1]))
}

/// `x_hat` as `[n, c, h, w]` and `z = x_hat * gamma + beta`.
fn normalized<B: Backend>(
    g: &Grouped<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    dims: [usize; 4],
) -> (FloatTensor<B>, FloatTensor<B>) {
    let centered = B::float_sub(g.x.clone(), g.mean.clone());
    let x_hat = B::float_reshape(B::float_mul(centered, g.rstd.clone()), Shape::new(dims));
    let z = B::float_add(
        B::float_mul(x_hat.clone(), channel_vector::<B>(gamma, dims[1])),
        channel_vector::<B>(beta, dims[1]),
    );
    (x_hat, z)
}

pub(super) fn group_norm_relu<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    options: GroupNormOptions,
) -> GroupNormReluOutput<B> {
    let (gamma, beta) = (cast_like::<B>(gamma, &x), cast_like::<B>(beta, &x));
    let (xg, dims) = grouped::<B>(to_nchw::<B>(x), options.groups);
    let mean = B::float_mean_dim(xg.clone(), 2);
    let centered = B::float_sub(xg.clone(), mean.clone());
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered), 2);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, options.eps.into())));
    let g = Grouped { x: xg, mean, rstd };
    let (_, z) = normalized::<B>(&g, gamma, beta, dims);
    let stats = Shape::new([dims[0], options.groups]);
    GroupNormReluOutput {
        output: to_nhwc::<B>(B::relu(z)),
        mean: B::float_reshape(g.mean, stats.clone()),
        rstd: B::float_reshape(g.rstd, stats),
    }
}

pub(super) fn group_norm_relu_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
    output_grad: FloatTensor<B>,
    options: GroupNormOptions,
) -> GroupNormReluGrads<B> {
    // Computed in the activations' type; the parameters' gradients return in theirs.
    let param = gamma.clone();
    let [gamma, beta, mean, rstd] = [gamma, beta, mean, rstd].map(|t| cast_like::<B>(t, &x));
    let (xg, dims) = grouped::<B>(to_nchw::<B>(x), options.groups);
    let [n, c, h, w] = dims;
    let output_grad = to_nchw::<B>(output_grad);
    let stats = Shape::new([n, options.groups, 1]);
    let g = Grouped {
        x: xg,
        mean: B::float_reshape(mean, stats.clone()),
        rstd: B::float_reshape(rstd, stats),
    };
    let (x_hat, z) = normalized::<B>(&g, gamma.clone(), beta, dims);
    let dz = B::relu_backward(B::relu(z), output_grad);
    let per_channel = |t: FloatTensor<B>| {
        let t = B::float_sum_dim(B::float_sum_dim(B::float_sum_dim(t, 3), 2), 0);
        B::float_reshape(t, Shape::new([c]))
    };
    let dbeta = per_channel(dz.clone());
    let dgamma = per_channel(B::float_mul(dz.clone(), x_hat.clone()));
    let group_shape = Shape::new([n, options.groups, (c / options.groups) * h * w]);
    let dx_hat = B::float_reshape(
        B::float_mul(dz, channel_vector::<B>(gamma, c)),
        group_shape.clone(),
    );
    let x_hat = B::float_reshape(x_hat, group_shape);
    let m1 = B::float_mean_dim(dx_hat.clone(), 2);
    let m2 = B::float_mean_dim(B::float_mul(dx_hat.clone(), x_hat.clone()), 2);
    let inner = B::float_sub(B::float_sub(dx_hat, m1), B::float_mul(x_hat, m2));
    GroupNormReluGrads {
        x: to_nhwc::<B>(B::float_reshape(
            B::float_mul(inner, g.rstd),
            Shape::new(dims),
        )),
        gamma: cast_like::<B>(dgamma, &param),
        beta: cast_like::<B>(dbeta, &param),
    }
}
