//! The 19 tasks of VTAB-1k (`google-research/task_adaptation`), as BiT evaluates on them:
//! 1000 training examples (`train800val200`) and the task's test split, with the labels the
//! benchmark derives (clevr's counts and distances, kitti's distances, dSprites' bins).
//!
//! Each task reads either an image-list bundle, `{datadir}/{task}/train800val200.txt` and
//! `test.txt` (`path label` lines), or the TFDS prepared directory of its dataset,
//! `{datadir}/{tfds name}[/{config}]/{version}/` (the newest version present).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{DataError, Result};
use crate::folder::FolderDataset;
use crate::registry::TrainValid;
use crate::tfds::{ImageFeature, TfdsDataset, TfdsSplit, tfds_class_names};
use crate::tfrecord::Example;
use crate::transform::Augment;

/// VTAB's three task groups, reported as separate means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VtabGroup {
    /// Natural images (Caltech101 ... SVHN).
    Natural,
    /// Specialized equipment: medical and satellite images.
    Specialized,
    /// Structure: counting, distances, positions, orientations.
    Structured,
}

impl VtabGroup {
    /// The three groups in VTAB's order.
    pub const ALL: [Self; 3] = [Self::Natural, Self::Specialized, Self::Structured];
}

impl fmt::Display for VtabGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Natural => "natural",
            Self::Specialized => "specialized",
            Self::Structured => "structured",
        })
    }
}

/// One VTAB-1k task, named as BiT's released fine-tunes name it (`clevr-count`, ...).
///
/// ```
/// use bit_data::{VtabGroup, VtabTask};
///
/// let task: VtabTask = "dsprites-orientation".parse()?;
/// assert_eq!((task.classes(), task.group()), (16, VtabGroup::Structured));
/// assert!(!task.augment().flip); // a mirrored sprite has another orientation
/// assert_eq!(VtabTask::ALL.len(), 19);
/// # Ok::<(), bit_data::DataError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VtabTask {
    /// Caltech-101 (102 classes with background).
    Caltech101,
    /// CIFAR-100.
    Cifar100,
    /// Describable Textures.
    Dtd,
    /// Oxford Flowers 102.
    OxfordFlowers102,
    /// Oxford-IIIT Pets.
    OxfordIiitPet,
    /// SUN397 (TFDS config `tfds`).
    Sun397,
    /// SVHN (cropped digits).
    Svhn,
    /// PatchCamelyon.
    PatchCamelyon,
    /// EuroSAT (RGB).
    Eurosat,
    /// RESISC45.
    Resisc45,
    /// Diabetic retinopathy (TFDS config `btgraham-300`).
    DiabeticRetinopathy,
    /// CLEVR: number of objects (3-10).
    ClevrCount,
    /// CLEVR: depth of the closest object, in 6 bins.
    ClevrDistance,
    /// DeepMind Lab: distance and reward of the object in view.
    Dmlab,
    /// KITTI: distance of the closest vehicle, in 4 bins (the last: none).
    KittiDistance,
    /// dSprites: x position, 16 bins.
    DspritesXpos,
    /// dSprites: orientation, 16 bins.
    DspritesOrientation,
    /// smallNORB: azimuth (18).
    SmallnorbAzimuth,
    /// smallNORB: elevation (9).
    SmallnorbElevation,
}

/// Where a task's 200 validation examples come from.
enum Val200 {
    /// `validation[:200]`.
    Validation,
    /// `train[n:n+200]`, `n = int(len(train) * percent / 100)`.
    TrainAfter(usize),
    /// `test[:200]` (smallNORB).
    TestStart,
}

/// Where a task's test examples come from.
enum TestSource {
    /// The `test` split.
    Whole,
    /// The `validation` split (clevr: its test split has no labels).
    Validation,
    /// `train[int(len * percent / 100):]` (datasets with a single split).
    TrainFrom(usize),
    /// `test[50%:]` (smallNORB).
    SecondHalf,
}

