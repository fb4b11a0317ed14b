//! # bit-data
//!
//! Datasets and input pipelines for BiT fine-tuning:
//!
//! - CIFAR-10/100 from the official binary archives ([`Cifar`]), downloaded once with a
//!   progress bar and verified, or read from a local archive or extracted folder;
//! - ImageNet-2012 (`{root}/train/<class>/*`, `{root}/val/<class>/*`) and any folder of class
//!   sub-directories ([`FolderDataset`]);
//! - MNIST-style IDX files, raw or gzipped ([`load_idx`]), e.g. Debian's Fashion-MNIST;
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
//! let train = Preprocess::Train { precrop: 40, crop: 32 };
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
mod loader;
mod mixup;
mod transform;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

pub use bit_hub::{FetchError, RemoteFile};
pub use cifar::{CIFAR_BASE_URL, CIFAR_BASE_URL_ENV, Cifar, extract_tar_gz};
pub use dataset::{ImageDataset, InMemoryDataset, Subset, check_decodes};
pub use error::{DataError, Result};
pub use fewshot::few_shot;
pub use folder::{FolderDataset, IMAGE_EXTENSIONS, ImageFiles, NonImagePolicy};
pub use idx::{DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, load_idx};
pub use loader::{Batch, BatchStream, LoaderConfig, MAX_WORKERS};
pub use mixup::{Mixup, MixupStep};
pub use transform::{MAX_RESOLUTION, Preprocess};

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training examples.
    Train,
    /// The held-out examples (CIFAR/MNIST test set, ImageNet validation set).
    Test,
}

/// The datasets the `bit` command knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetName {
    /// CIFAR-10 (binary archive).
    Cifar10,
    /// CIFAR-100, fine labels (binary archive).
    Cifar100,
    /// ILSVRC-2012 as `{datadir}/train/<wnid>/*`, `{datadir}/val/<wnid>/*`.
    Imagenet2012,
    /// Any `{datadir}/train/<class>/*` with `{datadir}/{val,validation,test}/<class>/*`.
    Folder,
    /// Fashion-MNIST IDX files.
    FashionMnist,
    /// MNIST IDX files.
    Mnist,
    /// Unlabelled images at any depth of `{datadir}/train` and `{datadir}/{val,validation,test}`
    /// (for distillation, which needs no labels).
    Images,
}

impl DatasetName {
    /// Where the dataset is when no directory is given: Debian's `dataset-fashion-mnist`
    /// package for Fashion-MNIST; no other dataset has a known place.
    ///
    /// ```
    /// use bit_data::DatasetName;
    ///
    /// assert!(DatasetName::FashionMnist.default_dir().is_some());
    /// assert_eq!(DatasetName::Cifar10.default_dir(), None);
    /// ```
    pub fn default_dir(self) -> Option<PathBuf> {
        (self == Self::FashionMnist).then(|| PathBuf::from(DEBIAN_FASHION_MNIST_DIR))
    }
}

impl FromStr for DatasetName {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cifar10" => Self::Cifar10,
            "cifar100" => Self::Cifar100,
            "imagenet2012" => Self::Imagenet2012,
            "folder" => Self::Folder,
            "fashion_mnist" => Self::FashionMnist,
            "mnist" => Self::Mnist,
            "images" => Self::Images,
            other => return Err(DataError::UnknownDataset(other.to_string())),
        })
    }
}

/// A training and a validation split with the same classes.
#[derive(Clone)]
pub struct TrainValid {
    /// Training examples.
    pub train: Arc<dyn ImageDataset>,
    /// Validation examples.
    pub valid: Arc<dyn ImageDataset>,
}

/// Loads both splits of a named dataset from `datadir` (downloading CIFAR if needed).
pub fn load_train_valid(
    name: DatasetName,
    datadir: &Path,
    non_images: NonImagePolicy,
) -> Result<TrainValid> {
    let pair =
        |train: Arc<dyn ImageDataset>, valid: Arc<dyn ImageDataset>| TrainValid { train, valid };
    Ok(match name {
        DatasetName::Cifar10 | DatasetName::Cifar100 => {
            let cifar = if name == DatasetName::Cifar10 {
                Cifar::Cifar10
            } else {
                Cifar::Cifar100
            };
            pair(
                Arc::new(cifar.load(datadir, Split::Train)?),
                Arc::new(cifar.load(datadir, Split::Test)?),
            )
        }
        DatasetName::FashionMnist | DatasetName::Mnist => {
            let classes = (name == DatasetName::FashionMnist).then_some(&FASHION_MNIST_CLASSES[..]);
            pair(
                Arc::new(load_idx(datadir, Split::Train, classes)?),
                Arc::new(load_idx(datadir, Split::Test, classes)?),
            )
        }
        DatasetName::Images => {
            let valid_dir = held_out_dir(datadir, &["val", "validation", "test"]);
            pair(
                Arc::new(ImageFiles::under(datadir.join("train"), non_images)?),
                Arc::new(ImageFiles::under(valid_dir, non_images)?),
            )
        }
        DatasetName::Imagenet2012 | DatasetName::Folder => {
            let candidates: &[&str] = if name == DatasetName::Imagenet2012 {
                &["val"]
            } else {
                &["val", "validation", "test"]
            };
            let valid_dir = held_out_dir(datadir, candidates);
            let train = FolderDataset::open(datadir.join("train"), non_images)?;
            let valid = FolderDataset::open(&valid_dir, non_images)?;
            if let Some((t, v)) = train
                .classes()
                .iter()
                .zip(valid.classes())
                .find(|(t, v)| t != v)
            {
                return Err(DataError::ClassMismatch {
                    path: valid_dir,
                    detail: format!("`{v}` where training has `{t}`"),
                });
            }
            if train.classes().len() != valid.classes().len() {
                let detail = format!(
                    "{} classes, training has {}",
                    valid.classes().len(),
                    train.classes().len()
                );
                return Err(DataError::ClassMismatch {
                    path: valid_dir,
                    detail,
                });
            }
            pair(Arc::new(train), Arc::new(valid))
        }
    })
}

/// The first of `{datadir}/<candidate>` that is a directory (else the first candidate, whose
/// absence the loader then reports).
fn held_out_dir(datadir: &Path, candidates: &[&str]) -> PathBuf {
    candidates
        .iter()
        .map(|d| datadir.join(d))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| datadir.join(candidates[0]))
}

/// An independent, reproducible random stream for `(seed, stream, index)`.
pub(crate) fn rng_for(seed: u64, stream: u64, index: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(splitmix(splitmix(seed ^ stream.rotate_left(17)) ^ index))
}

/// SplitMix64's finaliser: a bijective scramble of 64 bits.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
