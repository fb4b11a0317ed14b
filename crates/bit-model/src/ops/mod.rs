//! BiT's hot operations as a Burn backend extension: the weight-standardized convolution and
//! GroupNorm + ReLU, each with a forward and a closed-form backward.
//!
//! [`BitOps`] is implemented for every backend the model runs on:
//!
//! - **`Flex`** (the CPU): hand-written kernels. With channels-last activations each
//!   convolution and both of its gradients are one GEMM over the whole batch (see `flex::conv`);
//!   the standardized kernel is computed once per weight version and reused by every forward and
//!   backward call until the weights change.
//! - **`Autodiff<B>`**: the backward passes are ours (no intermediate tensors of the
//!   standardization or of GroupNorm are recorded), built from `B`'s own backward primitives.
//! - **`Cube`** (the GPU backends `wgpu`, `vulkan`, `cuda`): CubeCL kernels of our own for
//!   weight standardization (cached per weight version, as on the CPU) and GroupNorm + ReLU,
//!   forward and backward; Burn's own convolutions and pooling (see `cube`).
//! - **other backends** (remote devices): the trait's default bodies, composed of Burn's
//!   ordinary tensor ops (the same computation the model used before these kernels).
//!
//! Activations are **channels-last**, `[batch, height, width, channels]`, as in the original
//! TF/JAX BiT: inside [`ResNetV2`](crate::ResNetV2) every tensor is NHWC, so the Burn ops
//! between these (the shortcut sums, the pooling) see contiguous data. Kernels keep Burn's OIHW
//! layout `[out, in, k, k]`; they are raw, not standardized.
//!
//! Model code calls the functions below ([`std_conv2d`], [`std_conv2d_add`],
//! [`group_norm_relu`]), which route a [`Tensor`] to the backend it lives on. [`reference`] holds the same operations written with
//! Burn's composed ops, for tests and benchmarks.

mod autodiff;
mod check;
mod composed;
#[cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda"))]
mod cube;
mod flex;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, ExtensionType, Flex, backend_extension};
use burn::tensor::{DType, Device, Tensor};

pub(crate) use flex::{Int8Kernel, has_vnni};

/// Stride, padding and standardization epsilon of a [`std_conv2d`]: a square kernel, the same
/// stride and symmetric zero padding on both axes, no bias, no groups (every BiT convolution).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StdConvOptions {
    /// Stride along height and width.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Added to the filter variance inside the square root.
    pub eps: f64,
}

/// Group count and variance epsilon of a [`group_norm_relu`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormOptions {
    /// Number of groups of consecutive channels.
    pub groups: usize,
    /// Added to the group variance inside the square root.
    pub eps: f64,
}

/// Window, stride and zero padding of a [`zero_pad_max_pool2d`]: square, the same on both axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Window size.
    pub kernel: usize,
    /// Stride along height and width.
    pub stride: usize,
    /// Zero padding on every side; the zeros take part in the max.
    pub padding: usize,
}

/// Output of [`BitOps::group_norm_relu`]: the activation and the per-image, per-group
/// statistics `[batch, groups]` its backward needs.
#[derive(ExtensionType)]
pub struct GroupNormReluOutput<B: Backend> {
    /// `relu(group_norm(x))`, the shape of the input.
    pub output: FloatTensor<B>,
    /// Group means, `[batch, groups]`.
    pub mean: FloatTensor<B>,
    /// `1 / sqrt(var + eps)` of each group, `[batch, groups]`.
    pub rstd: FloatTensor<B>,
}

/// Gradients of [`BitOps::group_norm_relu`] with respect to its three inputs.
#[derive(ExtensionType)]
pub struct GroupNormReluGrads<B: Backend> {
    /// Gradient of the input.
    pub x: FloatTensor<B>,
    /// Gradient of the per-channel scale.
    pub gamma: FloatTensor<B>,
    /// Gradient of the per-channel shift.
    pub beta: FloatTensor<B>,
}

