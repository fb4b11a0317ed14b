//! The datasets the `bit` command knows by name, and loading a named dataset's two splits.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::cifar::Cifar;
use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::folder::{FolderDataset, ImageFiles, NonImagePolicy};
use crate::idx::{DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, load_idx};
use crate::transform::Augment;
use crate::vtab::VtabTask;

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training examples.
    Train,
    /// The held-out examples the runs evaluate on (CIFAR/MNIST's test set, ImageNet's
    /// validation set): one name everywhere, as the CLI's `--split valid`.
    Valid,
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
    /// A VTAB-1k task (`vtab/<task>`): its 1000 training examples and its test split, from
    /// an image-list bundle or the TFDS directory under `datadir` ([`VtabTask::open`]).
    Vtab(VtabTask),
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

    /// The random augmentations fine-tuning applies: both of BiT's, except on the VTAB tasks
    /// whose labels they change ([`VtabTask::augment`]).
    ///
    /// ```
    /// use bit_data::{Augment, DatasetName};
    ///
    /// assert_eq!(DatasetName::Cifar10.augment(), Augment::default());
    /// let count: DatasetName = "vtab/clevr-count".parse()?;
    /// assert!(!count.augment().random_crop);
    /// # Ok::<(), bit_data::DataError>(())
    /// ```
    pub fn augment(self) -> Augment {
        match self {
            Self::Vtab(task) => task.augment(),
            _ => Augment::default(),
        }
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
            other => match other.strip_prefix("vtab/") {
                Some(task) => Self::Vtab(task.parse()?),
                None => return Err(DataError::UnknownDataset(other.to_string())),
            },
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
                Arc::new(cifar.load(datadir, Split::Valid)?),
            )
        }
        DatasetName::FashionMnist | DatasetName::Mnist => {
            let classes = (name == DatasetName::FashionMnist).then_some(&FASHION_MNIST_CLASSES[..]);
            pair(
                Arc::new(load_idx(datadir, Split::Train, classes)?),
                Arc::new(load_idx(datadir, Split::Valid, classes)?),
            )
        }
        DatasetName::Images => {
            let valid_dir = held_out_dir(datadir, &["val", "validation", "test"]);
            pair(
                Arc::new(ImageFiles::under(datadir.join("train"), non_images)?),
                Arc::new(ImageFiles::under(valid_dir, non_images)?),
            )
        }
        DatasetName::Vtab(task) => task.open(datadir)?,
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
