//! Weight-standardized convolution (Qiao et al., 2019), the convolution of every BiT layer.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

/// Configuration of a [`StdConv2d`] layer.
///
/// ```
/// use bit_model::StdConv2dConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::default();
/// let conv = StdConv2dConfig::new([3, 64], 7).with_stride(2).with_padding(3).init(&device);
/// let y = conv.forward(Tensor::<4>::zeros([1, 3, 32, 32], &device));
/// assert_eq!(y.dims(), [1, 64, 16, 16]);
/// ```
#[derive(Config, Debug)]
pub struct StdConv2dConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Square kernel size.
    pub kernel_size: usize,
    /// Stride, the same along both axes.
    #[config(default = 1)]
    pub stride: usize,
    /// Symmetric zero padding, the same on every side.
    #[config(default = 0)]
    pub padding: usize,
    /// Added to the variance inside the square root. BiT uses 1e-10; timm's BiT port uses 1e-8.
    #[config(default = 1e-10)]
    pub eps: f64,
}

impl StdConv2dConfig {
    /// Builds the layer. Weights are Kaiming-normal (fan-out), as in timm; they are only
    /// materialised on first use, so loading a checkpoint never pays for the random init.
    pub fn init(&self, device: &Device) -> StdConv2d {
        let [c_in, c_out] = self.channels;
        let k = self.kernel_size;
        let weight = Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        }
        .init_with(
            [c_out, c_in, k, k],
            Some(c_in * k * k),
            Some(c_out * k * k),
            device,
        );
        StdConv2d {
            weight,
            stride: [self.stride; 2],
            padding: [self.padding; 2],
            eps: self.eps,
        }
    }
}

/// A bias-free 2-D convolution whose kernel is standardized on every forward pass: for each
/// output filter, `w' = (w - mean) / sqrt(var + eps)` with mean and *biased* variance over
/// (input channels, height, width). The raw kernel is what is stored and trained, and gradients
/// flow through the standardization, exactly as in `bit_pytorch.models.StdConv2d`.
#[derive(Module, Debug)]
pub struct StdConv2d {
    /// The raw (unstandardized) kernel, `[out, in, kh, kw]`.
    pub weight: Param<Tensor<4>>,
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Symmetric zero padding `[h, w]`.
    pub padding: [usize; 2],
    /// Variance epsilon of the standardization.
    pub eps: f64,
}

impl StdConv2d {
    /// The standardized kernel that the convolution actually uses.
    pub fn standardized_weight(&self) -> Tensor<4> {
        let w = self.weight.val();
        let [o, i, kh, kw] = w.dims();
        let flat = w.reshape([o, i * kh * kw]);
        let (var, mean) = flat.clone().var_mean_bias(1);
        ((flat - mean) / (var + self.eps).sqrt()).reshape([o, i, kh, kw])
    }

    /// Applies the convolution.
    ///
    /// # Shapes
    /// - input `[batch, in, height, width]`
    /// - output `[batch, out, (height + 2p - k) / s + 1, (width + 2p - k) / s + 1]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new(self.stride, self.padding, [1, 1], 1);
        conv2d(x, self.standardized_weight(), None, options)
    }
}