/// The operations BiT spends its time in, per backend (see the [module docs](self)).
///
/// Shapes: `x` is `[batch, height, width, channels]` (channels-last), a kernel
/// `[out, in, k, k]` (raw, not standardized), `gamma`/`beta` `[channels]`.
#[backend_extension(
    Flex,
    Autodiff,
    Cube: cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda")),
    Remote: cfg(feature = "remote")
)]
pub trait BitOps: Backend {
    /// `conv2d(x, standardize(weight))`: for each output filter, `(w - mean) / sqrt(var + eps)`
    /// over its fan-in, biased variance.
    fn std_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        composed::std_conv2d::<Self>(x, weight, options)
    }

    /// `std_conv2d(x, weight) + residual`: the last convolution of a bottleneck unit and its
    /// shortcut in one pass (the sum is accumulated into the convolution's output).
    fn std_conv2d_add(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        composed::std_conv2d_add::<Self>(x, weight, residual, options)
    }

    /// Gradient of [`std_conv2d`](BitOps::std_conv2d) with respect to `x`.
    fn std_conv2d_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        composed::std_conv2d_x_backward::<Self>(x, weight, output_grad, options)
    }

    /// Gradient of [`std_conv2d`](BitOps::std_conv2d) with respect to the raw `weight`.
    fn std_conv2d_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: StdConvOptions,
    ) -> FloatTensor<Self> {
        composed::std_conv2d_weight_backward::<Self>(x, weight, output_grad, options)
    }

    /// Max pooling of `x` padded with zeros (which take part in the max, unlike a pooling's own
    /// padding): BiT's root pool.
    fn zero_pad_max_pool2d(x: FloatTensor<Self>, options: PoolOptions) -> FloatTensor<Self> {
        composed::zero_pad_max_pool2d::<Self>(x, options)
    }

    /// Gradient of [`zero_pad_max_pool2d`](BitOps::zero_pad_max_pool2d) with respect to `x`.
    fn zero_pad_max_pool2d_backward(
        x: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: PoolOptions,
    ) -> FloatTensor<Self> {
        composed::zero_pad_max_pool2d_backward::<Self>(x, output_grad, options)
    }

    /// `relu(group_norm(x) * gamma + beta)`, with the group statistics.
    fn group_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> GroupNormReluOutput<Self> {
        composed::group_norm_relu::<Self>(x, gamma, beta, options)
    }

    /// Gradients of [`group_norm_relu`](BitOps::group_norm_relu) from its inputs, its
    /// statistics and the gradient of its output.
    fn group_norm_relu_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        output_grad: FloatTensor<Self>,
        options: GroupNormOptions,
    ) -> GroupNormReluGrads<Self> {
        composed::group_norm_relu_backward::<Self>(x, gamma, beta, mean, rstd, output_grad, options)
    }
}

/// On a device another process serves, the composed bodies: each of Burn's ops they are made
/// of runs on the server's backend.
#[cfg(feature = "remote")]
impl BitOps for burn::backend::Remote {}

/// A weight-standardized convolution on the backend `x` lives on, differentiable with respect
/// to `x` and the raw `weight` on an autodiff device.
///
/// ```
/// use bit_model::ops::{StdConvOptions, std_conv2d};
/// use burn::tensor::{Device, Distribution, Tensor};
///
/// let device = Device::flex();
/// let x = Tensor::<4>::random([2, 9, 9, 8], Distribution::Default, &device); // NHWC
/// let w = Tensor::<4>::random([16, 8, 3, 3], Distribution::Default, &device); // OIHW
/// let options = StdConvOptions { stride: 2, padding: 1, eps: 1e-10 };
/// assert_eq!(std_conv2d(x, w, options).dims(), [2, 5, 5, 16]);
/// ```
pub fn std_conv2d(x: Tensor<4>, weight: Tensor<4>, options: StdConvOptions) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as BitOps>::std_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ))
}

