//! ResNetV2 as BiT builds it: root block, four stages of pre-activation bottlenecks, head.

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{DType, Device, Tensor};

use crate::bottleneck::{PreActBottleneck, PreActBottleneckConfig};
use crate::error::Error;
use crate::group_norm::{GN_EPS, GROUPS, GroupNormRelu, GroupNormReluConfig};
use crate::ops::{self, PoolOptions};
use crate::precision::Precision;
use crate::std_conv::{StdConv2d, StdConv2dConfig};

/// Head size of the BiT-M checkpoints (ImageNet-21k, 21841 classes plus two unused ids).
pub const BIT_M_HEAD_SIZE: usize = 21843;
/// Head size of the BiT-S and `-ILSVRC2012` checkpoints (ImageNet-1k).
pub const BIT_S_HEAD_SIZE: usize = 1000;
/// The most parameters a [`ResNetV2Config`] may have: 2^32, 16 GiB of `f32` weights, 4.6
/// times BiT's largest model (R152x4 with an ImageNet-21k head, 0.94 billion). A larger count
/// comes from a mistyped flag or a forged checkpoint header (`--head 100000000` is 205 billion
/// parameters); refusing it up front turns an abort on allocation into a typed error.
pub const MAX_PARAMETERS: u64 = 1 << 32;

/// The six released BiT architectures (`KNOWN_MODELS` of the reference code).
///
/// ```
/// use bit_model::Architecture;
///
/// let arch: Architecture = "R152x2".parse().unwrap();
/// assert_eq!(arch.block_units(), [3, 8, 36, 3]);
/// assert_eq!(arch.width_factor(), 2);
/// assert_eq!(arch.feature_dim(), 4096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Architecture {
    /// ResNet-50, width 1.
    R50x1,
    /// ResNet-101, width 1.
    R101x1,
    /// ResNet-50, width 3.
    R50x3,
    /// ResNet-101, width 3.
    R101x3,
    /// ResNet-152, width 2.
    R152x2,
    /// ResNet-152, width 4.
    R152x4,
}

impl Architecture {
    /// Every architecture, smallest first.
    pub const ALL: [Architecture; 6] = [
        Self::R50x1,
        Self::R101x1,
        Self::R50x3,
        Self::R101x3,
        Self::R152x2,
        Self::R152x4,
    ];

    /// Units per block.
    pub fn block_units(self) -> [usize; 4] {
        match self {
            Self::R50x1 | Self::R50x3 => [3, 4, 6, 3],
            Self::R101x1 | Self::R101x3 => [3, 4, 23, 3],
            Self::R152x2 | Self::R152x4 => [3, 8, 36, 3],
        }
    }

    /// Width multiplier of every layer.
    pub fn width_factor(self) -> usize {
        match self {
            Self::R50x1 | Self::R101x1 => 1,
            Self::R152x2 => 2,
            Self::R50x3 | Self::R101x3 => 3,
            Self::R152x4 => 4,
        }
    }

    /// Width of the pooled features, `2048 * width_factor`.
    pub fn feature_dim(self) -> usize {
        2048 * self.width_factor()
    }

    /// The configuration of this architecture with a head of `head_size` classes.
    pub fn config(self, head_size: usize) -> ResNetV2Config {
        ResNetV2Config::new(self.block_units(), self.width_factor(), head_size)
    }

    /// The architecture with these block units and width, if it is a released one.
    pub fn from_shape(block_units: [usize; 4], width_factor: usize) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.block_units() == block_units && a.width_factor() == width_factor)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let depth: usize = self.block_units().iter().sum::<usize>() * 3 + 2;
        write!(f, "R{depth}x{}", self.width_factor())
    }
}

impl FromStr for Architecture {
    type Err = Error;

    /// Parses `R50x1` ... `R152x4`, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|a| a.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownArchitecture(s.to_string()))
    }
}

