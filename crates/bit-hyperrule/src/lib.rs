//! # bit-hyperrule
//!
//! BiT-HyperRule, the one set of fine-tuning hyperparameters Big Transfer uses for every
//! downstream task, exactly as `bit_hyperrule.py` of the reference code computes it:
//!
//! - **resolution**: images smaller than 96x96 pixels in area are resized to 160 and
//!   randomly cropped to 128; larger ones to 512 and 480;
//! - **schedule**: 500 steps below 20k examples, 10k below 500k, 20k above, with a linear
//!   warmup and three ÷10 decays;
//! - **mixup** with α = 0.1 from 20k examples on;
//! - **learning rate** 0.003 for a batch of 512.
//!
//! The function names mirror the reference module, so ported code reads the same.
//!
//! ```
//! use bit_hyperrule::{get_lr, get_mixup, get_resolution_from_dataset, get_schedule};
//!
//! assert_eq!(get_resolution_from_dataset("cifar10")?, (160, 128));
//! assert_eq!(get_schedule(1_000), [100, 200, 300, 400, 500]);
//! assert_eq!(get_mixup(1_000), 0.0);
//! assert_eq!(get_lr(200, 1_000, 0.003), Some(0.003)); // the decay boundaries are strict
//! assert_eq!(get_lr(500, 1_000, 0.003), None); // training is over
//! # Ok::<(), bit_hyperrule::UnknownImageSize>(())
//! ```
#![warn(missing_docs)]

use std::fmt;

/// The reference learning rate, for a global batch of [`BASE_BATCH`].
pub const BASE_LR: f64 = 0.003;
/// The global batch size the rule was designed for.
pub const BASE_BATCH: usize = 512;
/// Image area (in pixels) from which the large resolution is used.
pub const SMALL_IMAGE_AREA: usize = 96 * 96;
/// Training-set size from which mixup is used and the schedule grows.
pub const MIXUP_MIN_EXAMPLES: usize = 20_000;

/// Datasets whose image size the reference code knows: `(name, (height, width))`.
pub const KNOWN_DATASET_SIZES: [(&str, (usize, usize)); 5] = [
    ("cifar10", (32, 32)),
    ("cifar100", (32, 32)),
    ("oxford_iiit_pet", (224, 224)),
    ("oxford_flowers102", (224, 224)),
    ("imagenet2012", (224, 224)),
];

/// A dataset whose image size the rule does not know (the names the `bit` command can load
/// are another list: `bit_data::DatasetName`, whose error is `DataError::UnknownDataset`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported dataset `{0}`: BiT-HyperRule knows the image sizes of {known}; for any other \
     dataset pass its typical image size to `get_resolution((height, width))` \
     (on the command line: the dataset's own size is read from its images)",
    known = KNOWN_DATASET_SIZES.map(|(name, _)| name).join(", ")
)]
pub struct UnknownImageSize(pub String);

/// `(pre-crop, crop)` square sizes for images of `(height, width)`: training resizes to the
/// pre-crop size and takes a random crop; evaluation resizes straight to the crop size.
///
/// ```
/// assert_eq!(bit_hyperrule::get_resolution((95, 96)), (160, 128));
/// assert_eq!(bit_hyperrule::get_resolution((96, 96)), (512, 480));
/// ```
pub fn get_resolution(original_resolution: (usize, usize)) -> (usize, usize) {
    let (h, w) = original_resolution;
    if h * w < SMALL_IMAGE_AREA {
        (160, 128)
    } else {
        (512, 480)
    }
}

/// [`get_resolution`] for a dataset of [`KNOWN_DATASET_SIZES`].
pub fn get_resolution_from_dataset(dataset: &str) -> Result<(usize, usize), UnknownImageSize> {
    known_dataset_size(dataset).map(get_resolution)
}

/// The `(height, width)` of a dataset of [`KNOWN_DATASET_SIZES`].
fn known_dataset_size(dataset: &str) -> Result<(usize, usize), UnknownImageSize> {
    KNOWN_DATASET_SIZES
        .iter()
        .find(|(name, _)| *name == dataset)
        .map(|(_, size)| *size)
        .ok_or_else(|| UnknownImageSize(dataset.to_string()))
}

/// Mixup α for a training set of `dataset_size` examples (0 means no mixup).
pub fn get_mixup(dataset_size: usize) -> f64 {
    if dataset_size < MIXUP_MIN_EXAMPLES {
        0.0
    } else {
        0.1
    }
}