/// `std_conv2d(x, weight, options) + residual` in one operation, on the backend `x` lives on.
///
/// ```
/// use bit_model::ops::{StdConvOptions, std_conv2d, std_conv2d_add};
/// use burn::tensor::{Device, Distribution, Tensor, Tolerance};
///
/// let device = Device::flex();
/// let x = Tensor::<4>::random([2, 6, 6, 8], Distribution::Default, &device);
/// let w = Tensor::<4>::random([16, 8, 1, 1], Distribution::Default, &device);
/// let shortcut = Tensor::<4>::random([2, 6, 6, 16], Distribution::Default, &device);
/// let options = StdConvOptions { stride: 1, padding: 0, eps: 1e-10 };
/// let fused = std_conv2d_add(x.clone(), w.clone(), shortcut.clone(), options);
/// let separate = std_conv2d(x, w, options) + shortcut;
/// fused.into_data().assert_approx_eq::<f32>(&separate.into_data(), Tolerance::default());
/// ```
pub fn std_conv2d_add(
    x: Tensor<4>,
    weight: Tensor<4>,
    residual: Tensor<4>,
    options: StdConvOptions,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as BitOps>::std_conv2d_add(
        x.into_dispatch(),
        weight.into_dispatch(),
        residual.into_dispatch(),
        options,
    ))
}

/// Whether [`int8_conv2d`] takes `x`: an f32 tensor on the CPU device (not an autodiff one:
/// int8 is for inference).
pub(crate) fn runs_int8(x: &Tensor<4>) -> bool {
    x.dtype() == DType::F32 && !x.is_autodiff() && x.device() == Device::flex()
}

/// `conv2d(x, kernel) (+ residual)` in int8 on the CPU (see `flex::int8`); `x` (and the
/// residual) must pass [`runs_int8`].
pub(crate) fn int8_conv2d(
    x: Tensor<4>,
    kernel: &Int8Kernel,
    residual: Option<Tensor<4>>,
    options: StdConvOptions,
) -> Tensor<4> {
    let on_cpu = |t: Tensor<4>| {
        t.try_into_primitive::<Flex>()
            .expect("int8_conv2d: a tensor of the CPU device")
    };
    let residual = residual.map(on_cpu);
    Tensor::from_primitive::<Flex>(flex::int8_conv2d(&on_cpu(x), kernel, residual, &options))
}

/// Max pooling over `x` padded with zeros, on the backend `x` lives on (channels-last).
///
/// ```
/// use bit_model::ops::{PoolOptions, zero_pad_max_pool2d};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let x = Tensor::<4>::full([1, 4, 4, 2], -1.0, &device);
/// let y = zero_pad_max_pool2d(x, PoolOptions { kernel: 3, stride: 2, padding: 1 });
/// // Every window touches the zero border, which wins over the negative values.
/// assert_eq!(y.dims(), [1, 2, 2, 2]);
/// assert_eq!(y.max().into_scalar::<f32>(), 0.0);
/// ```
pub fn zero_pad_max_pool2d(x: Tensor<4>, options: PoolOptions) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as BitOps>::zero_pad_max_pool2d(
        x.into_dispatch(),
        options,
    ))
}

/// GroupNorm with a per-channel affine map, then ReLU, on the backend `x` lives on.
///
/// ```
/// use bit_model::ops::{GroupNormOptions, group_norm_relu};
/// use burn::tensor::{Device, Distribution, Tensor};
///
/// let device = Device::flex();
/// let x = Tensor::<4>::random([2, 5, 5, 64], Distribution::Default, &device);
/// let (gamma, beta) = (Tensor::ones([64], &device), Tensor::zeros([64], &device));
/// let y = group_norm_relu(x, gamma, beta, GroupNormOptions { groups: 32, eps: 1e-5 });
/// assert!(y.min().into_scalar::<f32>() >= 0.0);
/// ```
pub fn group_norm_relu(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    options: GroupNormOptions,
) -> Tensor<4> {
    let out = <Dispatch as BitOps>::group_norm_relu(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        options,
    );
    Tensor::from_dispatch(out.output)
}