/// Configuration of a [`ResNetV2`].
///
/// ```
/// use bit_model::ResNetV2Config;
///
/// // The upstream BiT-M-R50x1 and a small custom variant.
/// let r50 = ResNetV2Config::named("R50x1", 21843).unwrap();
/// assert_eq!((r50.block_units, r50.width_factor, r50.head_size), ([3, 4, 6, 3], 1, 21843));
/// let tiny = ResNetV2Config::new([1, 1, 1, 1], 1, 10);
/// assert_eq!(tiny.feature_dim(), 2048);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct ResNetV2Config {
    /// Bottleneck units in each of the four blocks (`[3, 4, 6, 3]` for R50).
    pub block_units: [usize; 4],
    /// Width multiplier: block `b` has `256 * 2^b * wf` output channels.
    pub width_factor: usize,
    /// Number of classes of the head.
    pub head_size: usize,
    /// Input image channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Weight-standardization epsilon (1e-10 in BiT, 1e-8 in timm's port).
    #[config(default = 1e-10)]
    pub std_conv_eps: f64,
    /// Start the head at zero, as BiT does before fine-tuning.
    #[config(default = false)]
    pub zero_head: bool,
}

impl ResNetV2Config {
    /// `tiny` (one unit per block, width 1: 8M parameters, the golden test model) or a BiT
    /// architecture (`R50x1` ... `R152x4`), with a `head_size`-way head.
    ///
    /// ```
    /// use bit_model::ResNetV2Config;
    ///
    /// assert_eq!(ResNetV2Config::named("tiny", 10).unwrap().block_units, [1, 1, 1, 1]);
    /// assert_eq!(ResNetV2Config::named("R101x3", 5).unwrap().width_factor, 3);
    /// assert!(ResNetV2Config::named("R51x1", 5).is_err());
    /// ```
    pub fn named(arch: &str, head_size: usize) -> Result<Self, Error> {
        if arch.eq_ignore_ascii_case("tiny") {
            return Ok(Self::new([1, 1, 1, 1], 1, head_size));
        }
        let known = Architecture::ALL.map(|a| a.to_string()).join(", ");
        let arch = arch.parse::<Architecture>().map_err(|_| {
            Error::UnknownArchitecture(format!("`{arch}`: expected tiny or one of {known}"))
        })?;
        Ok(arch.config(head_size))
    }

    /// Width of the pooled features, `2048 * width_factor`.
    pub fn feature_dim(&self) -> usize {
        2048 * self.width_factor
    }

    /// Number of parameters of the model this configuration builds (saturating at
    /// `u64::MAX`), computed from the sizes alone: nothing is allocated.
    ///
    /// ```
    /// use bit_model::ResNetV2Config;
    /// use burn::module::Module;
    /// use burn::tensor::Device;
    ///
    /// let config = ResNetV2Config::new([1, 1, 1, 1], 1, 10);
    /// let model = config.init(&Device::flex());
    /// assert_eq!(config.parameter_count(), model.num_params() as u64);
    /// // BiT-M-R50x1 with an ImageNet-1k head: 25.5 million, as timm counts it.
    /// assert_eq!(ResNetV2Config::named("R50x1", 1000).unwrap().parameter_count(), 25_549_352);
    /// ```
    pub fn parameter_count(&self) -> u64 {
        let n = |v: usize| v as u64;
        let (wf, mut channels) = (n(self.width_factor), n(self.in_channels));
        let root_out = (64u64).saturating_mul(wf);
        let mut total = channels.saturating_mul(root_out).saturating_mul(49);
        channels = root_out;
        for (b, &units) in self.block_units.iter().enumerate() {
            let mid = root_out.saturating_mul(1 << b);
            let out = mid.saturating_mul(4);
            // The first unit of a block: GN on its input, projection to `out`; then units
            // whose input is `out` and that keep the identity shortcut.
            let unit = |cin: u64, projection: bool| {
                let convs = cin
                    .saturating_mul(mid)
                    .saturating_add(mid.saturating_mul(mid).saturating_mul(9))
                    .saturating_add(mid.saturating_mul(out));
                let norms = cin.saturating_add(mid.saturating_mul(2)).saturating_mul(2);
                let shortcut = if projection {
                    cin.saturating_mul(out)
                } else {
                    0
                };
                convs.saturating_add(norms).saturating_add(shortcut)
            };
            if units > 0 {
                let first = unit(channels, b > 0 || channels != out);
                let rest = unit(out, false).saturating_mul(n(units) - 1);
                total = total.saturating_add(first).saturating_add(rest);
                channels = out;
            }
        }
        let features = (2048u64).saturating_mul(wf);
        let head = features.saturating_add(1).saturating_mul(n(self.head_size));
        total
            .saturating_add(features.saturating_mul(2))
            .saturating_add(head)
    }

