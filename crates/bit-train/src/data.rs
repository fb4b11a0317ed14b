//! A run's data: the training set (with its few-shot draw) and the validation set, checked
//! before the first step.

use std::path::Path;
use std::sync::Arc;

use bit_data::{DatasetName, ImageDataset, NonImagePolicy, Subset, load_train_valid};

use crate::config::RunSettings;
use crate::error::Result;
use crate::log::RunLog;

/// The training and validation sets of a run.
#[derive(Clone)]
pub struct TrainingData {
    /// What the run trains on.
    pub train: Arc<dyn ImageDataset>,
    /// What it evaluates on.
    pub valid: Arc<dyn ImageDataset>,
}

impl TrainingData {
    /// `dataset` from `datadir` as `run` says (evaluation subset, non-images) with an optional
    /// few-shot draw `(K, seed)`. Logs the sizes and skipped files, and checks that every
    /// validation image decodes: a broken file must cost seconds now, not the whole run at
    /// its end.
    pub(crate) fn load(
        run: &RunSettings,
        (dataset, datadir): (DatasetName, &Path),
        few_shot: Option<(usize, u64)>,
        log: &mut RunLog,
    ) -> Result<Self> {
        let policy = NonImagePolicy::from_skip_flag(run.skip_non_images);
        let data = load_train_valid(dataset, datadir, policy)?;
        let train: Arc<dyn ImageDataset> = match few_shot {
            Some((k, seed)) => Arc::new(bit_data::few_shot(data.train, k, seed)?),
            None => data.train,
        };
        let valid: Arc<dyn ImageDataset> = match run.max_eval_examples {
            Some(n) if n < data.valid.len() => {
                Arc::new(Subset::new(data.valid.clone(), (0..n).collect()))
            }
            _ => data.valid,
        };
        log.info(&format!(
            "Using a training set with {} images.",
            train.len()
        ));
        log.info(&format!(
            "Using a validation set with {} images.",
            valid.len()
        ));
        for path in train.skipped().iter().chain(valid.skipped()) {
            log.warn(&format!("Skipped {} (not an image)", path.display()));
        }
        bit_data::check_decodes(&*valid)?;
        Ok(Self { train, valid })
    }

    /// The class names of the training set.
    pub fn classes(&self) -> &[String] {
        self.train.classes()
    }
}
