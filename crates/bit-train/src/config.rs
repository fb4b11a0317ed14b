//! Settings of a fine-tuning run: the reference `train.py` flags, plus explicit overrides.

use std::path::{Path, PathBuf};

use bit_data::DatasetName;
use bit_model::zoo::{self, ModelHub};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// One fine-tuning run. Field names follow the reference flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Run name: logs and checkpoints go to `{logdir}/{name}/`; running the same name again
    /// resumes.
    pub name: String,
    /// A released BiT model name (`BiT-M-R50x1`: read from `{bit_pretrained_dir}/{model}.npz`
    /// if it is there, else fetched into the verified cache, see `bit_model::zoo`) or a path
    /// to any BiT-format `.npz`.
    pub model: String,
    /// Where runs are written.
    pub logdir: PathBuf,
    /// Where `{model}.npz` files are looked up first.
    pub bit_pretrained_dir: PathBuf,
    /// Which dataset.
    pub dataset: String,
    /// Where the dataset is (or is downloaded to, for CIFAR).
    pub datadir: PathBuf,
    /// Few-shot: K training examples per class.
    pub examples_per_class: Option<usize>,
    /// Seed of the few-shot draw.
    pub examples_per_class_seed: u64,
    /// Global batch size.
    pub batch: usize,
    /// Micro-batches per update (the batch is processed in `batch / batch_split` pieces).
    pub batch_split: usize,
    /// Peak learning rate.
    pub base_lr: f64,
    /// Evaluate (and checkpoint) every this many steps; always at the end.
    pub eval_every: Option<usize>,
    /// Loader threads.
    pub workers: usize,
    /// Write checkpoints.
    pub save: bool,
    /// Devices, e.g. `cpu`, `cuda` (all GPUs), `cuda:0,cuda:1`.
    pub device: String,
    /// Seed of shuffling, augmentation and mixup.
    pub seed: u64,
    /// Override of the HyperRule's number of steps (the schedule keeps its proportions).
    pub steps: Option<usize>,
    /// Override of the HyperRule's `(pre-crop, crop)` resolution.
    pub resolution: Option<(usize, usize)>,
    /// Evaluate on at most this many validation examples (the first ones).
    pub max_eval_examples: Option<usize>,
    /// Skip non-image files in class folders (with a warning) instead of failing.
    pub skip_non_images: bool,
}

