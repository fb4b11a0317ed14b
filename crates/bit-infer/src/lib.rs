//! # bit-infer
//!
//! Running BiT models the way timm users expect: [`InferenceModel::load`] takes a released
//! name (fetched and verified by [`bit_zoo`]), an official `.npz` or a
//! fine-tuned `.safetensors`, with its resolution and class names (ImageNet-1k lemmas,
//! ImageNet-21k WordNet ids, or the fine-tuning run's classes); then [`predict`] (top-k
//! probabilities), [`embed`] (pooled pre-logits for linear probes and retrieval, saved as
//! `.npy`) and [`evaluate`] (loss, top-1, top-5 on labelled data, whose classes
//! [`map_classes`] matches to the head by name or a class map), and [`fewshot`] (BiT's
//! few-shot linear evaluation of the frozen features: big_vision's closed-form ridge probe,
//! [`RidgeProbe`]). Preprocessing is the reference's evaluation path: resize to the
//! resolution, scale to `[-1, 1]`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use bit_data::ImageFiles;
//! use bit_infer::{InferenceModel, LoadOptions, predict};
//! use bit_zoo::ModelHub;
//! use burn::tensor::Device;
//!
//! let device = Device::flex();
//! let m = InferenceModel::load(&ModelHub::from_env()?, "BiT-M-R50x1-ILSVRC2012", &LoadOptions::default(), &device)?;
//! let images = ImageFiles::new(vec!["cat.jpg".into()])?;
//! let top5 = predict(&m.model, Arc::new(images), 5, &m.feed(), &device)?;
//! for (class, p) in &top5[0] {
//!     println!("{:6.2}% {}", 100.0 * p, m.class_name(*class));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

mod error;
mod eval;
mod feed;
mod fewshot;
mod labels;
mod model;

pub use bit_model::{CLASSES_METADATA_KEY, RESOLUTION_METADATA_KEY};
pub use error::{InferError, Result};
pub use eval::{
    EvalRecord, EvalResult, evaluate, evaluate_dataset, evaluate_dataset_recorded, log_softmax,
    rank,
};
pub use feed::{Embeddings, Feed, StageFeatures, embed, embed_stages, predict, save_labels};
pub use fewshot::{
    BIAS_FEATURE, DEFAULT_L2, FewShotConfig, FewShotScore, RidgeProbe, STD_EPS, fewshot,
};
pub use labels::{Relabelled, map_classes, read_class_map, read_label_file};
pub use model::{DEFAULT_RESOLUTION, ExportFormat, InferenceModel, LoadOptions, metadata};
