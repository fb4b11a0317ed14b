//! Weight-standardized convolution (Qiao et al., 2019), the convolution of every BiT layer.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use crate::ops::{self, Int8Kernel, StdConvOptions};

/// Configuration of a [`StdConv2d`] layer.
///
/// ```
/// use bit_model::StdConv2dConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let conv = StdConv2dConfig::new([3, 64], 7).with_stride(2).with_padding(3).init(&device);
/// // Channels-last, like every activation inside BiT: [batch, height, width, channels].
/// let y = conv.forward(Tensor::<4>::zeros([1, 32, 32, 3], &device));
/// assert_eq!(y.dims(), [1, 16, 16, 64]);
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
            int8: None,
        }
    }
}

/// A bias-free 2-D convolution whose kernel is standardized: for each output filter,
/// `w' = (w - mean) / sqrt(var + eps)` with mean and *biased* variance over (input channels,
/// height, width). The raw kernel is what is stored and trained, and gradients flow through the
/// standardization, exactly as in `bit_pytorch.models.StdConv2d`.
///
/// The work is one fused operation, [`ops::std_conv2d`]: on the CPU the standardized kernel is
/// computed once per weight version (not on every call) and the backward is closed-form.
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
    /// The standardized kernel in int8, when the layer computes in int8 on the CPU
    /// ([`Precision::Int8`](crate::Precision::Int8)); derived from `weight`, never stored.
    #[module(skip)]
    int8: Option<Int8Kernel>,
}

impl StdConv2d {
    /// The standardized kernel that the convolution actually uses.
    pub fn standardized_weight(&self) -> Tensor<4> {
        ops::reference::standardize(self.weight.val(), self.eps)
    }

    /// Stride, padding and epsilon as the fused operation takes them.
    pub fn options(&self) -> StdConvOptions {
        debug_assert_eq!(self.stride[0], self.stride[1]);
        debug_assert_eq!(self.padding[0], self.padding[1]);
        StdConvOptions {
            stride: self.stride[0],
            padding: self.padding[0],
            eps: self.eps,
        }
    }

    /// Applies the convolution.
    ///
    /// # Shapes
    /// - input `[batch, height, width, in]` (channels-last)
    /// - output `[batch, (height + 2p - k) / s + 1, (width + 2p - k) / s + 1, out]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.int8 {
            Some(kernel) if ops::runs_int8(&x) => ops::int8_conv2d(x, kernel, None, self.options()),
            _ => ops::std_conv2d(x, self.weight.val(), self.options()),
        }
    }

    /// `forward(x) + residual`, in one pass ([`ops::std_conv2d_add`]).
    pub fn forward_add(&self, x: Tensor<4>, residual: Tensor<4>) -> Tensor<4> {
        match &self.int8 {
            Some(kernel) if ops::runs_int8(&x) && ops::runs_int8(&residual) => {
                ops::int8_conv2d(x, kernel, Some(residual), self.options())
            }
            _ => ops::std_conv2d_add(x, self.weight.val(), residual, self.options()),
        }
    }

    /// The layer computing in int8 on the CPU (`true`: its standardized kernel quantized per
    /// filter, activations per position or image; see
    /// [`Precision::Int8`](crate::Precision::Int8)) or in f32 (`false`). The f32 weights stay: saving, exporting and training see them
    /// unchanged, and devices other than the CPU keep computing in f32.
    ///
    /// ```
    /// use bit_model::StdConv2dConfig;
    /// use burn::tensor::{Device, Distribution, Tensor};
    ///
    /// let device = Device::flex();
    /// let conv = StdConv2dConfig::new([64, 128], 3).with_padding(1).init(&device);
    /// let x = Tensor::<4>::random([2, 8, 8, 64], Distribution::Uniform(0.0, 1.0), &device);
    /// let exact = conv.forward(x.clone());
    /// let int8 = conv.with_int8(true).forward(x);
    /// // 8 bits per weight: the error is about a percent of the output's range (0.4 of 27 here).
    /// let range = exact.clone().abs().max().into_scalar::<f32>();
    /// let error = (int8 - exact).abs().max().into_scalar::<f32>();
    /// assert!(error < 0.03 * range, "{error} of {range}");
    /// ```
    pub fn with_int8(mut self, int8: bool) -> Self {
        self.int8 = int8.then(|| {
            let weight = self.weight.val();
            let shape = weight.dims();
            let raw = weight.into_data().convert::<f32>();
            let raw = raw.as_slice::<f32>().expect("f32 data");
            Int8Kernel::new(raw, shape, self.eps)
        });
        self
    }

    /// Whether the layer computes in int8 on the CPU ([`with_int8`](Self::with_int8)).
    pub fn is_int8(&self) -> bool {
        self.int8.is_some()
    }
}