    /// Checks the configuration can be built: four non-empty blocks, a positive width, head
    /// and input channel count, a weight-standardization epsilon in `(0, 1e-3]`, at most
    /// [`MAX_PARAMETERS`](crate::MAX_PARAMETERS) parameters.
    ///
    /// ```
    /// use bit_model::ResNetV2Config;
    ///
    /// assert!(ResNetV2Config::new([1, 1, 1, 1], 1, 10).validate().is_ok());
    /// assert!(ResNetV2Config::new([1, 1, 1, 1], 1, 10).with_std_conv_eps(-1.0).validate().is_err());
    /// // A forged header's shape: refused before anything is allocated.
    /// assert!(ResNetV2Config::new([1_000_000_000, 1, 1, 1], 1, 10).validate().is_err());
    /// assert!(ResNetV2Config::new([1, 1, 1, 1], 1, 100_000_000).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::InvalidConfig(what.to_string()));
        if self.block_units.contains(&0) {
            return bad("every block needs at least one unit");
        }
        if self.width_factor == 0 {
            return bad("width_factor must be at least 1");
        }
        if self.head_size == 0 {
            return bad("head_size must be at least 1");
        }
        if self.in_channels == 0 {
            return bad("in_channels must be at least 1");
        }
        // BiT uses 1e-10, timm 1e-8: a negative or zero epsilon divides by zero or inverts
        // the standardization, a large one silently turns it off.
        if !(self.std_conv_eps > 0.0 && self.std_conv_eps <= 1e-3) {
            return bad(&format!(
                "std_conv_eps {} must be positive and at most 1e-3 (BiT: 1e-10)",
                self.std_conv_eps
            ));
        }
        let parameters = self.parameter_count();
        if parameters > MAX_PARAMETERS {
            return bad(&format!(
                "{parameters} parameters ({:.0} GiB of f32 weights) is above the maximum of \
                 {MAX_PARAMETERS}; check the head size ({}) and the block units ({:?})",
                parameters as f64 * 4.0 / f64::from(1 << 30),
                self.head_size,
                self.block_units,
            ));
        }
        Ok(())
    }

    /// Builds the model after [`validate`](Self::validate)-ing the configuration. Parameters
    /// are lazy: they are only allocated when first used, so loading a checkpoint into a fresh
    /// model costs no random init.
    pub fn try_init(&self, device: &Device) -> Result<ResNetV2, Error> {
        self.validate()?;
        Ok(self.init(device))
    }

    /// Builds the model.
    ///
    /// # Panics
    /// On a configuration that [`validate`](Self::validate) rejects; use
    /// [`try_init`](Self::try_init) for configurations that come from users.
    pub fn init(&self, device: &Device) -> ResNetV2 {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let wf = self.width_factor;
        let root = RootBlock {
            conv: StdConv2dConfig::new([self.in_channels, 64 * wf], 7)
                .with_stride(2)
                .with_padding(3)
                .with_eps(self.std_conv_eps)
                .init(device),
        };
        let mut in_channels = 64 * wf;
        let body = (0..4)
            .map(|b| {
                let mid = (64 * wf) << b;
                let out = 4 * mid;
                let units = (0..self.block_units[b])
                    .map(|u| {
                        let stride = if b > 0 && u == 0 { 2 } else { 1 };
                        let unit = PreActBottleneckConfig::new(in_channels, out, mid)
                            .with_stride(stride)
                            .with_std_conv_eps(self.std_conv_eps)
                            .init(device);
                        in_channels = out;
                        unit
                    })
                    .collect();
                Block { units }
            })
            .collect();
        let head = HeadConfig::new(self.feature_dim(), self.head_size)
            .with_zero_init(self.zero_head)
            .init(device);
        ResNetV2 {
            root,
            body,
            head,
            precision: Precision::F32,
        }
    }
}