/// Forgets the standardized kernels cached per weight version, on the CPU and the GPU; each is
/// recomputed when next needed. An entry already goes by itself when its weights are dropped
/// (an optimizer step, a model that goes out of scope); this frees the entries of weights that
/// live on but are done with, such as a frozen teacher after distillation, or a model kept
/// around while another one runs.
///
/// ```
/// use bit_model::ResNetV2Config;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device);
/// let before = model.forward(Tensor::zeros([1, 3, 32, 32], &device));
/// bit_model::ops::clear_kernel_cache();
/// let after = model.forward(Tensor::zeros([1, 3, 32, 32], &device));
/// assert_eq!(before.into_data(), after.into_data());
/// ```
pub fn clear_kernel_cache() {
    flex::clear_kernel_cache();
    #[cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda"))]
    cube::clear_kernel_cache();
}

/// The same operations written with Burn's composed tensor ops (autodiff through every
/// intermediate): the reference the kernels are tested and benchmarked against.
pub mod reference {
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::Tensor;
    use burn::tensor::activation::relu;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::{ConvOptions, PadMode};

    use super::{GroupNormOptions, PoolOptions, StdConvOptions};

    /// The standardized kernel, `(w - mean) / sqrt(var + eps)` per output filter.
    pub fn standardize(weight: Tensor<4>, eps: f64) -> Tensor<4> {
        let [o, i, kh, kw] = weight.dims();
        let flat = weight.reshape([o, i * kh * kw]);
        let (var, mean) = flat.clone().var_mean_bias(1);
        ((flat - mean) / (var + eps).sqrt()).reshape([o, i, kh, kw])
    }

    /// [`std_conv2d`](super::std_conv2d) composed: standardize, then Burn's `conv2d` (which is
    /// NCHW, hence the permutations).
    ///
    /// ```
    /// use bit_model::ops::{StdConvOptions, reference, std_conv2d};
    /// use burn::tensor::{Device, Distribution, Tensor, Tolerance};
    ///
    /// let device = Device::flex();
    /// let x = Tensor::<4>::random([2, 9, 9, 8], Distribution::Default, &device);
    /// let w = Tensor::<4>::random([16, 8, 3, 3], Distribution::Default, &device);
    /// let options = StdConvOptions { stride: 1, padding: 1, eps: 1e-10 };
    /// let fast = std_conv2d(x.clone(), w.clone(), options);
    /// let composed = reference::std_conv2d(x, w, options);
    /// fast.into_data().assert_approx_eq::<f32>(&composed.into_data(), Tolerance::rel_abs(1e-4, 1e-4));
    /// ```
    pub fn std_conv2d(x: Tensor<4>, weight: Tensor<4>, options: StdConvOptions) -> Tensor<4> {
        let (s, p) = (options.stride, options.padding);
        let conv = ConvOptions::new([s, s], [p, p], [1, 1], 1);
        let nchw = x.permute([0, 3, 1, 2]);
        conv2d(nchw, standardize(weight, options.eps), None, conv).permute([0, 2, 3, 1])
    }

    /// [`zero_pad_max_pool2d`](super::zero_pad_max_pool2d) composed: a zero pad, then Burn's
    /// `max_pool2d` (NCHW).
    pub fn zero_pad_max_pool2d(x: Tensor<4>, options: PoolOptions) -> Tensor<4> {
        let p = options.padding;
        let pool = MaxPool2dConfig::new([options.kernel; 2])
            .with_strides([options.stride; 2])
            .init();
        let padded = x
            .permute([0, 3, 1, 2])
            .pad((p, p, p, p), PadMode::Constant(0.0));
        pool.forward(padded).permute([0, 2, 3, 1])
    }

    /// [`group_norm_relu`](super::group_norm_relu) composed.
    pub fn group_norm_relu(
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        options: GroupNormOptions,
    ) -> Tensor<4> {
        let [n, h, w, c] = x.dims();
        let grouped =
            x.permute([0, 3, 1, 2])
                .reshape([n, options.groups, (c / options.groups) * h * w]);
        let (var, mean) = grouped.clone().var_mean_bias(2);
        let normalized = ((grouped - mean) / (var + options.eps).sqrt())
            .reshape([n, c, h, w])
            .permute([0, 2, 3, 1]);
        relu(normalized * gamma.reshape([1, 1, 1, c]) + beta.reshape([1, 1, 1, c]))
    }
}