/// How a record's label is derived.
enum Label {
    /// An integer feature, as it is.
    Feature(&'static str),
    /// `floor(value * into / of)` (dSprites' bins).
    Binned {
        key: &'static str,
        of: usize,
        into: usize,
    },
    /// The number of values of `key`, minus `offset` (clevr's count).
    Count { key: &'static str, offset: usize },
    /// The smallest `index`-th coordinate of `key` (triples, one per object; kitti keeps only
    /// the objects whose `objects/type` is below 3: car, van, truck), with `absent` appended,
    /// binned by the last threshold below it.
    Closest {
        key: &'static str,
        vehicles_only: bool,
        absent: Option<f32>,
        thresholds: &'static [f32],
    },
}

impl VtabTask {
    /// The 19 tasks in VTAB's order: natural, specialized, structured.
    pub const ALL: [Self; 19] = [
        Self::Caltech101,
        Self::Cifar100,
        Self::Dtd,
        Self::OxfordFlowers102,
        Self::OxfordIiitPet,
        Self::Sun397,
        Self::Svhn,
        Self::PatchCamelyon,
        Self::Eurosat,
        Self::Resisc45,
        Self::DiabeticRetinopathy,
        Self::ClevrCount,
        Self::ClevrDistance,
        Self::Dmlab,
        Self::KittiDistance,
        Self::DspritesXpos,
        Self::DspritesOrientation,
        Self::SmallnorbAzimuth,
        Self::SmallnorbElevation,
    ];

    /// The task's name: the suffix of BiT's released fine-tunes
    /// (`BiT-M-R50x1-run0-{name}.npz`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Caltech101 => "caltech101",
            Self::Cifar100 => "cifar100",
            Self::Dtd => "dtd",
            Self::OxfordFlowers102 => "oxford_flowers102",
            Self::OxfordIiitPet => "oxford_iiit_pet",
            Self::Sun397 => "sun397",
            Self::Svhn => "svhn",
            Self::PatchCamelyon => "patch_camelyon",
            Self::Eurosat => "eurosat",
            Self::Resisc45 => "resisc45",
            Self::DiabeticRetinopathy => "diabetic_retinopathy",
            Self::ClevrCount => "clevr-count",
            Self::ClevrDistance => "clevr-distance",
            Self::Dmlab => "dmlab",
            Self::KittiDistance => "kitti-distance",
            Self::DspritesXpos => "dsprites-xpos",
            Self::DspritesOrientation => "dsprites-orientation",
            Self::SmallnorbAzimuth => "smallnorb-azimuth",
            Self::SmallnorbElevation => "smallnorb-elevation",
        }
    }