/// The stem: 7x7/2 standardized conv, then a **zero** pad of 1 and a 3x3/2 max-pool without
/// padding. There is no norm or activation, so the pooled values can be negative and the zero
/// border can win the max: `MaxPool2d(3, 2, padding=1)` (which pads with -inf) "is subtly not
/// the same", as the reference code says. The pad and the pool are one operation,
/// [`ops::zero_pad_max_pool2d`].
#[derive(Module, Debug)]
pub struct RootBlock {
    /// `root_block/standardized_conv2d`.
    pub conv: StdConv2d,
}

/// The root pool: a 3x3 window, stride 2, after a zero pad of 1 (the zeros take part).
pub const ROOT_POOL: PoolOptions = PoolOptions {
    kernel: 3,
    stride: 2,
    padding: 1,
};

impl RootBlock {
    /// Channels-last, like every activation inside the network:
    /// `[b, h, w, c]` -> `[b, ((h - 1) / 2 + 1 - 1) / 2 + 1, ..., 64wf]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        ops::zero_pad_max_pool2d(self.conv.forward(x), ROOT_POOL)
    }
}

/// One of the four stages (`block1` ... `block4`); its first unit projects and, from `block2`
/// on, halves the resolution.
#[derive(Module, Debug)]
pub struct Block {
    /// `unit01`, `unit02`, ...
    pub units: Vec<PreActBottleneck>,
}

impl Block {
    /// Applies the units in order.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.units.iter().fold(x, |x, unit| unit.forward(x))
    }
}

/// Configuration of the classification [`Head`].
#[derive(Config, Debug)]
pub struct HeadConfig {
    /// Width of the pooled features.
    pub features: usize,
    /// Number of classes.
    pub classes: usize,
    /// Zero weight and bias, as BiT's fine-tuning starts; otherwise N(0, 0.01) like timm.
    #[config(default = false)]
    pub zero_init: bool,
}

impl HeadConfig {
    /// Builds the head.
    pub fn init(&self, device: &Device) -> Head {
        let initializer = if self.zero_init {
            Initializer::Zeros
        } else {
            Initializer::Normal {
                mean: 0.0,
                std: 0.01,
            }
        };
        let mut fc = LinearConfig::new(self.features, self.classes)
            .with_initializer(initializer)
            .init(device);
        // The initializer above also draws the bias; BiT and timm start it at zero.
        fc.bias = Some(Initializer::Zeros.init([self.classes], device));
        Head {
            gn: GroupNormReluConfig::new(self.features)
                .with_groups(GROUPS)
                .with_eps(GN_EPS)
                .init(device),
            fc,
        }
    }
}

/// GroupNorm, ReLU, global average pool, then the classifier. The classifier is BiT's 1x1
/// `head/conv2d` (a plain conv with bias, not standardized), stored as a [`Linear`] whose
/// `[in, out]` weight is the checkpoint kernel `[0, 0]` as is.
#[derive(Module, Debug)]
pub struct Head {
    /// `resnet/group_norm`, the pre-head norm.
    pub gn: GroupNormRelu,
    /// `resnet/head/conv2d`.
    pub fc: Linear,
}

impl Head {
    /// The classifier's bias on the host (zeros for a head built without one), as the
    /// exporters write it.
    pub(crate) fn bias_values(&self) -> Vec<f32> {
        let classes = self.fc.weight.dims()[1];
        self.fc.bias.as_ref().map_or_else(
            || vec![0.0; classes],
            |b| crate::backend::host_values(b.val()),
        )
    }