impl TrainConfig {
    /// The reference defaults: batch 512, no split, lr 0.003, 8 workers, saving on, CPU.
    pub fn new(
        name: impl Into<String>,
        model: impl Into<String>,
        dataset: impl Into<String>,
        datadir: impl Into<PathBuf>,
        logdir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            model: model.into(),
            logdir: logdir.into(),
            bit_pretrained_dir: PathBuf::from("."),
            dataset: dataset.into(),
            datadir: datadir.into(),
            examples_per_class: None,
            examples_per_class_seed: 0,
            batch: bit_hyperrule::BASE_BATCH,
            batch_split: 1,
            base_lr: bit_hyperrule::BASE_LR,
            eval_every: None,
            workers: 8,
            save: true,
            device: "cpu".into(),
            seed: 0,
            steps: None,
            resolution: None,
            max_eval_examples: None,
            skip_non_images: false,
        }
    }

    /// The run directory, `{logdir}/{name}`.
    pub fn run_dir(&self) -> PathBuf {
        self.logdir.join(&self.name)
    }

    /// Checks the settings that can be checked without touching data.
    pub fn validate(&self) -> Result<DatasetName> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        check_run_settings(
            &self.name,
            (self.batch, self.batch_split),
            self.eval_every,
            self.max_eval_examples,
            self.workers,
        )?;
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return bad(format!("--base_lr {} must be positive", self.base_lr));
        }
        if self.steps == Some(0) || self.examples_per_class == Some(0) {
            return bad("--steps and --examples_per_class must be at least 1".into());
        }
        if let Some((precrop, crop)) = self.resolution {
            bit_data::Preprocess::Train { precrop, crop }
                .validate()
                .map_err(|e| TrainError::InvalidConfig(format!("--resolution: {e}")))?;
        }
        match self.dataset.parse()? {
            DatasetName::Images => bad(
                "--dataset images has no labels to fine-tune on: use class folders \
                 (--dataset folder), or `bit distill`, which needs no labels"
                    .into(),
            ),
            dataset => Ok(dataset),
        }
    }

    /// The training loader: micro-batches of `batch / batch_split`.
    pub(crate) fn loader(&self) -> bit_data::LoaderConfig {
        loader(self.batch, self.batch_split, self.workers, self.seed)
    }

    /// The loop's settings (no gradient clipping, as the reference).
    pub(crate) fn loop_settings(&self) -> crate::run::LoopSettings {
        crate::run::LoopSettings {
            batch_split: self.batch_split,
            eval_every: self.eval_every,
            save: self.save,
            clip_global_norm: None,
        }
    }

    /// The `.npz` to start from: `--model` itself if it is a file, else
    /// `{bit_pretrained_dir}/{model}.npz`, else the released model of that name from the cache
    /// (`$BIT_HOME`), downloaded and verified if needed.
    pub fn checkpoint_path(&self) -> Result<PathBuf> {
        let direct = Path::new(&self.model);
        if direct.is_file() {
            return Ok(direct.to_path_buf());
        }
        let path = self.bit_pretrained_dir.join(format!("{}.npz", self.model));
        if path.is_file() {
            return Ok(path);
        }
        let Ok(entry) = zoo::find(&self.model) else {
            return Err(TrainError::MissingCheckpoint {
                path,
                model: self.model.clone(),
            });
        };
        let download = |source| TrainError::Download {
            model: entry.name.clone(),
            dir: self.bit_pretrained_dir.clone(),
            source: Box::new(source),
        };
        ModelHub::from_env()
            .and_then(|hub| hub.fetch(&entry))
            .map_err(download)
    }
}

/// The loader of a run: micro-batches of `batch / batch_split`.
pub(crate) fn loader(
    batch: usize,
    batch_split: usize,
    workers: usize,
    seed: u64,
) -> bit_data::LoaderConfig {
    bit_data::LoaderConfig {
        batch_size: batch / batch_split,
        workers,
        seed,
        prefetch: 2,
    }
}

/// The checks every run's settings share: a plain run name, a batch that splits evenly, and
/// positive counts.
pub(crate) fn check_run_settings(
    name: &str,
    (batch, batch_split): (usize, usize),
    eval_every: Option<usize>,
    max_eval_examples: Option<usize>,
    workers: usize,
) -> Result<()> {
    let bad = |m: String| Err(TrainError::InvalidConfig(m));
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return bad(format!("--name `{name}` must be a plain directory name"));
    }
    if batch == 0 || batch_split == 0 || !batch.is_multiple_of(batch_split) {
        return bad(format!(
            "--batch {batch} must be a positive multiple of --batch_split {batch_split}"
        ));
    }
    if eval_every == Some(0) {
        return bad("--eval_every must be at least 1".into());
    }
    if max_eval_examples == Some(0) {
        return bad("--max_eval_examples must be at least 1".into());
    }
    if workers > bit_data::MAX_WORKERS {
        return bad(format!(
            "--workers {workers}: at most {}",
            bit_data::MAX_WORKERS
        ));
    }
    Ok(())
}

/// `datadir`, which only Fashion-MNIST may leave out (Debian installs it in a known place).
pub(crate) fn datadir_or_default(dataset: DatasetName, datadir: Option<&Path>) -> Result<PathBuf> {
    match (datadir, dataset) {
        (Some(dir), _) => Ok(dir.to_path_buf()),
        (None, DatasetName::FashionMnist) => Ok(PathBuf::from(bit_data::DEBIAN_FASHION_MNIST_DIR)),
        (None, _) => Err(TrainError::InvalidConfig(
            "--datadir is required for this dataset".into(),
        )),
    }
}
