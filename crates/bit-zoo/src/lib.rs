//! # bit-zoo
//!
//! The model zoo: every file of the BiT release by name, with its URL, head and input
//! resolution, fetched once into a verified cache (bit-hub) and loaded as a
//! [`bit_model::ResNetV2`]. Kept apart from bit-model so that the network does not bring an
//! HTTP client along.
//!
//! ```no_run
//! use bit_model::ResNetV2;
//! use bit_zoo::{ModelHub, Pretrained};
//! use burn::tensor::Device;
//!
//! let device = Device::flex();
//! let model = ResNetV2::pretrained("BiT-M-R50x1", &device)?; // $BIT_HOME's verified copy
//! let hub = ModelHub::from_env()?.with_pretrained_dir("/models");
//! let tuned = hub.load("/runs/pets/model.safetensors", &device)?; // files load too
//! # Ok::<(), bit_zoo::Error>(())
//! ```
//!
//! | family | names | head | resolution |
//! |---|---|---|---|
//! | BiT-S | `BiT-S-R50x1` … `BiT-S-R152x4` | 1000 | 224 |
//! | BiT-M | `BiT-M-R50x1` … `BiT-M-R152x4` | 21843 | 224 |
//! | ILSVRC-2012 | `BiT-M-<arch>-ILSVRC2012` | 1000 | 480 |
//! | VTAB-1k | `vtab/BiT-M-{R50x1,R101x1,R50x3,R101x3,R152x4}-run{0,1,2}-<task>` | task classes | 128 or 480 |
//! | distilled | `distill/R50x1_224`, `distill/R50x1_160` | 1000 | 224, 160 |
//! | teacher | `distill/R152x2_T_224`, `_T_384`, `_T_{flowers,pet,food,sun}128` | 1000 / task | 224, 384, 128 |
//! | colab | `BiT-M-R50x1-CIFAR10` | 10 | 128 |
//!
//! Heads and resolutions of the upstream, ILSVRC-2012, distilled and colab files are stated
//! by the release (README, big_vision and timm configurations; the ILSVRC-2012 resolution is
//! the HyperRule's 480 for ImageNet, where timm evaluates at 448). The VTAB class counts come
//! from the TFDS metadata and their resolutions from the HyperRule's image-area rule (128 for
//! the 32²/64² datasets, else 480), the per-dataset teachers' heads from their datasets: those
//! are [`Provenance::Derived`]. Loading never trusts the table for shapes: the architecture and
//! head are read from the file itself.

#![warn(missing_docs)]

mod catalog;
mod error;
mod hub;

pub use catalog::{
    BIT_MODELS_URL, BIT_MODELS_URL_ENV, Family, LabelSet, PretrainedModel, Provenance, catalog,
    find, find_hub_alias, search,
};
pub use error::{Error, Result};
pub use hub::{HF_PREFIX, LoadedModel, ModelHub, Pretrained, PretrainedDir};