    /// Pooled pre-logits: `mean_hw(relu(gn(x)))`, channels-last `[b, h, w, c]` -> `[b, c]`,
    /// in `f32` (the mean of a half-precision input is taken in `f32`).
    pub fn pre_logits(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, h, w, c] = x.dims();
        self.gn
            .forward(x)
            .cast(DType::F32)
            .reshape([b, h * w, c])
            .mean_dim(1)
            .reshape([b, c])
    }
}

/// BiT's ResNetV2: `head(body(root(x)))`.
///
/// Inputs are NCHW images scaled to `[-1, 1]` (`x / 127.5 - 1`), at any resolution of at
/// least 32x32 pixels after which the stages have output. Inside, the network runs
/// channels-last (NHWC, as the original TF/JAX BiT), which makes every convolution one matrix
/// product over the batch on the CPU; its components ([`RootBlock`], [`Block`],
/// [`PreActBottleneck`], [`StdConv2d`], [`Head::pre_logits`]) take and return NHWC.
///
/// ```
/// use bit_model::ResNetV2Config;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 10).init(&device);
/// let x = Tensor::<4>::zeros([2, 3, 64, 64], &device);
/// assert_eq!(model.forward(x.clone()).dims(), [2, 10]);
/// assert_eq!(model.features(x).dims(), [2, 2048]);
/// ```
#[derive(Module, Debug)]
pub struct ResNetV2 {
    /// The stem.
    pub root: RootBlock,
    /// `block1` ... `block4`.
    pub body: Vec<Block>,
    /// Pre-head norm and classifier.
    pub head: Head,
    /// What the body computes in; not stored in checkpoints.
    #[module(skip)]
    precision: Precision,
}

