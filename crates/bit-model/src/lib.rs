//! # bit-model
//!
//! Google's *Big Transfer* (BiT) ResNetV2 in [Burn](https://burn.dev): weight-standardized
//! convolutions, GroupNorm and pre-activation bottlenecks, exactly as the reference
//! `bit_pytorch/models.py`, with loading of the official `.npz` checkpoints (every released
//! BiT-S, BiT-M, `-ILSVRC2012`, VTAB and distilled file) and a native safetensors format.
//!
//! Every released file has a name in the `bit-zoo` crate (`BiT-M-R50x1`,
//! `vtab/BiT-M-R50x1-run0-dtd`, `distill/R50x1_224`, ...), which downloads it once into a
//! verified cache; this crate reads files and never touches the network.
//!
//! The same code runs on every Burn backend compiled in; the [`Device`](burn::tensor::Device)
//! chooses it at run time (see [`backend`]). On an autodiff device the model trains. The
//! operations BiT spends its time in (the weight-standardized convolution, GroupNorm + ReLU,
//! the root pool) are a Burn backend extension, [`ops`], with CPU kernels and closed-form
//! gradients of their own; inside the network activations are channels-last.
//!
//! ```no_run
//! use bit_model::ResNetV2;
//! use burn::tensor::{Device, Tensor};
//!
//! let device = Device::flex();
//! let model = ResNetV2::from_npz("BiT-M-R50x1.npz", &device)?;
//! let images = Tensor::<4>::zeros([8, 3, 128, 128], &device); // NCHW, scaled to [-1, 1]
//! let logits = model.forward(images.clone()); // [8, 21843]
//! let features = model.features(images); // [8, 2048]
//! # Ok::<(), bit_model::Error>(())
//! ```
#![warn(missing_docs)]

pub mod backend;
mod bottleneck;
mod checkpoint;
mod error;
mod group_norm;
mod hub_layout;
mod native;
mod npz;
mod onnx;
pub mod ops;
mod precision;
mod resnet;
mod slots;
mod std_conv;
mod storage;
mod trainable;

pub use bottleneck::{PreActBottleneck, PreActBottleneckConfig};
pub use checkpoint::{CheckpointFormat, NORMALIZATION_METADATA_KEY};
pub use error::{Error, Result};
pub use group_norm::{GN_EPS, GROUPS, GroupNormRelu, GroupNormReluConfig};
pub use hub_layout::{HUB_STD_CONV_EPS, HUB_WEIGHT_FILES, HubCheckpoint, HubInfo, HubLayout};
pub use native::{
    CLASSES_METADATA_KEY, CONFIG_METADATA_KEY, RESOLUTION_METADATA_KEY, SHA256_METADATA_KEY,
    run_metadata,
};
pub use npz::NpzCheckpoint;
pub use onnx::ONNX_OPSET;
pub use precision::Precision;
pub use resnet::{
    Architecture, BIT_M_HEAD_SIZE, BIT_S_HEAD_SIZE, Block, Head, HeadConfig, MAX_PARAMETERS,
    ROOT_POOL, ResNetV2, ResNetV2Config, RootBlock, Stage,
};
pub use std_conv::{StdConv2d, StdConv2dConfig};
pub use storage::{WEIGHT_DTYPE_METADATA_KEY, WeightDType};
pub use trainable::Trainable;
