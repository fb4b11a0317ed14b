//! [`BitOps`] for Burn's CPU backend, `Flex`: channels-last GEMM convolutions, a cached
//! standardized kernel, and a two-pass GroupNorm + ReLU. Inputs in any memory layout are read
//! through a contiguous copy only when they are not contiguous already (the input images, a
//! gradient coming out of a permutation); outputs are contiguous. Other dtypes than f32 take
//! the composed path.

mod conv;
mod gemm;
mod int8;
mod kernel_cache;
mod norm;
mod pool;
mod standardize;

use std::borrow::Cow;

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;

use super::{
    BitOps, GroupNormOptions, GroupNormReluGrads, GroupNormReluOutput, PoolOptions, StdConvOptions,
};
use super::{check, composed};
use conv::ConvGeometry;
use norm::NormGeometry;
use pool::PoolGeometry;
use standardize::KernelLayout;

pub(crate) use int8::{Int8Kernel, has_vnni};
pub(super) use kernel_cache::clear as clear_kernel_cache;

/// Output side of a square window of `kernel` sliding by `stride` over `size` values with
/// `padding` on both ends (convolutions and the root pool alike).
fn out_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding - kernel) / stride + 1
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let shape = t.shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

fn is_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// The elements of `t` in its logical (row-major) order, without a copy when it is contiguous.
fn contiguous(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(data) => Cow::Borrowed(data),
        None => Cow::Owned(
            t.to_contiguous()
                .as_slice::<f32>()
                .expect("a contiguous copy")
                .to_vec(),
        ),
    }
}

fn tensor(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.into()))
}

/// The convolution's geometry, after [`check::conv`] (and the shape of `output`, the
/// gradient or residual that must match its output, when given).
fn conv_geometry(
    op: &str,
    x: &FlexTensor,
    weight: &FlexTensor,
    output: Option<(&str, &FlexTensor)>,
    options: &StdConvOptions,
) -> ConvGeometry {
    checked_geometry(op, &x.shape(), &weight.shape(), output, options)
}

/// The geometry of a convolution of an input and a kernel of these shapes, after
/// [`check::conv`] (and the shape of `output`, which must match its output, when given).
fn checked_geometry(
    op: &str,
    x: &[usize],
    kernel: &[usize],
    output: Option<(&str, &FlexTensor)>,
    options: &StdConvOptions,
) -> ConvGeometry {
    let checked = check::conv(op, x, kernel, options);
    if let Some((what, t)) = output {
        check::conv_output(op, what, &checked, &t.shape());
    }
    let [batch, height, width, c_in] = checked.input;
    ConvGeometry {
        batch,
        height,
        width,
        c_in,
        c_out: checked.kernel[0],
        kernel: checked.kernel[2],
        stride: options.stride,
        padding: options.padding,
    }
}

/// The pool's geometry, after [`check::pool`] (and the output gradient's shape, when given).
fn pool_geometry(
    op: &str,
    x: &FlexTensor,
    output_grad: Option<&FlexTensor>,
    options: &PoolOptions,
) -> PoolGeometry {
    let out = check::pool(op, &x.shape(), options);
    if let Some(grad) = output_grad {
        assert_eq!(
            *grad.shape(),
            out,
            "{op}: the output gradient must have the output's shape"
        );
    }
    let [batch, height, width, channels] = dims4(x);
    PoolGeometry {
        batch,
        height,
        width,
        channels,
        kernel: options.kernel,
        stride: options.stride,
        padding: options.padding,
    }
}

/// The GroupNorm's geometry, after [`check::norm`].
fn norm_geometry(
    op: &str,
    [x, gamma, beta]: [&FlexTensor; 3],
    options: &GroupNormOptions,
) -> NormGeometry {
    check::norm(op, &x.shape(), &gamma.shape(), &beta.shape(), options);
    let [batch, h, w, channels] = dims4(x);
    NormGeometry {
        batch,
        positions: h * w,
        channels,
        groups: options.groups,
    }
}