impl ResNetV2 {
    /// Logits, `[batch, head_size]`, `f32` whatever the [`precision`](Self::with_precision).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.fc.forward(self.features(x))
    }

    /// The model computing in `precision` (mixed precision: weights, gradients and optimizer
    /// state stay `f32`; see [`Precision`]; for [`Precision::Int8`], the units' kernels are
    /// quantized here, once). Check the device first with [`Precision::check`].
    ///
    /// ```
    /// use bit_model::{Precision, ResNetV2Config};
    /// use burn::tensor::Device;
    ///
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 10).init(&Device::flex());
    /// assert_eq!(model.precision(), Precision::F32);
    /// assert_eq!(model.with_precision(Precision::Bf16).precision(), Precision::Bf16);
    /// ```
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        // int8 is the units' convolutions (the root's sees the image, whose values int8 would
        // coarsen most for the least time; the head is a GEMV).
        let int8 = precision == Precision::Int8;
        for unit in self
            .body
            .iter_mut()
            .flat_map(|block| block.units.iter_mut())
        {
            for conv in [&mut unit.conv1, &mut unit.conv2, &mut unit.conv3]
                .into_iter()
                .chain(unit.downsample.as_mut())
            {
                if conv.is_int8() != int8 {
                    *conv = conv.clone().with_int8(int8);
                }
            }
        }
        self
    }

    /// What the model computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Pooled pre-logits, `[batch, 2048 * width_factor]`: what the head classifies, and what
    /// linear probes and retrieval use.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.pre_logits(self.body_channels_last(x))
    }

    /// The output of `block4` before the pre-head norm, NCHW `[batch, 2048wf, h / 32, w / 32]`,
    /// `f32`.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.body_channels_last(x)
            .cast(DType::F32)
            .permute([0, 3, 1, 2])
    }

    /// Root and blocks on NCHW images, in the model's precision, channels-last out.
    fn body_channels_last(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.precision.cast(x);
        let x = self.root.forward(x.permute([0, 2, 3, 1]));
        self.body.iter().fold(x, |x, block| block.forward(x))
    }

    /// The activations at `stages` (any order, repeats allowed), NCHW `f32` maps of
    /// [`Stage::channels`] channels at [`Stage::stride`]: the network runs once, as far as the
    /// deepest stage asked for (timm's `forward_intermediates`, a backbone's multi-scale
    /// features).
    ///
    /// ```
    /// use bit_model::{ResNetV2Config, Stage};
    /// use burn::tensor::{Device, Tensor};
    ///
    /// let device = Device::flex();
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 10).init(&device);
    /// let x = Tensor::<4>::zeros([2, 3, 64, 64], &device);
    /// let maps = model.forward_intermediates(x, &[Stage::Stem, Stage::Stage3]);
    /// assert_eq!(maps[0].dims(), [2, 64, 16, 16]);
    /// assert_eq!(maps[1].dims(), [2, Stage::Stage3.channels(1), 64 / Stage::Stage3.stride(), 4]);
    /// ```
    pub fn forward_intermediates(&self, x: Tensor<4>, stages: &[Stage]) -> Vec<Tensor<4>> {
        let deepest = stages.iter().max().copied().unwrap_or(Stage::Stem);
        let mut maps: Vec<(Stage, Tensor<4>)> = Vec::new();
        let mut x = self
            .root
            .forward(self.precision.cast(x).permute([0, 2, 3, 1]));
        maps.push((Stage::Stem, x.clone()));
        for (block, stage) in self.body.iter().zip(&Stage::ALL[1..5]) {
            if *stage > deepest {
                break;
            }
            x = block.forward(x);
            maps.push((*stage, x.clone()));
        }
        if deepest == Stage::Final {
            maps.push((Stage::Final, self.head.gn.forward(x)));
        }
        stages
            .iter()
            .map(|s| {
                let (_, map) = maps.iter().find(|(m, _)| m == s).expect("computed above");
                map.clone().cast(DType::F32).permute([0, 3, 1, 2])
            })
            .collect()
    }

    /// The global average of the activations at `stage`, `[batch, channels]` `f32`: a
    /// representation for linear probes and retrieval. At [`Stage::Final`] it is
    /// [`features`](Self::features), the pooled pre-logits.
    ///
    /// ```
    /// use bit_model::{ResNetV2Config, Stage};
    /// use burn::tensor::{Device, Tensor};
    ///
    /// let device = Device::flex();
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 10).init(&device);
    /// let x = Tensor::<4>::ones([2, 3, 64, 64], &device);
    /// assert_eq!(model.pooled(x.clone(), Stage::Stage2).dims(), [2, 512]);
    /// assert_eq!(model.pooled(x, Stage::Final).dims(), [2, 2048]);
    /// ```
    pub fn pooled(&self, x: Tensor<4>, stage: Stage) -> Tensor<2> {
        if stage == Stage::Final {
            return self.features(x);
        }
        let map = self.forward_intermediates(x, &[stage]).remove(0);
        let [b, c, h, w] = map.dims();
        map.reshape([b, c, h * w]).mean_dim(2).reshape([b, c])
    }

    /// Replaces the head by a zero-initialised one of `head_size` classes: what BiT does before
    /// fine-tuning (`zero_head=True`).
    pub fn with_zero_head(mut self, head_size: usize) -> Self {
        let device = self.root.conv.weight.lazy_device();
        let features = self.config().feature_dim();
        let gn = self.head.gn;
        self.head = HeadConfig::new(features, head_size)
            .with_zero_init(true)
            .init(&device);
        self.head.gn = gn;
        self
    }

    /// The parameters holding a NaN or an infinity, by path (`body.0.units.0.conv1.weight`):
    /// empty for a healthy model.
    ///
    /// ```
    /// use bit_model::ResNetV2Config;
    /// use burn::tensor::Device;
    ///
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 10).init(&Device::flex());
    /// assert!(model.non_finite_parameters().is_empty());
    /// ```
    pub fn non_finite_parameters(&self) -> Vec<String> {
        let mut visitor = NonFinite::default();
        self.visit(&mut visitor);
        visitor.found
    }

    /// Checks the model takes RGB images (its root convolution has 3 input channels), as every
    /// dataset and image pipeline here produces; `path` names the checkpoint in the error.
    pub fn check_rgb(&self, path: &std::path::Path) -> Result<(), Error> {
        match self.config().in_channels {
            3 => Ok(()),
            channels => Err(Error::NotRgb {
                path: path.to_path_buf(),
                channels,
            }),
        }
    }

    /// The configuration this model was built with, read back from its layers.
    pub fn config(&self) -> ResNetV2Config {
        let root = self.root.conv.weight.lazy_shape();
        let head = self.head.fc.weight.lazy_shape();
        let block_units = std::array::from_fn(|b| self.body[b].units.len());
        ResNetV2Config::new(block_units, root[0] / 64, head[1])
            .with_in_channels(root[1])
            .with_std_conv_eps(self.root.conv.eps)
    }
}