    /// The task's group.
    pub fn group(self) -> VtabGroup {
        match self {
            Self::Caltech101
            | Self::Cifar100
            | Self::Dtd
            | Self::OxfordFlowers102
            | Self::OxfordIiitPet
            | Self::Sun397
            | Self::Svhn => VtabGroup::Natural,
            Self::PatchCamelyon | Self::Eurosat | Self::Resisc45 | Self::DiabeticRetinopathy => {
                VtabGroup::Specialized
            }
            _ => VtabGroup::Structured,
        }
    }

    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            Self::Caltech101 | Self::OxfordFlowers102 => 102,
            Self::Cifar100 => 100,
            Self::Dtd => 47,
            Self::OxfordIiitPet => 37,
            Self::Sun397 => 397,
            Self::Svhn | Self::Eurosat => 10,
            Self::PatchCamelyon => 2,
            Self::Resisc45 => 45,
            Self::DiabeticRetinopathy => 5,
            Self::ClevrCount => 8,
            Self::ClevrDistance | Self::Dmlab => 6,
            Self::KittiDistance => 4,
            Self::DspritesXpos | Self::DspritesOrientation => 16,
            Self::SmallnorbAzimuth => 18,
            Self::SmallnorbElevation => 9,
        }
    }

    /// The TFDS directory of the task's dataset under the data directory:
    /// `{name}` or `{name}/{config}` (the version directory below it is found).
    pub fn tfds_path(self) -> &'static str {
        match self {
            Self::Caltech101 => "caltech101",
            Self::Cifar100 => "cifar100",
            Self::Dtd => "dtd",
            Self::OxfordFlowers102 => "oxford_flowers102",
            Self::OxfordIiitPet => "oxford_iiit_pet",
            Self::Sun397 => "sun397/tfds",
            Self::Svhn => "svhn_cropped",
            Self::PatchCamelyon => "patch_camelyon",
            Self::Eurosat => "eurosat/rgb",
            Self::Resisc45 => "resisc45",
            Self::DiabeticRetinopathy => "diabetic_retinopathy_detection/btgraham-300",
            Self::ClevrCount | Self::ClevrDistance => "clevr",
            Self::Dmlab => "dmlab",
            Self::KittiDistance => "kitti",
            Self::DspritesXpos | Self::DspritesOrientation => "dsprites",
            Self::SmallnorbAzimuth | Self::SmallnorbElevation => "smallnorb",
        }
    }

    /// The training augmentation: BiT drops random crops and flips where they change the
    /// label ("e.g. when predicting object orientation or coordinates in pixel space"); the
    /// released code does not list the tasks, so this list is ours (see docs/vtab.md): no
    /// random crop where the label counts or measures objects that a crop can cut away or
    /// shift, no flip where the label is a horizontal position or an orientation.
    pub fn augment(self) -> Augment {
        let (random_crop, flip) = match self {
            Self::ClevrCount | Self::ClevrDistance | Self::KittiDistance | Self::Dmlab => {
                (false, true)
            }
            Self::DspritesXpos => (false, false),
            Self::DspritesOrientation | Self::SmallnorbAzimuth => (true, false),
            _ => (true, true),
        };
        Augment { random_crop, flip }
    }

    fn val200(self) -> Val200 {
        match self {
            Self::Caltech101 | Self::Cifar100 | Self::Svhn => Val200::TrainAfter(90),
            Self::ClevrCount | Self::ClevrDistance => Val200::TrainAfter(90),
            Self::OxfordIiitPet | Self::DspritesXpos | Self::DspritesOrientation => {
                Val200::TrainAfter(80)
            }
            Self::Eurosat | Self::Resisc45 => Val200::TrainAfter(60),
            Self::SmallnorbAzimuth | Self::SmallnorbElevation => Val200::TestStart,
            _ => Val200::Validation,
        }
    }

    fn test(self) -> TestSource {
        match self {
            Self::ClevrCount | Self::ClevrDistance => TestSource::Validation,
            Self::DspritesXpos | Self::DspritesOrientation => TestSource::TrainFrom(90),
            Self::Eurosat | Self::Resisc45 => TestSource::TrainFrom(80),
            Self::SmallnorbAzimuth | Self::SmallnorbElevation => TestSource::SecondHalf,
            _ => TestSource::Whole,
        }
    }

    fn label(self) -> Label {
        match self {
            Self::ClevrCount => Label::Count {
                key: "objects/size",
                offset: 3,
            },
            Self::ClevrDistance => Label::Closest {
                key: "objects/pixel_coords",
                vehicles_only: false,
                absent: None,
                thresholds: &[0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0],
            },
            Self::KittiDistance => Label::Closest {
                key: "objects/location",
                vehicles_only: true,
                absent: Some(1000.0),
                thresholds: &[-100.0, 8.0, 20.0, 999.0],
            },
            Self::DspritesXpos => Label::Binned {
                key: "label_x_position",
                of: 32,
                into: 16,
            },
            Self::DspritesOrientation => Label::Binned {
                key: "label_orientation",
                of: 40,
                into: 16,
            },
            Self::SmallnorbAzimuth => Label::Feature("label_azimuth"),
            Self::SmallnorbElevation => Label::Feature("label_elevation"),
            _ => Label::Feature("label"),
        }
    }

    /// The 1000 training examples (`train800val200`) as the training split and the task's
    /// test split as the validation split, from the image-list bundle `{datadir}/{name}/` if
    /// it has `train800val200.txt`, else from the TFDS directory.
    pub fn open(self, datadir: &Path) -> Result<TrainValid> {
        let bundle = datadir.join(self.name());
        if self.has_bundle(datadir) {
            let list = |file: &str| -> Result<Arc<dyn crate::ImageDataset>> {
                Ok(Arc::new(FolderDataset::from_list(
                    &bundle.join(file),
                    self.classes(),
                )?))
            };
            return Ok(TrainValid {
                train: list("train800val200.txt")?,
                valid: list("test.txt")?,
            });
        }
        let dir = self.tfds_version_dir(datadir)?;
        let split = |name: &str| TfdsSplit::open(&dir, name);
        let train = split("train")?;
        let val200 = match self.val200() {
            Val200::TrainAfter(p) => (None, percent(train.len(), p)),
            Val200::Validation => (Some(split("validation")?), 0),
            Val200::TestStart => (Some(split("test")?), 0),
        };
        let test_split = match self.test() {
            TestSource::Whole | TestSource::SecondHalf => split("test")?,
            TestSource::Validation => split("validation")?,
            TestSource::TrainFrom(_) => train.clone(),
        };
        let test_range = match self.test() {
            TestSource::TrainFrom(p) => percent(train.len(), p)..train.len(),
            TestSource::SecondHalf => tfds_half(test_split.len())..test_split.len(),
            TestSource::Whole | TestSource::Validation => 0..test_split.len(),
        };
        let (val_split, val_start) = val200;
        let val_split = val_split.as_ref().unwrap_or(&train);
        if train.len() < 800 || val_split.len() < val_start + 200 {
            return Err(DataError::Format {
                path: dir,
                reason: format!(
                    "too few examples for VTAB-1k's train800 / val200 ({} training, {} in the \
                     validation source)",
                    train.len(),
                    val_split.len()
                ),
            });
        }
        let classes = self.class_names(&dir)?;
        let image = ImageFeature {
            key: "image".into(),
            // dSprites' images are 0/1 masks; task_adaptation multiplies them by 255.
            scale: match self {
                Self::DspritesXpos | Self::DspritesOrientation => 255,
                _ => 1,
            },
        };
        let rule = self.label();
        let label = move |e: &Example| rule.of(e);
        let slices: [(&TfdsSplit, Range<usize>); 2] =
            [(&train, 0..800), (val_split, val_start..val_start + 200)];
        let train1k = TfdsDataset::open(&slices, &image, &label, classes.clone())?;
        let test = TfdsDataset::open(&[(&test_split, test_range)], &image, &label, classes)?;
        Ok(TrainValid {
            train: Arc::new(train1k),
            valid: Arc::new(test),
        })
    }

    /// Where the task's data is: its image-list bundle, else its TFDS version directory; an
    /// error saying where it was looked for if neither is there. Cheap (nothing is read): how
    /// a benchmark of many tasks checks them all before it starts.
    pub fn source(self, datadir: &Path) -> Result<PathBuf> {
        match self.has_bundle(datadir) {
            true => Ok(datadir.join(self.name())),
            false => self.tfds_version_dir(datadir),
        }
    }

    fn has_bundle(self, datadir: &Path) -> bool {
        datadir
            .join(self.name())
            .join("train800val200.txt")
            .is_file()
    }

    /// `{datadir}/{tfds_path}/{newest version}` (versions `MAJOR.MINOR.PATCH`).
    fn tfds_version_dir(self, datadir: &Path) -> Result<PathBuf> {
        let base = datadir.join(self.tfds_path());
        let entries = std::fs::read_dir(&base).map_err(|source| DataError::Format {
            path: base.clone(),
            reason: format!(
                "{source}: VTAB task {} needs {}/train800val200.txt + test.txt, or the TFDS \
                 dataset prepared under {} (see docs/vtab.md)",
                self.name(),
                datadir.join(self.name()).display(),
                base.display()
            ),
        })?;
        let mut versions: Vec<(Vec<u64>, PathBuf)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .filter_map(|p| {
                let version = p
                    .file_name()?
                    .to_str()?
                    .split('.')
                    .map(|n| n.parse().ok())
                    .collect::<Option<Vec<u64>>>()?;
                Some((version, p))
            })
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, p)| p)
            .ok_or_else(|| DataError::Format {
                path: base,
                reason: "no version directory (e.g. 3.0.1/) of a prepared TFDS dataset".into(),
            })
    }

    /// TFDS's class names where the label is a class-label feature as it is (and its
    /// `labels.txt` has the right count), else the label numbers.
    fn class_names(self, dir: &Path) -> Result<Vec<String>> {
        if let Label::Feature(key) = self.label()
            && let Some(names) = tfds_class_names(dir, key)?
            && names.len() == self.classes()
        {
            return Ok(names);
        }
        Ok((0..self.classes()).map(|c| c.to_string()).collect())
    }
}