/// `conv(x, kernel) (+ residual)` computed in int8 (see `int8`): `x` NHWC, the residual (if
/// any) of the output's shape.
pub(super) fn int8_conv2d(
    x: &FlexTensor,
    kernel: &Int8Kernel,
    residual: Option<FlexTensor>,
    options: &StdConvOptions,
) -> FlexTensor {
    let output = residual.as_ref().map(|r| ("the residual", r));
    let g = checked_geometry("int8_conv2d", &x.shape(), &kernel.shape(), output, options);
    let x = contiguous(x);
    conv_output(&g, residual, |out, accumulate| {
        kernel.forward(&g, &x, out, accumulate)
    })
}

/// The output of a convolution of geometry `g`, which `fill(out, accumulate)` writes: into a
/// new tensor, or added to `residual` (in the residual's own storage when nothing else holds
/// it, the bottleneck's last convolution plus its shortcut in one pass).
fn conv_output(
    g: &ConvGeometry,
    residual: Option<FlexTensor>,
    fill: impl FnOnce(&mut [f32], bool),
) -> FlexTensor {
    let len = g.positions() * g.c_out;
    let out_dims = [g.batch, g.out_height(), g.out_width(), g.c_out];
    match residual {
        Some(mut residual)
            if residual.layout().contiguous_offsets() == Some((0, len))
                && residual.is_unique()
                && residual.bytes().len() == len * size_of::<f32>() =>
        {
            fill(residual.storage_mut::<f32>(), true);
            residual
        }
        Some(residual) => {
            let mut out = contiguous(&residual).into_owned();
            fill(&mut out, true);
            tensor(out, out_dims)
        }
        None => {
            let mut out = vec![0.0f32; len];
            fill(&mut out, false);
            tensor(out, out_dims)
        }
    }
}

impl BitOps for Flex {
    fn std_conv2d(x: FlexTensor, weight: FlexTensor, options: StdConvOptions) -> FlexTensor {
        let g = conv_geometry("std_conv2d", &x, &weight, None, &options);
        if !is_f32(&[&x, &weight]) {
            return composed::std_conv2d::<Flex>(x, weight, options);
        }
        let kernel = kernel_cache::standardized(&weight, options.eps, KernelLayout::Hwio);
        let x = contiguous(&x);
        conv_output(&g, None, |out, accumulate| {
            conv::forward(&g, &x, &kernel, out, accumulate)
        })
    }

    fn std_conv2d_add(
        x: FlexTensor,
        weight: FlexTensor,
        residual: FlexTensor,
        options: StdConvOptions,
    ) -> FlexTensor {
        let op = "std_conv2d_add";
        let g = conv_geometry(op, &x, &weight, Some(("the residual", &residual)), &options);
        if !is_f32(&[&x, &weight, &residual]) {
            return composed::std_conv2d_add::<Flex>(x, weight, residual, options);
        }
        let kernel = kernel_cache::standardized(&weight, options.eps, KernelLayout::Hwio);
        let x = contiguous(&x);
        conv_output(&g, Some(residual), |out, accumulate| {
            conv::forward(&g, &x, &kernel, out, accumulate)
        })
    }

