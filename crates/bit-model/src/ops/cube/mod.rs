//! [`BitOps`] on the CubeCL backends (`wgpu`, `vulkan`, `cuda`): weight standardization and
//! GroupNorm + ReLU as kernels of our own (`kernels.rs`), the convolutions (`conv.rs`: Burn's
//! kernels, the algorithm chosen per device) and the pool Burn's.
//!
//! The standardized kernel is computed once per weight version (`cache.rs`) and shared by the
//! forward and both gradients of a training step, as on the CPU.

mod cache;

pub(super) use cache::clear as clear_kernel_cache;
mod conv;
mod kernels;

use burn::backend::Cube;
use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::ir::{ElemType, FloatKind};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::check;
use super::composed::cast_like;
use super::{BitOps, GroupNormOptions, GroupNormReluGrads, GroupNormReluOutput, StdConvOptions};
use cache::Standardized;

impl BitOps for Cube {
    fn std_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        check::conv("std_conv2d", &x.shape(), &weight.shape(), &options);
        let w_hat = cast_like::<Cube>(cache::standardized(weight, options.eps).w_hat, &x);
        conv::conv2d(x, w_hat, options)
    }

    fn std_conv2d_add(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        let op = "std_conv2d_add";
        let checked = check::conv(op, &x.shape(), &weight.shape(), &options);
        check::conv_output(op, "the residual", &checked, &residual.shape());
        Self::float_add(Self::std_conv2d(x, weight, options), residual)
    }

    fn std_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        let op = "std_conv2d_x_backward";
        let checked = check::conv(op, &x.shape(), &weight.shape(), &options);
        check::conv_output(op, "the output gradient", &checked, &output_grad.shape());
        let w_hat = cast_like::<Cube>(cache::standardized(weight, options.eps).w_hat, &output_grad);
        conv::conv2d_x_backward(x, w_hat, output_grad, options)
    }

    fn std_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        let op = "std_conv2d_weight_backward";
        let checked = check::conv(op, &x.shape(), &weight.shape(), &options);
        check::conv_output(op, "the output gradient", &checked, &output_grad.shape());
        let shape = weight.shape();
        let Standardized { w_hat, rstd } = cache::standardized(weight, options.eps);
        // In mixed precision the convolution's gradient is half, the closed form f32.
        let grad_hat = conv::conv2d_weight_backward(
            x.clone(),
            cast_like::<Cube>(w_hat.clone(), &x),
            output_grad,
            options,
        );
        let grad_hat = into_contiguous(cast_like::<Cube>(grad_hat, &w_hat));
        let grad = empty_like(&grad_hat, shape.clone());
        let (filters, fan_in) = filters(&shape);
        let units = units(&grad_hat);
        let dtype = elem_type(grad_hat.dtype);
        kernels::standardize_backward::launch(
            &grad_hat.client.clone(),
            CubeCount::Static(filters as u32, 1, 1),
            CubeDim::new_1d(units as u32),
            grad_hat.into_tensor_arg(),
            w_hat.into_tensor_arg(),
            rstd.into_tensor_arg(),
            grad.clone().into_tensor_arg(),
            fan_in as u32,
            units,
            dtype,
        );
        grad
    }

    fn group_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> GroupNormReluOutput<Self> {
        check::norm(
            "group_norm_relu",
            &x.shape(),
            &gamma.shape(),
            &beta.shape(),
            &options,
        );
        let x = into_contiguous(x);
        let g = Geometry::of(&x, options.groups);
        let output = empty_like(&x, x.shape());
        // Statistics in the parameters' type (f32 in mixed precision).
        let mean = empty_like(&gamma, Shape::new([g.batch, options.groups]));
        let rstd = empty_like(&gamma, Shape::new([g.batch, options.groups]));
        let units = units(&x);
        let dtypes = [elem_type(x.dtype), elem_type(gamma.dtype)];
        kernels::group_norm_relu::launch(
            &x.client.clone(),
            g.cubes(options.groups),
            CubeDim::new_1d(units as u32),
            x.into_tensor_arg(),
            into_contiguous(gamma).into_tensor_arg(),
            into_contiguous(beta).into_tensor_arg(),
            output.clone().into_tensor_arg(),
            mean.clone().into_tensor_arg(),
            rstd.clone().into_tensor_arg(),
            g.positions as u32,
            g.channels as u32,
            g.per_group as u32,
            options.eps as f32,
            units,
            dtypes,
        );
        GroupNormReluOutput { output, mean, rstd }
    }

    fn group_norm_relu_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> GroupNormReluGrads<Self> {
        let op = "group_norm_relu_backward";
        check::norm(op, &x.shape(), &gamma.shape(), &beta.shape(), &options);
        let stats = (&*mean.shape(), &*rstd.shape());
        check::norm_backward(op, &x.shape(), stats, &output_grad.shape(), &options);
        let [x, gamma, beta, mean, rstd, output_grad] =
            [x, gamma, beta, mean, rstd, output_grad].map(into_contiguous);
        let g = Geometry::of(&x, options.groups);
        let client = x.client.clone();
        let dtypes = [elem_type(x.dtype), elem_type(gamma.dtype)];
        let units = units(&x);
        let grad_x = empty_like(&x, x.shape());
        kernels::group_norm_relu_backward_x::launch(
            &client,
            g.cubes(options.groups),
            CubeDim::new_1d(units as u32),
            x.clone().into_tensor_arg(),
            gamma.clone().into_tensor_arg(),
            beta.clone().into_tensor_arg(),
            mean.clone().into_tensor_arg(),
            rstd.clone().into_tensor_arg(),
            output_grad.clone().into_tensor_arg(),
            grad_x.clone().into_tensor_arg(),
            g.positions as u32,
            g.channels as u32,
            g.per_group as u32,
            units,
            dtypes,
        );
        // Per image and channel, then summed over the batch by Burn's reduction.
        let slots = g.batch * g.channels;
        let per_image = Shape::new([g.batch, g.channels]);
        let (grad_gamma, grad_beta) = (
            empty_like(&gamma, per_image.clone()),
            empty_like(&gamma, per_image),
        );
        let cube_dim = CubeDim::new_1d(units as u32);
        kernels::group_norm_relu_backward_affine::launch(
            &client,
            CubeCount::Static(slots.div_ceil(units) as u32, 1, 1),
            cube_dim,
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            mean.into_tensor_arg(),
            rstd.into_tensor_arg(),
            output_grad.into_tensor_arg(),
            grad_gamma.clone().into_tensor_arg(),
            grad_beta.clone().into_tensor_arg(),
            g.batch as u32,
            g.positions as u32,
            g.channels as u32,
            g.per_group as u32,
            dtypes,
        );
        let over_batch = |t: CubeTensor| {
            Self::float_reshape(Self::float_sum_dim(t, 0), Shape::new([g.channels]))
        };
        GroupNormReluGrads {
            x: grad_x,
            gamma: over_batch(grad_gamma),
            beta: over_batch(grad_beta),
        }
    }
}