/// Collects the paths of parameters with non-finite values.
#[derive(Default)]
struct NonFinite {
    path: Vec<String>,
    found: Vec<String>,
}

impl burn::module::ModuleVisitor for NonFinite {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let finite = param.val().is_finite().all().into_scalar::<bool>();
        if !finite {
            self.found.push(self.path.join("."));
        }
    }
}

/// A point of the network whose activations [`ResNetV2::forward_intermediates`] returns, in
/// network order: the stem (after the root's pool), each of the four stages (`block1` ...
/// `block4`, pre-activation outputs), and the final features (`block4` after the pre-head
/// GroupNorm + ReLU, what the pre-logits average).
///
/// ```
/// use bit_model::Stage;
///
/// let stage: Stage = "stage2".parse()?;
/// assert_eq!((stage.channels(1), stage.stride()), (512, 8));
/// assert_eq!((Stage::Final.channels(3), Stage::Final.stride()), (6144, 32));
/// assert_eq!(Stage::Stem.to_string(), "stem");
/// # Ok::<(), bit_model::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// The root convolution and its max pool: stride 4.
    Stem,
    /// `block1`: stride 4.
    Stage1,
    /// `block2`: stride 8.
    Stage2,
    /// `block3`: stride 16.
    Stage3,
    /// `block4`: stride 32.
    Stage4,
    /// `block4` after the pre-head GroupNorm + ReLU: stride 32.
    Final,
}

impl Stage {
    /// Every stage, in network order.
    pub const ALL: [Stage; 6] = [
        Self::Stem,
        Self::Stage1,
        Self::Stage2,
        Self::Stage3,
        Self::Stage4,
        Self::Final,
    ];

    /// Channels of the stage's activations in a network of width factor `width_factor`.
    pub fn channels(self, width_factor: usize) -> usize {
        width_factor
            * match self {
                Self::Stem => 64,
                Self::Stage1 => 256,
                Self::Stage2 => 512,
                Self::Stage3 => 1024,
                Self::Stage4 | Self::Final => 2048,
            }
    }

    /// How many input pixels one activation steps over.
    pub fn stride(self) -> usize {
        match self {
            Self::Stem | Self::Stage1 => 4,
            Self::Stage2 => 8,
            Self::Stage3 => 16,
            Self::Stage4 | Self::Final => 32,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stem => "stem",
            Self::Stage1 => "stage1",
            Self::Stage2 => "stage2",
            Self::Stage3 => "stage3",
            Self::Stage4 => "stage4",
            Self::Final => "final",
        })
    }
}

impl FromStr for Stage {
    type Err = Error;

    /// `stem`, `stage1` ... `stage4`, `final` (also `pre_logits`).
    fn from_str(s: &str) -> Result<Self, Error> {
        if s == "pre_logits" {
            return Ok(Self::Final);
        }
        Self::ALL
            .into_iter()
            .find(|stage| stage.to_string() == s)
            .ok_or_else(|| Error::UnknownStage(s.to_string()))
    }
}