    fn std_conv2d_x_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: StdConvOptions,
    ) -> FlexTensor {
        let op = "std_conv2d_x_backward";
        let grad = Some(("the output gradient", &output_grad));
        let g = conv_geometry(op, &x, &weight, grad, &options);
        if !is_f32(&[&x, &weight, &output_grad]) {
            return composed::std_conv2d_x_backward::<Flex>(x, weight, output_grad, options);
        }
        let kernel = kernel_cache::standardized(&weight, options.eps, KernelLayout::Ohwi);
        let mut dx = vec![0.0f32; g.batch * g.height * g.width * g.c_in];
        conv::backward_input(&g, &kernel, &contiguous(&output_grad), &mut dx);
        tensor(dx, dims4(&x))
    }

    fn std_conv2d_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        output_grad: FlexTensor,
        options: StdConvOptions,
    ) -> FlexTensor {
        let op = "std_conv2d_weight_backward";
        let grad = Some(("the output gradient", &output_grad));
        let g = conv_geometry(op, &x, &weight, grad, &options);
        if !is_f32(&[&x, &weight, &output_grad]) {
            return composed::std_conv2d_weight_backward::<Flex>(x, weight, output_grad, options);
        }
        let (grad_hat, layout) =
            conv::backward_weight(&g, &contiguous(&x), &contiguous(&output_grad));
        let shape = dims4(&weight);
        let raw = contiguous(&weight);
        let moments = kernel_cache::moments(&weight, options.eps);
        let dw = standardize::standardize_backward(&raw, &moments, &grad_hat, shape, layout);
        tensor(dw, shape)
    }

    fn zero_pad_max_pool2d(x: FlexTensor, options: PoolOptions) -> FlexTensor {
        let g = pool_geometry("zero_pad_max_pool2d", &x, None, &options);
        if !is_f32(&[&x]) {
            return composed::zero_pad_max_pool2d::<Flex>(x, options);
        }
        let dims = [g.batch, g.out_height(), g.out_width(), g.channels];
        let mut y = vec![0.0f32; dims.iter().product()];
        pool::forward(&g, &contiguous(&x), &mut y);
        tensor(y, dims)
    }

    fn zero_pad_max_pool2d_backward(
        x: FlexTensor,
        output_grad: FlexTensor,
        options: PoolOptions,
    ) -> FlexTensor {
        let op = "zero_pad_max_pool2d_backward";
        let g = pool_geometry(op, &x, Some(&output_grad), &options);
        if !is_f32(&[&x, &output_grad]) {
            return composed::zero_pad_max_pool2d_backward::<Flex>(x, output_grad, options);
        }
        let mut dx = vec![0.0f32; g.batch * g.height * g.width * g.channels];
        pool::backward(&g, &contiguous(&x), &contiguous(&output_grad), &mut dx);
        tensor(dx, dims4(&x))
    }

    fn group_norm_relu(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        options: GroupNormOptions,
    ) -> GroupNormReluOutput<Flex> {
        let g = norm_geometry("group_norm_relu", [&x, &gamma, &beta], &options);
        if !is_f32(&[&x, &gamma, &beta]) {
            return composed::group_norm_relu::<Flex>(x, gamma, beta, options);
        }
        let mut y = vec![0.0f32; g.batch * g.positions * g.channels];
        let (mean, rstd) = norm::forward(
            &g,
            &contiguous(&x),
            &contiguous(&gamma),
            &contiguous(&beta),
            options.eps,
            &mut y,
        );
        GroupNormReluOutput {
            output: tensor(y, dims4(&x)),
            mean: tensor(mean, [g.batch, g.groups]),
            rstd: tensor(rstd, [g.batch, g.groups]),
        }
    }

    fn group_norm_relu_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        rstd: FlexTensor,
        output_grad: FlexTensor,
        options: GroupNormOptions,
    ) -> GroupNormReluGrads<Flex> {
        let op = "group_norm_relu_backward";
        let g = norm_geometry(op, [&x, &gamma, &beta], &options);
        let stats = (&*mean.shape(), &*rstd.shape());
        check::norm_backward(op, &x.shape(), stats, &output_grad.shape(), &options);
        if !is_f32(&[&x, &gamma, &beta, &mean, &rstd, &output_grad]) {
            return composed::group_norm_relu_backward::<Flex>(
                x,
                gamma,
                beta,
                mean,
                rstd,
                output_grad,
                options,
            );
        }
        let mut dx = vec![0.0f32; g.batch * g.positions * g.channels];
        let (dgamma, dbeta) = norm::backward(
            &g,
            &contiguous(&x),
            (&contiguous(&gamma), &contiguous(&beta)),
            (&contiguous(&mean), &contiguous(&rstd)),
            &contiguous(&output_grad),
            &mut dx,
        );
        GroupNormReluGrads {
            x: tensor(dx, dims4(&x)),
            gamma: tensor(dgamma, [g.channels]),
            beta: tensor(dbeta, [g.channels]),
        }
    }
}

