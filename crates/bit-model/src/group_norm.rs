//! GroupNorm followed by ReLU (Wu & He, 2018): BiT's pre-activation, before every convolution
//! of a unit and before the head, on channels-last activations.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::ops::{self, GroupNormOptions};

/// Number of GroupNorm groups everywhere in BiT.
pub const GROUPS: usize = 32;
/// GroupNorm epsilon everywhere in BiT (PyTorch's default).
pub const GN_EPS: f64 = 1e-5;

/// Configuration of a [`GroupNormRelu`] layer.
///
/// ```
/// use bit_model::GroupNormReluConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let norm = GroupNormReluConfig::new(64).init(&device); // 32 groups of 2 channels
/// // Channels-last, like every activation inside BiT: [batch, height, width, channels].
/// let y = norm.forward(Tensor::<4>::ones([1, 8, 8, 64], &device));
/// assert_eq!(y.dims(), [1, 8, 8, 64]);
/// ```
#[derive(Config, Debug)]
pub struct GroupNormReluConfig {
    /// Channels (the last axis).
    pub channels: usize,
    /// Groups of consecutive channels normalized together.
    #[config(default = 32)]
    pub groups: usize,
    /// Added to the variance inside the square root.
    #[config(default = 1e-5)]
    pub eps: f64,
}

impl GroupNormReluConfig {
    /// Builds the layer: `gamma` ones, `beta` zeros.
    pub fn init(&self, device: &Device) -> GroupNormRelu {
        let c = self.channels;
        GroupNormRelu {
            gamma: Initializer::Ones.init([c], device),
            beta: Initializer::Zeros.init([c], device),
            groups: self.groups,
            eps: self.eps,
        }
    }
}

/// `relu(gamma * (x - mean) / sqrt(var + eps) + beta)`, the statistics over each image's group
/// of channels and all positions, as one fused operation ([`ops::group_norm_relu`]) on
/// channels-last input. A NaN input stays NaN, as through Burn's ReLU.
///
/// The checkpoint's `.../group_norm/gamma` and `.../beta` are its parameters. (Burn's own
/// `GroupNorm` normalizes axis 1, the channels of NCHW tensors; BiT's activations are NHWC.)
#[derive(Module, Debug)]
pub struct GroupNormRelu {
    /// Scale, `[channels]`.
    pub gamma: Param<Tensor<1>>,
    /// Shift, `[channels]`.
    pub beta: Param<Tensor<1>>,
    /// Groups of consecutive channels.
    pub groups: usize,
    /// Variance epsilon.
    pub eps: f64,
}

impl GroupNormRelu {
    /// Channels this layer normalizes.
    pub fn channels(&self) -> usize {
        self.gamma.lazy_shape().dims::<1>()[0]
    }

    /// What the fused operation is told: groups and epsilon.
    pub fn options(&self) -> GroupNormOptions {
        GroupNormOptions {
            groups: self.groups,
            eps: self.eps,
        }
    }

    /// Applies the norm and the ReLU.
    ///
    /// # Shapes
    /// - input and output `[batch, height, width, channels]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        ops::group_norm_relu(x, self.gamma.val(), self.beta.val(), self.options())
    }
}
