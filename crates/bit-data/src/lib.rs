//! # bit-data
//!
//! Datasets and input pipelines for BiT fine-tuning:
//!
//! - CIFAR-10/100 from the official binary archives ([`Cifar`]), downloaded once with a
//!   progress bar and verified, or read from a local archive or extracted folder;
//! - ImageNet-2012 (`{root}/train/<class>/*`, `{root}/val/<class>/*`) and any folder of class
//!   sub-directories ([`FolderDataset`]);
//! - MNIST-style IDX files, raw or gzipped ([`load_idx`]), e.g. Debian's Fashion-MNIST;
//! - TensorFlow Datasets prepared directories ([`TfdsSplit`], [`TfdsDataset`]: TFRecord files
//!   of `tf.train.Example` records, checksums checked) and `path label` lists ([`FolderDataset::from_list`]);
//! - the 19 tasks of VTAB-1k ([`VtabTask`]) from either;
//! - K examples per class drawn with a seed ([`few_shot`]);
//! - BiT's preprocessing ([`Preprocess`]) and [`Mixup`];
//! - a background, multi-threaded, deterministic batch stream ([`BatchStream`]).
//!
//! ```
//! use std::sync::Arc;
//! use bit_data::{BatchStream, ImageDataset, InMemoryDataset, LoaderConfig, Preprocess};
//!
//! // 10 grey 28x28 images of 2 classes (e.g. from `load_idx`).
//! let ds = InMemoryDataset::new(vec!["a".into(), "b".into()], [28, 28, 1], vec![0; 10 * 784], vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1])?;
//! let train = Preprocess::Train { precrop: 40, crop: 32, flip: true };
//! let mut batches = BatchStream::train(Arc::new(ds), train, LoaderConfig::new(4), 0)?;
//! let batch = batches.next().unwrap()?;
//! assert_eq!((batch.len(), batch.images.len()), (4, 4 * 3 * 32 * 32));
//! # Ok::<(), bit_data::DataError>(())
//! ```
#![warn(missing_docs)]

mod cifar;
mod dataset;
mod error;
mod fewshot;
pub(crate) mod folder;
mod idx;
mod list;
mod loader;
mod mixup;
mod registry;
mod resample;
mod rng;
mod tfds;
mod tfrecord;
mod transform;
mod vtab;

pub use bit_hub::{FetchError, RemoteFile};
pub use cifar::{CIFAR_BASE_URL, CIFAR_BASE_URL_ENV, Cifar, extract_tar_gz};
pub use dataset::{ImageDataset, InMemoryDataset, Subset, check_decodes};
pub use error::{DataError, Result};
pub use fewshot::few_shot;
pub use folder::{FolderDataset, IMAGE_EXTENSIONS, ImageFiles, NonImagePolicy};
pub use idx::{DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, load_idx};
pub use loader::{Batch, BatchStream, LoaderConfig, MAX_WORKERS, panic_message};
pub use mixup::{Mixup, MixupStep};
pub use registry::{DatasetName, Split, TrainValid, load_train_valid};
pub use tfds::{ImageFeature, LabelOf, TfdsDataset, TfdsSplit, tfds_class_names, write_tfds_split};
pub use tfrecord::{
    BytesList, Example, Feature, FeatureList, Features, FloatList, Int64List, RecordSpan,
    read_record, record_spans, write_record,
};
pub use transform::{Augment, MAX_RESOLUTION, MIN_RESOLUTION, Preprocess};
pub use vtab::{VtabGroup, VtabTask};