/// An NHWC activation as the GroupNorm kernels see it.
struct Geometry {
    batch: usize,
    positions: usize,
    channels: usize,
    per_group: usize,
}

impl Geometry {
    fn of(x: &CubeTensor, groups: usize) -> Self {
        let shape = x.shape();
        let [batch, h, w, channels] = [shape[0], shape[1], shape[2], shape[3]];
        // Checked by `check::norm` before any kernel is launched.
        Self {
            batch,
            positions: h * w,
            channels,
            per_group: channels / groups,
        }
    }

    /// One cube per (group, image).
    fn cubes(&self, groups: usize) -> CubeCount {
        CubeCount::Static(groups as u32, self.batch as u32, 1)
    }
}

/// `[out, in, kh, kw]` as (filters, fan-in).
fn filters(shape: &Shape) -> (usize, usize) {
    (shape[0], shape[1] * shape[2] * shape[3])
}

/// Units per cube for the tree sums: a power of two, at most 256 and what the device allows.
fn units(t: &CubeTensor) -> usize {
    let max = t
        .client
        .properties()
        .hardware
        .max_units_per_cube
        .clamp(1, 256);
    1 << max.ilog2()
}

/// An uninitialized tensor on `like`'s device, of its float type.
fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape, like.dtype)
}

/// The kernels' element type for a float tensor's dtype.
fn elem_type(dtype: DType) -> ElemType {
    ElemType::Float(match dtype {
        DType::F64 => FloatKind::F64,
        DType::F32 => FloatKind::F32,
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        other => panic!("BiT's GPU kernels take float tensors, not {other:?}"),
    })
}
