//! Settings of a fine-tuning run: the reference `train.py` flags, plus explicit overrides.

use std::path::{Path, PathBuf};

use bit_data::DatasetName;
use bit_model::zoo::{self, ModelHub};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// One fine-tuning run (`bit train`). Field names follow the reference `train.py` flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TrainConfig {
    /// Name of this run: logs and checkpoints go to {logdir}/{name}/; running the same name
    /// again resumes it.
    #[cfg_attr(feature = "cli", arg(long))]
    pub name: String,
    /// A BiT model name (BiT-M-R50x1, BiT-S-R101x3, BiT-M-R152x2-ILSVRC2012, ...), read from
    /// {bit_pretrained_dir}/{model}.npz if it is there, else downloaded into the cache
    /// ($BIT_HOME); or a path to any BiT-format .npz.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: String,
    /// Where to write the run's logs, metrics and checkpoints.
    #[cfg_attr(feature = "cli", arg(long))]
    pub logdir: PathBuf,
    /// Where the pre-trained {model}.npz files are.
    #[cfg_attr(feature = "cli", arg(long = "bit_pretrained_dir", default_value = "."))]
    pub bit_pretrained_dir: PathBuf,
    /// cifar10, cifar100, imagenet2012 ({datadir}/train, {datadir}/val), folder ({datadir}/train
    /// and {datadir}/val|validation|test, one sub-directory per class), fashion_mnist, mnist.
    #[cfg_attr(feature = "cli", arg(long))]
    pub dataset: String,
    /// Where the dataset is: CIFAR is downloaded there if absent; fashion_mnist defaults to
    /// Debian's /usr/share/datasets/fashion-mnist.
    #[cfg_attr(feature = "cli", arg(long))]
    pub datadir: Option<PathBuf>,
    /// Few-shot: train on this many examples per class.
    #[cfg_attr(feature = "cli", arg(long = "examples_per_class"))]
    pub examples_per_class: Option<usize>,
    /// Seed of the few-shot draw (same seed, same examples, on any machine).
    #[cfg_attr(
        feature = "cli",
        arg(long = "examples_per_class_seed", default_value_t = 0)
    )]
    pub examples_per_class_seed: u64,
    /// Global batch size.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = bit_hyperrule::BASE_BATCH))]
    pub batch: usize,
    /// Split each batch into this many micro-batches (gradients accumulated), to fit memory.
    #[cfg_attr(feature = "cli", arg(long = "batch_split", default_value_t = 1))]
    pub batch_split: usize,
    /// Peak learning rate (for the global batch; not rescaled when --batch changes).
    #[cfg_attr(feature = "cli", arg(long = "base_lr", default_value_t = bit_hyperrule::BASE_LR))]
    pub base_lr: f64,
    /// Evaluate and checkpoint every this many steps (always at the end).
    #[cfg_attr(feature = "cli", arg(long = "eval_every"))]
    pub eval_every: Option<usize>,
    /// Threads decoding and augmenting images.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Self::WORKERS))]
    pub workers: usize,
    /// Do not write checkpoints or the final model.
    #[cfg_attr(feature = "cli", arg(long = "no-save", action = clap::ArgAction::SetFalse))]
    pub save: bool,
    /// Devices: cpu, or with a GPU build cuda / wgpu / vulkan (every GPU of that backend) or a
    /// list such as cuda:0,cuda:1.
    #[cfg_attr(feature = "cli", arg(long, default_value = "cpu"))]
    pub device: String,
    /// Seed of shuffling, augmentation and mixup.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Train for this many steps instead of the HyperRule's (same warmup/decay proportions).
    #[cfg_attr(feature = "cli", arg(long))]
    pub steps: Option<usize>,
    /// Resolution instead of the HyperRule's, as PRECROP,CROP (e.g. 40,32).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_resolution))]
    pub resolution: Option<(usize, usize)>,
    /// Evaluate on only the first N validation examples.
    #[cfg_attr(feature = "cli", arg(long = "max_eval_examples"))]
    pub max_eval_examples: Option<usize>,
    /// Skip (with a warning) files in class folders that are not images, instead of failing.
    #[cfg_attr(feature = "cli", arg(long = "skip_non_images"))]
    pub skip_non_images: bool,
}

/// `PRECROP,CROP`, e.g. `40,32`.
#[cfg(feature = "cli")]
fn parse_resolution(s: &str) -> std::result::Result<(usize, usize), String> {
    let (pre, crop) = s.split_once(',').ok_or("expected PRECROP,CROP")?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("`{v}`: {e}"));
    Ok((parse(pre)?, parse(crop)?))
}

impl TrainConfig {
    /// Default loader threads.
    pub const WORKERS: usize = 8;

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
            datadir: Some(datadir.into()),
            examples_per_class: None,
            examples_per_class_seed: 0,
            batch: bit_hyperrule::BASE_BATCH,
            batch_split: 1,
            base_lr: bit_hyperrule::BASE_LR,
            eval_every: None,
            workers: Self::WORKERS,
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

    /// The `.npz` to start from, resolved as every `bit` command resolves `--model`
    /// ([`ModelHub::locate`]): `--model` itself if it is a file, else
    /// `{bit_pretrained_dir}/{model}.npz`, else the released model of that name from the cache
    /// (`$BIT_HOME`), downloaded and verified if needed.
    pub fn checkpoint_path(&self) -> Result<PathBuf> {
        let hub = ModelHub::from_env()?.with_pretrained_dir(&self.bit_pretrained_dir);
        match hub.locate(&self.model) {
            Ok((path, _)) => Ok(path),
            Err(bit_model::Error::UnknownModel(_)) => Err(TrainError::MissingCheckpoint {
                path: self.bit_pretrained_dir.join(format!("{}.npz", self.model)),
                model: self.model.clone(),
            }),
            Err(source) => Err(TrainError::Download {
                model: zoo::find(&self.model).map_or_else(|_| self.model.clone(), |e| e.name),
                dir: self.bit_pretrained_dir.clone(),
                source: Box::new(source),
            }),
        }
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

/// `datadir`, else the dataset's known place (see [`DatasetName::default_dir`]).
pub(crate) fn datadir_or_default(dataset: DatasetName, datadir: Option<&Path>) -> Result<PathBuf> {
    datadir
        .map(Path::to_path_buf)
        .or_else(|| dataset.default_dir())
        .ok_or_else(|| TrainError::InvalidConfig("--datadir is required for this dataset".into()))
}