/// The kernels against the trait's composed default bodies (what GPU backends run), on the
/// same backend: both the forwards and the closed-form backwards of the composed path are
/// checked here, since no GPU runs in the tests.
#[cfg(test)]
mod tests {
    use super::*;

    fn random(seed: u64, shape: [usize; 4], offset: f32) -> FlexTensor {
        let n = shape.iter().product();
        let mut s = seed | 1;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0 + offset
            })
            .collect();
        tensor(data, shape)
    }

    fn vector(t: &FlexTensor) -> Vec<f32> {
        contiguous(t).into_owned()
    }

    fn assert_rel(what: &str, a: &FlexTensor, b: &FlexTensor) {
        assert_eq!(a.shape(), b.shape(), "{what}: shapes");
        let (a, b) = (vector(a), vector(b));
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let err = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            err <= 1e-4 * scale,
            "{what}: relative error {:e}",
            err / scale
        );
    }

    /// The panic message of `f`, which must panic.
    fn panic_of(f: impl FnOnce()) -> String {
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .expect_err("a wrong shape must panic");
        message_of(&*payload)
    }

    fn message_of(payload: &(dyn std::any::Any + Send)) -> String {
        match (
            payload.downcast_ref::<String>(),
            payload.downcast_ref::<&str>(),
        ) {
            (Some(s), _) => s.clone(),
            (_, Some(s)) => s.to_string(),
            _ => String::new(),
        }
    }

    /// Every public op checks what it is handed before a kernel sees it: a 1x1 stride-1
    /// convolution used to pass a short output gradient to the GEMM as `positions x c_out`,
    /// pool and norm backwards truncated through `zip`, a zero stride divided by zero.
    #[test]
    fn wrong_shapes_and_geometry_panic_before_any_kernel_runs() {
        let options = StdConvOptions {
            stride: 1,
            padding: 0,
            eps: 1e-10,
        };
        let x = random(1, [2, 4, 4, 8], 0.0);
        let weight = random(2, [16, 8, 1, 1], 0.2);
        let short = random(3, [2, 4, 4, 4], 0.0);
        let messages = [
            panic_of(|| {
                drop(Flex::std_conv2d_x_backward(
                    x.clone(),
                    weight.clone(),
                    short.clone(),
                    options,
                ))
            }),
            panic_of(|| {
                drop(Flex::std_conv2d_weight_backward(
                    x.clone(),
                    weight.clone(),
                    short.clone(),
                    options,
                ))
            }),
            panic_of(|| {
                drop(Flex::std_conv2d_add(
                    x.clone(),
                    weight.clone(),
                    short.clone(),
                    options,
                ))
            }),
            panic_of(|| {
                let zero_stride = StdConvOptions {
                    stride: 0,
                    ..options
                };
                drop(Flex::std_conv2d(x.clone(), weight.clone(), zero_stride))
            }),
            panic_of(|| {
                drop(Flex::std_conv2d(
                    random(4, [2, 0, 4, 8], 0.0),
                    weight.clone(),
                    options,
                ))
            }),
            panic_of(|| {
                let pool = PoolOptions {
                    kernel: 3,
                    stride: 2,
                    padding: 1,
                };
                drop(Flex::zero_pad_max_pool2d_backward(
                    x.clone(),
                    short.clone(),
                    pool,
                ))
            }),
            panic_of(|| {
                let norm = GroupNormOptions {
                    groups: 4,
                    eps: 1e-5,
                };
                let gamma = tensor(vec![1.0; 8], [8]);
                let beta = tensor(vec![0.0; 8], [8]);
                let stats = tensor(vec![0.0; 4], [1, 4]); // one image's, for two
                drop(Flex::group_norm_relu_backward(
                    x.clone(),
                    gamma,
                    beta,
                    stats.clone(),
                    stats,
                    x.clone(),
                    norm,
                ))
            }),
        ];
        let ops = [
            "std_conv2d_x_backward: the output gradient",
            "std_conv2d_weight_backward: the output gradient",
            "std_conv2d_add: the residual",
            "std_conv2d: kernel 1 and stride 0",
            "std_conv2d: the input [2, 0, 4, 8] has an empty dimension",
            "zero_pad_max_pool2d_backward: the output gradient",
            "group_norm_relu_backward: mean",
        ];
        for (message, op) in messages.iter().zip(ops) {
            assert!(message.contains(op), "{message}");
        }
    }

    #[test]
    fn kernels_match_the_composed_default_bodies() {
        for (n, h, w, cin, cout, k, stride, padding) in [
            (2, 9, 7, 5, 6, 3, 2, 1),
            (3, 5, 5, 7, 4, 1, 1, 0),
            (1, 11, 10, 3, 8, 7, 2, 3),
        ] {
            let options = StdConvOptions {
                stride,
                padding,
                eps: 1e-10,
            };
            let x = random(1, [n, h, w, cin], 0.0);
            let weight = random(2, [cout, cin, k, k], 0.2);
            let y = Flex::std_conv2d(x.clone(), weight.clone(), options);
            let reference = composed::std_conv2d::<Flex>(x.clone(), weight.clone(), options);
            assert_rel("std_conv2d", &y, &reference);
            let grad = random(3, dims4(&y), 0.0);
            let residual = random(4, dims4(&y), 0.0);
            assert_rel(
                "std_conv2d_add",
                &Flex::std_conv2d_add(x.clone(), weight.clone(), residual.clone(), options),
                &composed::std_conv2d_add::<Flex>(x.clone(), weight.clone(), residual, options),
            );
            assert_rel(
                "x_backward",
                &Flex::std_conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options),
                &composed::std_conv2d_x_backward::<Flex>(
                    x.clone(),
                    weight.clone(),
                    grad.clone(),
                    options,
                ),
            );
            assert_rel(
                "weight_backward",
                &Flex::std_conv2d_weight_backward(x.clone(), weight.clone(), grad.clone(), options),
                &composed::std_conv2d_weight_backward::<Flex>(x, weight, grad, options),
            );
        }
        let pool = PoolOptions {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let x = random(9, [2, 7, 6, 5], -0.5);
        let y = Flex::zero_pad_max_pool2d(x.clone(), pool);
        assert_rel(
            "pool",
            &y,
            &composed::zero_pad_max_pool2d::<Flex>(x.clone(), pool),
        );
        let grad = random(10, dims4(&y), 0.0);
        assert_rel(
            "pool backward",
            &Flex::zero_pad_max_pool2d_backward(x.clone(), grad.clone(), pool),
            &composed::zero_pad_max_pool2d_backward::<Flex>(x, grad, pool),
        );

        let options = GroupNormOptions {
            groups: 4,
            eps: 1e-5,
        };
        let x = random(5, [3, 5, 4, 12], 1.0);
        let gamma = tensor(vector(&random(6, [1, 1, 1, 12], 1.0)), [12]);
        let beta = tensor(vector(&random(7, [1, 1, 1, 12], 0.0)), [12]);
        let fast = Flex::group_norm_relu(x.clone(), gamma.clone(), beta.clone(), options);
        let slow =
            composed::group_norm_relu::<Flex>(x.clone(), gamma.clone(), beta.clone(), options);
        assert_rel("group_norm_relu", &fast.output, &slow.output);
        assert_rel("mean", &fast.mean, &slow.mean);
        assert_rel("rstd", &fast.rstd, &slow.rstd);
        let grad = random(8, [3, 5, 4, 12], 0.0);
        let fast = Flex::group_norm_relu_backward(
            x.clone(),
            gamma.clone(),
            beta.clone(),
            fast.mean,
            fast.rstd,
            grad.clone(),
            options,
        );
        let slow = composed::group_norm_relu_backward::<Flex>(
            x, gamma, beta, slow.mean, slow.rstd, grad, options,
        );
        assert_rel("dx", &fast.x, &slow.x);
        assert_rel("dgamma", &fast.gamma, &slow.gamma);
        assert_rel("dbeta", &fast.beta, &slow.beta);
    }
}