impl Label {
    fn of(&self, e: &Example) -> std::result::Result<usize, String> {
        let scalar = |key: &str| match e.int64s(key)? {
            [v] if *v >= 0 => Ok(*v as usize),
            other => Err(format!(
                "`{key}` is {other:?}, not one non-negative integer"
            )),
        };
        match *self {
            Label::Feature(key) => scalar(key),
            Label::Binned { key, of, into } => Ok(scalar(key)? * into / of),
            Label::Count { key, offset } => {
                let n = match e.int64s(key) {
                    Ok(v) => v.len(),
                    Err(_) => e.floats(key)?.len(),
                };
                n.checked_sub(offset)
                    .ok_or_else(|| format!("{n} objects, fewer than {offset}"))
            }
            Label::Closest {
                key,
                vehicles_only,
                absent,
                thresholds,
            } => {
                let coords = e.floats(key)?;
                if coords.len() % 3 != 0 {
                    return Err(format!("`{key}` has {} values, not triples", coords.len()));
                }
                let keep: Vec<bool> = match vehicles_only {
                    true => e.int64s("objects/type")?.iter().map(|&t| t < 3).collect(),
                    false => vec![true; coords.len() / 3],
                };
                if keep.len() != coords.len() / 3 {
                    return Err(format!(
                        "{} object types for {} objects",
                        keep.len(),
                        coords.len() / 3
                    ));
                }
                let closest = coords
                    .chunks(3)
                    .zip(&keep)
                    .filter(|&(_, &k)| k)
                    .map(|(c, _)| c[2])
                    .chain(absent)
                    .fold(f32::INFINITY, f32::min);
                if !closest.is_finite() {
                    return Err(format!("no objects in `{key}`"));
                }
                // task_adaptation: the largest i with thresholds[i] < distance (a distance past
                // the last bin is a label the dataset's class count refuses).
                thresholds
                    .iter()
                    .rposition(|&t| t < closest)
                    .ok_or_else(|| format!("a distance of {closest}, below the first bin"))
            }
        }
    }
}