/// `[warmup end, decay 1, decay 2, decay 3, end]` in optimizer steps.
pub fn get_schedule(dataset_size: usize) -> [usize; 5] {
    if dataset_size < MIXUP_MIN_EXAMPLES {
        [100, 200, 300, 400, 500]
    } else if dataset_size < 500_000 {
        [500, 3000, 6000, 9000, 10_000]
    } else {
        [500, 6000, 12_000, 18_000, 20_000]
    }
}

/// Learning rate at optimizer step `step`, or `None` once training is over.
///
/// Linear warmup from 0 (step 0 uses lr 0), then `base_lr`, divided by 10 after each decay
/// boundary it has strictly passed: with the 500-step schedule, steps 100..=200 use
/// `base_lr`, 201..=300 `base_lr / 10`, and step 500 ends training after exactly 500 updates.
pub fn get_lr(step: usize, dataset_size: usize, base_lr: f64) -> Option<f64> {
    schedule_lr(&get_schedule(dataset_size), step, base_lr)
}

/// The learning-rate function of [`get_lr`] over any `[warmup, decays..., end]` schedule.
fn schedule_lr(schedule: &[usize], step: usize, base_lr: f64) -> Option<f64> {
    let (&warmup, rest) = schedule.split_first()?;
    let (&end, decays) = rest.split_last()?;
    if step < warmup {
        return Some(base_lr * step as f64 / warmup as f64);
    }
    if step >= end {
        return None;
    }
    let passed = decays.iter().filter(|&&b| b < step).count();
    Some(base_lr / 10f64.powi(passed as i32))
}

/// The settings the rule (plus any user overrides) chose for one fine-tuning run.
///
/// ```
/// use bit_hyperrule::HyperRule;
///
/// // Few-shot CIFAR-10 (5 examples x 10 classes) with the README's lighter setting.
/// let rule = HyperRule::for_dataset("cifar10", 50)?.with_batch(128).with_base_lr(0.001);
/// assert_eq!(rule.total_steps(), 500);
/// assert!((rule.lr(250).unwrap() - 0.0001).abs() < 1e-15); // after the first decay
/// println!("{rule}");
/// # Ok::<(), bit_hyperrule::UnknownImageSize>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct HyperRule {
    /// Training-set size the rule was computed for.
    pub dataset_size: usize,
    /// Resize-before-crop square size.
    pub precrop: usize,
    /// Training crop and evaluation size.
    pub crop: usize,
    /// Global batch size.
    pub batch: usize,
    /// Peak learning rate.
    pub base_lr: f64,
    /// Mixup α (0 = off).
    pub mixup_alpha: f64,
    /// `[warmup end, decays..., end]`.
    pub schedule: Vec<usize>,
}

impl HyperRule {
    /// The rule for `dataset_size` training images of `(height, width)` pixels.
    pub fn new(original_resolution: (usize, usize), dataset_size: usize) -> Self {
        let (precrop, crop) = get_resolution(original_resolution);
        Self {
            dataset_size,
            precrop,
            crop,
            batch: BASE_BATCH,
            base_lr: BASE_LR,
            mixup_alpha: get_mixup(dataset_size),
            schedule: get_schedule(dataset_size).to_vec(),
        }
    }

    /// The rule for a dataset of [`KNOWN_DATASET_SIZES`].
    pub fn for_dataset(dataset: &str, dataset_size: usize) -> Result<Self, UnknownImageSize> {
        Ok(Self::new(known_dataset_size(dataset)?, dataset_size))
    }

    /// Overrides the global batch size (the learning rate is *not* rescaled, like the
    /// reference scripts).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// Overrides the peak learning rate.
    pub fn with_base_lr(mut self, base_lr: f64) -> Self {
        self.base_lr = base_lr;
        self
    }

    /// Overrides the number of optimizer steps, keeping the warmup and decay boundaries at the
    /// same fractions of training as the rule's own schedule.
    pub fn with_total_steps(mut self, total_steps: usize) -> Self {
        let end = *self.schedule.last().expect("a schedule is never empty") as f64;
        self.schedule = self
            .schedule
            .iter()
            .map(|&b| ((b as f64 / end) * total_steps as f64).round() as usize)
            .collect();
        self
    }

    /// Number of optimizer updates.
    pub fn total_steps(&self) -> usize {
        *self.schedule.last().expect("a schedule is never empty")
    }

    /// Learning rate at `step`, `None` when training is over.
    pub fn lr(&self, step: usize) -> Option<f64> {
        schedule_lr(&self.schedule, step, self.base_lr)
    }
}

