//! Burn's convolution kernels on BiT's channels-last activations, with the algorithm chosen
//! for the device.
//!
//! Burn picks among its convolution algorithms (implicit GEMM on tensor cores, im2col + matmul,
//! direct) by timing them on each shape's first use (its `autotune` feature, on in our GPU
//! features). Without that, every GPU convolution is the direct kernel: on an H200 that left
//! R50x1 40-50x behind PyTorch (docs/performance.md). On a software adapter (Mesa's lavapipe),
//! timing the candidates, each compiled by LLVM, costs far more than any of them saves, so
//! there the direct kernel is used as before.

use burn::backend::Cube;
use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn_cubecl::kernel::conv::{
    ConvStrategy, conv_data_backward, conv_forward_nhwc, conv_weight_backward,
};
use burn_cubecl::tensor::CubeTensor;

use super::super::StdConvOptions;
use super::super::composed::{conv_options, to_nchw, to_nhwc};

/// What Burn's convolutions cannot fail on: every BiT shape has a direct kernel, and autotune
/// falls back to it.
const TAKES_EVERY_SHAPE: &str = "Burn's direct convolution takes every shape";

/// The algorithm for `t`'s device: autotuned on a GPU, the direct kernel on a software
/// adapter (a device that is no card: cubecl reports no physical device for it).
fn strategy(t: &CubeTensor) -> ConvStrategy {
    match t.client.properties().identity.physical {
        Some(_) => ConvStrategy::Autotune,
        None => ConvStrategy::Direct,
    }
}

/// `x` (NHWC) convolved with the standardized kernel `w_hat` (OIHW), NHWC out.
pub(super) fn conv2d(
    x: FloatTensor<Cube>,
    w_hat: FloatTensor<Cube>,
    options: StdConvOptions,
) -> FloatTensor<Cube> {
    let strategy = strategy(&x);
    // Burn's channels-last entry point takes the kernel as [out, kh, kw, in]: a permuted view.
    let w_hat = Cube::float_permute(w_hat, &[0, 2, 3, 1]);
    conv_forward_nhwc::<2>(x, w_hat, None, conv_options(&options), strategy)
        .expect(TAKES_EVERY_SHAPE)
}

/// The gradient of [`conv2d`] with respect to `x`, NHWC.
pub(super) fn conv2d_x_backward(
    x: FloatTensor<Cube>,
    w_hat: FloatTensor<Cube>,
    output_grad: FloatTensor<Cube>,
    options: StdConvOptions,
) -> FloatTensor<Cube> {
    let strategy = strategy(&x);
    let x_shape = to_nchw::<Cube>(x).shape();
    let grad = conv_data_backward::<2>(
        to_nchw::<Cube>(output_grad),
        w_hat,
        x_shape,
        conv_options(&options),
        strategy,
    )
    .expect(TAKES_EVERY_SHAPE);
    to_nhwc::<Cube>(grad)
}

/// The gradient of [`conv2d`] with respect to the standardized kernel, OIHW.
pub(super) fn conv2d_weight_backward(
    x: FloatTensor<Cube>,
    w_hat: FloatTensor<Cube>,
    output_grad: FloatTensor<Cube>,
    options: StdConvOptions,
) -> FloatTensor<Cube> {
    let strategy = strategy(&x);
    conv_weight_backward::<2>(
        to_nchw::<Cube>(x),
        to_nchw::<Cube>(output_grad),
        w_hat.shape(),
        conv_options(&options),
        strategy,
    )
    .expect(TAKES_EVERY_SHAPE)
}