/// `int(n * percent / 100)`, as task_adaptation computes split boundaries.
fn percent(n: usize, percent: usize) -> usize {
    n * percent / 100
}

/// Where TFDS's `[50%:]` starts: `round(n / 2)`, half to even, as Python rounds.
fn tfds_half(n: usize) -> usize {
    let half = n / 2;
    match n % 2 == 1 && half % 2 == 1 {
        true => half + 1,
        false => half,
    }
}

impl fmt::Display for VtabTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VtabTask {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
                DataError::InvalidArgument(format!(
                    "unknown VTAB task `{s}`; the tasks are {}",
                    names.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_boundaries_are_task_adaptations() {
        // caltech101: 3060 training images, val200 from int(0.9 * 3060) = 2754.
        assert_eq!(percent(3060, 90), 2754);
        // eurosat: 27000, 60/20/20.
        assert_eq!((percent(27000, 60), percent(27000, 80)), (16200, 21600));
        // smallnorb: test[50%:] of 24300.
        assert_eq!(tfds_half(24300), 12150);
        assert_eq!((tfds_half(5), tfds_half(7)), (2, 4)); // round(2.5) = 2, round(3.5) = 4
    }

    #[test]
    fn derived_labels_follow_task_adaptation() {
        let objects =
            |coords: Vec<f32>| Example::default().with_floats("objects/pixel_coords", coords);
        let distance = VtabTask::ClevrDistance.label();
        assert_eq!(
            distance.of(&objects(vec![1.0, 2.0, 9.2, 0.0, 0.0, 12.0])),
            Ok(3)
        );
        assert_eq!(distance.of(&objects(vec![1.0, 2.0, 7.9])), Ok(0));
        assert!(distance.of(&objects(vec![])).is_err());
        let count = VtabTask::ClevrCount.label();
        let sizes = |n: usize| Example::default().with_int64s("objects/size", vec![0; n]);
        assert_eq!(count.of(&sizes(3)), Ok(0));
        assert_eq!(count.of(&sizes(10)), Ok(7));
        assert!(count.of(&sizes(2)).is_err());
        let kitti = VtabTask::KittiDistance.label();
        let scene = |types: Vec<i64>, z: Vec<f32>| {
            let coords = z.iter().flat_map(|&z| [0.0, 0.0, z]).collect();
            Example::default()
                .with_int64s("objects/type", types)
                .with_floats("objects/location", coords)
        };
        assert_eq!(kitti.of(&scene(vec![0, 4], vec![30.0, 5.0])), Ok(2)); // the pedestrian at 5 m does not count
        assert_eq!(kitti.of(&scene(vec![1], vec![5.0])), Ok(0));
        assert_eq!(kitti.of(&scene(vec![], vec![])), Ok(3)); // no vehicle
        assert!(kitti.of(&scene(vec![0, 0], vec![5.0])).is_err());
        let xpos = VtabTask::DspritesXpos.label();
        let x = |v: i64| Example::default().with_int64s("label_x_position", vec![v]);
        assert_eq!(
            (xpos.of(&x(0)), xpos.of(&x(3)), xpos.of(&x(31))),
            (Ok(0), Ok(1), Ok(15))
        );
        let orientation = VtabTask::DspritesOrientation.label();
        let o = Example::default().with_int64s("label_orientation", vec![39]);
        assert_eq!(orientation.of(&o), Ok(15));
        assert!(VtabTask::Dmlab.label().of(&Example::default()).is_err());
    }

    #[test]
    fn names_round_trip() {
        for task in VtabTask::ALL {
            assert_eq!(task.name().parse::<VtabTask>().unwrap(), task);
        }
        let groups: Vec<usize> = VtabGroup::ALL
            .iter()
            .map(|g| VtabTask::ALL.iter().filter(|t| t.group() == *g).count())
            .collect();
        assert_eq!(groups, [7, 4, 8]);
    }
}