impl fmt::Display for HyperRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (warmup, decays) = (self.schedule[0], &self.schedule[1..self.schedule.len() - 1]);
        write!(
            f,
            "BiT-HyperRule for {} examples: resize {}px, crop {}px, batch {}, lr {} with {} warmup \
             steps and /10 after steps {:?}, {} steps, mixup {}",
            self.dataset_size,
            self.precrop,
            self.crop,
            self.batch,
            self.base_lr,
            warmup,
            decays,
            self.total_steps(),
            if self.mixup_alpha > 0.0 {
                format!("alpha {}", self.mixup_alpha)
            } else {
                "off".to_string()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_boundary_is_area_96x96() {
        for (hw, want) in [
            ((32, 32), (160, 128)),
            ((95, 97), (160, 128)),
            ((96, 96), (512, 480)),
            ((48, 192), (512, 480)),
            ((224, 224), (512, 480)),
        ] {
            assert_eq!(get_resolution(hw), want, "{hw:?}");
        }
    }

    #[test]
    fn known_datasets_and_unknown_error() {
        assert_eq!(get_resolution_from_dataset("cifar100"), Ok((160, 128)));
        assert_eq!(get_resolution_from_dataset("imagenet2012"), Ok((512, 480)));
        let err = get_resolution_from_dataset("svhn").unwrap_err();
        assert!(
            err.to_string().contains("svhn") && err.to_string().contains("get_resolution"),
            "{err}"
        );
    }

    #[test]
    fn mixup_and_schedule_boundaries() {
        for (n, mixup, schedule) in [
            (1, 0.0, [100, 200, 300, 400, 500]),
            (19_999, 0.0, [100, 200, 300, 400, 500]),
            (20_000, 0.1, [500, 3000, 6000, 9000, 10_000]),
            (499_999, 0.1, [500, 3000, 6000, 9000, 10_000]),
            (500_000, 0.1, [500, 6000, 12_000, 18_000, 20_000]),
        ] {
            assert_eq!(get_mixup(n), mixup, "{n}");
            assert_eq!(get_schedule(n), schedule, "{n}");
        }
    }

    #[test]
    fn lr_table_small_dataset() {
        let lr = |step| get_lr(step, 1_000, 0.003);
        for (step, want) in [
            (0, Some(0.0)),
            (1, Some(0.00003)),
            (50, Some(0.0015)),
            (99, Some(0.00297)),
            (100, Some(0.003)),
            (200, Some(0.003)),
            (201, Some(0.0003)),
            (300, Some(0.0003)),
            (301, Some(0.00003)),
            (400, Some(0.00003)),
            (401, Some(0.000003)),
            (499, Some(0.000003)),
            (500, None),
            (10_000, None),
        ] {
            match (lr(step), want) {
                (Some(got), Some(want)) => assert!(
                    (got - want).abs() <= 1e-12 * want.max(1.0),
                    "step {step}: {got} vs {want}"
                ),
                (got, want) => assert_eq!(got, want, "step {step}"),
            }
        }
        // Exactly 500 updates: steps 0..500 all have a learning rate.
        assert_eq!((0..).take_while(|&s| lr(s).is_some()).count(), 500);
    }

    #[test]
    fn lr_table_large_datasets() {
        for (n, step, want) in [
            (50_000, 499, Some(0.003 * 499.0 / 500.0)),
            (50_000, 3000, Some(0.003)),
            (50_000, 3001, Some(0.0003)),
            (50_000, 9001, Some(0.000003)),
            (50_000, 10_000, None),
            (1_281_167, 6000, Some(0.003)),
            (1_281_167, 12_001, Some(0.00003)),
            (1_281_167, 19_999, Some(0.000003)),
            (1_281_167, 20_000, None),
        ] {
            match (get_lr(step, n, 0.003), want) {
                (Some(got), Some(want)) => {
                    assert!((got - want).abs() <= 1e-15, "{n}/{step}: {got} vs {want}")
                }
                (got, want) => assert_eq!(got, want, "{n}/{step}"),
            }
        }
    }

    #[test]
    fn overrides_and_summary() {
        let rule = HyperRule::for_dataset("cifar10", 50_000)
            .unwrap()
            .with_batch(128)
            .with_base_lr(0.001);
        assert_eq!(
            (rule.precrop, rule.crop, rule.batch, rule.mixup_alpha),
            (160, 128, 128, 0.1)
        );
        assert_eq!(rule.lr(3000), Some(0.001));
        let short = rule.clone().with_total_steps(1000);
        assert_eq!(short.schedule, [50, 300, 600, 900, 1000]);
        assert_eq!(short.lr(1000), None);
        let line = rule.to_string();
        assert!(
            line.contains("batch 128")
                && line.contains("10000 steps")
                && line.contains("mixup alpha 0.1"),
            "{line}"
        );
        assert!(matches!(
            HyperRule::for_dataset("mnist", 10),
            Err(UnknownImageSize(_))
        ));
    }
}
