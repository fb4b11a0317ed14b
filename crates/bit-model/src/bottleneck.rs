//! The pre-activation bottleneck unit of ResNetV2 (He et al., 2016), as BiT builds it.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::group_norm::{GN_EPS, GROUPS, GroupNormRelu, GroupNormReluConfig};
use crate::std_conv::{StdConv2d, StdConv2dConfig};

/// Configuration of a [`PreActBottleneck`] unit.
///
/// ```
/// use bit_model::PreActBottleneckConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// // block2/unit01 of R50x1: 256 -> 512 channels, 128 in the middle, stride 2.
/// let unit = PreActBottleneckConfig::new(256, 512, 128).with_stride(2).init(&device);
/// assert!(unit.downsample.is_some());
/// let y = unit.forward(Tensor::<4>::zeros([1, 16, 16, 256], &device)); // NHWC
/// assert_eq!(y.dims(), [1, 8, 8, 512]);
/// ```
#[derive(Config, Debug)]
pub struct PreActBottleneckConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Channels of the 3x3 conv (a quarter of `out_channels` in BiT).
    pub mid_channels: usize,
    /// Stride, applied on the 3x3 conv and on the projection.
    #[config(default = 1)]
    pub stride: usize,
    /// Weight-standardization epsilon of the convolutions.
    #[config(default = 1e-10)]
    pub std_conv_eps: f64,
}

impl PreActBottleneckConfig {
    /// Builds the unit; it has a projection shortcut exactly when the stride or the channel
    /// count changes.
    pub fn init(&self, device: &Device) -> PreActBottleneck {
        let (cin, cmid, cout) = (self.in_channels, self.mid_channels, self.out_channels);
        let conv = |channels, kernel, stride, padding| {
            StdConv2dConfig::new(channels, kernel)
                .with_stride(stride)
                .with_padding(padding)
                .with_eps(self.std_conv_eps)
                .init(device)
        };
        let gn = |channels| {
            GroupNormReluConfig::new(channels)
                .with_groups(GROUPS)
                .with_eps(GN_EPS)
                .init(device)
        };
        PreActBottleneck {
            gn1: gn(cin),
            conv1: conv([cin, cmid], 1, 1, 0),
            gn2: gn(cmid),
            conv2: conv([cmid, cmid], 3, self.stride, 1),
            gn3: gn(cmid),
            conv3: conv([cmid, cout], 1, 1, 0),
            downsample: (self.stride != 1 || cin != cout)
                .then(|| conv([cin, cout], 1, self.stride, 0)),
        }
    }
}

/// `out = conv3(relu(gn3(conv2(relu(gn2(conv1(a))))))) + shortcut`, with `a = relu(gn1(x))`
/// and `shortcut = downsample(a)` when there is a projection, `x` otherwise.
///
/// The projection sees the *pre-activated* input, the stride sits on the 3x3 conv (the
/// original code had it on conv1) and nothing follows the addition.
#[derive(Module, Debug)]
pub struct PreActBottleneck {
    /// Norm of the unit input (`a/group_norm` in the checkpoint).
    pub gn1: GroupNormRelu,
    /// 1x1 reduction (`a/standardized_conv2d`).
    pub conv1: StdConv2d,
    /// `b/group_norm`.
    pub gn2: GroupNormRelu,
    /// 3x3, strided (`b/standardized_conv2d`).
    pub conv2: StdConv2d,
    /// `c/group_norm`.
    pub gn3: GroupNormRelu,
    /// 1x1 expansion (`c/standardized_conv2d`).
    pub conv3: StdConv2d,
    /// Projection shortcut (`a/proj/standardized_conv2d`), only in the first unit of a block.
    pub downsample: Option<StdConv2d>,
}

impl PreActBottleneck {
    /// Applies the unit.
    ///
    /// # Shapes
    /// - input `[batch, h, w, in]` (channels-last)
    /// - output `[batch, h / stride, w / stride, out]` (rounded up)
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let a = self.gn1.forward(x.clone());
        let shortcut = match &self.downsample {
            Some(proj) => proj.forward(a.clone()),
            None => x,
        };
        let out = self.conv1.forward(a);
        let out = self.conv2.forward(self.gn2.forward(out));
        self.conv3.forward_add(self.gn3.forward(out), shortcut)
    }
}
