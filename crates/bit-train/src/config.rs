//! Settings of the runs: what every run has ([`RunSettings`]), what fine-tuning adds
//! ([`TrainConfig`]: the reference `train.py` flags, plus explicit overrides) and what
//! distillation adds ([`DistillConfig`]: the models and the recipe of Beyer et al. 2022).

use std::path::PathBuf;

use bit_data::{Augment, DatasetName, Preprocess};
use bit_device::Compute;
use bit_model::Trainable;
use bit_zoo::{self as zoo, ModelHub, PretrainedDir};
use serde::{Deserialize, Serialize};

use burn::optim::{AdamWConfig, ModuleOptimizer};

use crate::error::{Result, TrainError};
use crate::memory::BatchSplit;
use crate::parallel::Devices;
use crate::schedule::WarmupCosine;

/// The most optimizer steps a run takes: far beyond any BiT schedule (the HyperRule's longest
/// is 20k steps, upstream pre-training 1M), near enough that a mistyped count is refused
/// instead of running for centuries.
pub const MAX_STEPS: usize = 100_000_000;

/// The largest `--batch`: 16 times BiT's upstream pre-training batch (4096; fine-tuning uses
/// 512). A step's images are decoded, augmented and held at once, so a batch is bounded by
/// memory: a mistyped `--batch 99999999999` is refused here instead of sizing a micro-batch of
/// tens of thousands of images and aborting on an allocation.
pub const MAX_BATCH: usize = 65_536;

fn check_steps(steps: usize) -> Result<()> {
    match steps <= MAX_STEPS {
        true => Ok(()),
        false => Err(TrainError::InvalidConfig(format!(
            "--steps {steps}: at most {MAX_STEPS}"
        ))),
    }
}

/// What every run has, whatever it trains (`bit train`, `bit distill`): its name and place, its
/// data, its batches, evaluations, devices and seed. Field names follow the reference flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RunSettings {
    /// Name of this run: logs and checkpoints go to {logdir}/{name}/; running the same name
    /// again resumes it.
    #[cfg_attr(feature = "cli", arg(long))]
    pub name: String,
    /// Where to write the run's logs, metrics and checkpoints.
    #[cfg_attr(feature = "cli", arg(long))]
    pub logdir: PathBuf,
    /// Where hand-placed release files are (`--bit_pretrained_dir`).
    #[cfg_attr(feature = "cli", command(flatten))]
    #[serde(flatten)]
    pub models: PretrainedDir,
    /// cifar10, cifar100, imagenet2012 ({datadir}/train, {datadir}/val), folder ({datadir}/train
    /// and {datadir}/val|validation|test, one sub-directory per class), fashion_mnist, mnist,
    /// vtab/<task> (a VTAB-1k task: docs/vtab.md); for `bit distill` also images (unlabelled,
    /// at any depth of {datadir}/train and /val).
    #[cfg_attr(feature = "cli", arg(long))]
    pub dataset: String,
    /// Where the dataset is: CIFAR is downloaded there if absent; fashion_mnist defaults to
    /// Debian's /usr/share/datasets/fashion-mnist.
    #[cfg_attr(feature = "cli", arg(long))]
    pub datadir: Option<PathBuf>,
    /// Global batch size.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = bit_hyperrule::BASE_BATCH))]
    pub batch: usize,
    /// Split each batch into this many micro-batches (gradients accumulated: same update), to
    /// fit memory; `auto` measures a micro-batch's memory at the start and picks the smallest
    /// split that fits 80% of the free memory (the choice is logged; a resumed run keeps its
    /// split). On GPU and remote devices, whose memory Burn does not report, auto means 1.
    #[cfg_attr(feature = "cli", arg(long = "batch_split", default_value = "auto"))]
    pub batch_split: BatchSplit,
    /// Evaluate and checkpoint every this many steps (always at the end).
    #[cfg_attr(feature = "cli", arg(long = "eval_every"))]
    pub eval_every: Option<usize>,
    /// Evaluate on only the first N validation examples.
    #[cfg_attr(feature = "cli", arg(long = "max_eval_examples"))]
    pub max_eval_examples: Option<usize>,
    /// Every this many steps (and at the end), also score the model's frozen features with
    /// few-shot linear probes, as `bit fewshot` does (draws of the training set, scored on the
    /// evaluation images; the same draws each time), logged to train.log, metrics.jsonl and
    /// the run's curves.
    #[cfg_attr(feature = "cli", arg(long = "fewshot_every"))]
    #[serde(default)]
    pub fewshot_every: Option<usize>,
    /// Training examples per class of those probes.
    #[cfg_attr(
        feature = "cli",
        arg(long = "fewshot_shots", value_delimiter = ',', default_value = "1,5")
    )]
    #[serde(default = "RunSettings::default_fewshot_shots")]
    pub fewshot_shots: Vec<usize>,
    /// Threads decoding and augmenting images.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Self::WORKERS))]
    pub workers: usize,
    /// Do not write checkpoints or the final model.
    #[cfg_attr(feature = "cli", arg(long = "no-save", action = clap::ArgAction::SetFalse))]
    pub save: bool,
    /// The devices, data-parallel (a replica of the model on each; gradients summed every
    /// step), and the precision (`--device`, `--precision`).
    #[cfg_attr(feature = "cli", command(flatten))]
    #[serde(flatten)]
    pub compute: Compute,
    /// Seconds a training step may wait on devices other than this process's CPU (`bit serve`
    /// workers, GPUs) before the run ends as a device failure; 0 waits forever. A worker that
    /// stops answering without its connection closing (a stopped process, a machine that lost
    /// power or its network) would otherwise block the run for good: nothing can interrupt
    /// Burn's wait, so the process exits (status 1, the failure in train.log) and the last
    /// checkpoint is intact: rerun the same command once the devices are back.
    #[cfg_attr(
        feature = "cli",
        arg(long = "device_timeout", default_value_t = Self::DEVICE_TIMEOUT_SECS)
    )]
    #[serde(default = "RunSettings::default_device_timeout")]
    pub device_timeout: u64,
    /// Which part of the network trains: all (BiT's fine-tuning), stage1..stage4 (that stage
    /// onwards, the earlier ones frozen) or head (the classifier alone on frozen pre-logits,
    /// BiT's "linear" baseline: the body runs forward only). Frozen parameters get no
    /// gradients, optimizer state or weight decay.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Trainable::All))]
    #[serde(default)]
    pub train: Trainable,
    /// Recompute GroupNorm+ReLU outputs in the backward instead of keeping them (Burn's
    /// balanced gradient checkpointing): less activation memory for some extra compute.
    #[cfg_attr(feature = "cli", arg(long = "grad_checkpointing"))]
    #[serde(default)]
    pub grad_checkpointing: bool,
    /// Seed of shuffling, augmentation and mixup.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub seed: u64,
    /// Skip (with a warning) files in class folders that are not images, instead of failing.
    #[cfg_attr(feature = "cli", arg(long = "skip_non_images"))]
    pub skip_non_images: bool,
}

impl RunSettings {
    /// Default loader threads.
    pub const WORKERS: usize = 8;

    /// The default `--device_timeout`: 10 minutes. One micro-batch on a GPU or a `bit serve`
    /// worker takes seconds; a default this long never cuts a slow step short.
    pub const DEVICE_TIMEOUT_SECS: u64 = 600;

    /// [`DEVICE_TIMEOUT_SECS`](Self::DEVICE_TIMEOUT_SECS), for settings saved without it.
    pub fn default_device_timeout() -> u64 {
        Self::DEVICE_TIMEOUT_SECS
    }

    /// The probes' default shots per class, 1 and 5.
    pub fn default_fewshot_shots() -> Vec<usize> {
        vec![1, 5]
    }

    /// The defaults: batch 512, split to fit memory, 8 workers, saving on, CPU, seed 0.
    ///
    /// ```
    /// let run = bit_train::RunSettings::new("run", "cifar10", "/data/cifar", "/tmp/bit_logs");
    /// assert_eq!((run.batch, run.run_dir()), (512, "/tmp/bit_logs/run".into()));
    /// ```
    pub fn new(
        name: impl Into<String>,
        dataset: impl Into<String>,
        datadir: impl Into<PathBuf>,
        logdir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            logdir: logdir.into(),
            models: PretrainedDir::default(),
            dataset: dataset.into(),
            datadir: Some(datadir.into()),
            batch: bit_hyperrule::BASE_BATCH,
            batch_split: BatchSplit::Auto,
            eval_every: None,
            max_eval_examples: None,
            fewshot_every: None,
            fewshot_shots: Self::default_fewshot_shots(),
            workers: Self::WORKERS,
            save: true,
            compute: Compute::default(),
            device_timeout: Self::DEVICE_TIMEOUT_SECS,
            train: Trainable::All,
            grad_checkpointing: false,
            seed: 0,
            skip_non_images: false,
        }
    }

    /// The run directory, `{logdir}/{name}`.
    pub fn run_dir(&self) -> PathBuf {
        self.logdir.join(&self.name)
    }

    /// Checks what can be checked without touching data: a plain run name, a batch that
    /// splits evenly, positive counts, a known dataset; and where the data is.
    pub fn validate(&self) -> Result<(DatasetName, PathBuf)> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        let name = &self.name;
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return bad(format!("--name `{name}` must be a plain directory name"));
        }
        let batch = self.batch;
        let split = match self.batch_split {
            BatchSplit::Fixed(n) => n,
            BatchSplit::Auto => 1,
        };
        if batch > MAX_BATCH {
            return bad(format!("--batch {batch}: at most {MAX_BATCH}"));
        }
        if batch == 0 || split == 0 || !batch.is_multiple_of(split) {
            return bad(format!(
                "--batch {batch} must be a positive multiple of --batch_split {split}"
            ));
        }
        if self.eval_every == Some(0) || self.max_eval_examples == Some(0) {
            return bad("--eval_every and --max_eval_examples must be at least 1".into());
        }
        if self.fewshot_every == Some(0)
            || (self.fewshot_every.is_some()
                && (self.fewshot_shots.is_empty() || self.fewshot_shots.contains(&0)))
        {
            return bad(
                "--fewshot_every and every one of --fewshot_shots must be at least 1".into(),
            );
        }
        if self.workers > bit_data::MAX_WORKERS {
            return bad(format!(
                "--workers {}: at most {}",
                self.workers,
                bit_data::MAX_WORKERS
            ));
        }
        let dataset: DatasetName = self.dataset.parse()?;
        let datadir = self
            .datadir
            .clone()
            .or_else(|| dataset.default_dir())
            .ok_or_else(|| {
                TrainError::InvalidConfig("--datadir is required for this dataset".into())
            })?;
        Ok((dataset, datadir))
    }

    /// The training loader: micro-batches of `batch / split`.
    pub(crate) fn loader(&self, split: usize) -> bit_data::LoaderConfig {
        bit_data::LoaderConfig {
            batch_size: self.batch / split,
            workers: self.workers,
            seed: self.seed,
            prefetch: 2,
        }
    }

    /// The devices of this run (each able to compute in the run's precision), with gradient
    /// checkpointing if asked.
    pub(crate) fn devices(&self) -> Result<Devices> {
        let devices = self.compute.devices()?;
        for device in &devices {
            self.compute.precision().check_training(device)?;
        }
        let devices = Devices::new(devices)?;
        Ok(if self.grad_checkpointing {
            devices.with_gradient_checkpointing()
        } else {
            devices
        })
    }

    /// The model hub of this run: `$BIT_HOME`'s cache, after `bit_pretrained_dir`.
    pub(crate) fn hub(&self) -> Result<ModelHub> {
        Ok(self.models.hub()?)
    }
}

/// One fine-tuning run (`bit train`): the [`RunSettings`], the model, and the reference's
/// fine-tuning flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TrainConfig {
    /// Name, place, data, batches, devices.
    #[cfg_attr(feature = "cli", command(flatten))]
    #[serde(flatten)]
    pub run: RunSettings,
    /// A BiT model name (BiT-M-R50x1, BiT-S-R101x3, BiT-M-R152x2-ILSVRC2012, ...), read from
    /// {bit_pretrained_dir}/{model}.npz if it is there, else downloaded into the cache
    /// ($BIT_HOME); or a path to any BiT-format .npz.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: String,
    /// Few-shot: train on this many examples per class.
    #[cfg_attr(feature = "cli", arg(long = "examples_per_class"))]
    pub examples_per_class: Option<usize>,
    /// Seed of the few-shot draw (same seed, same examples, on any machine).
    #[cfg_attr(
        feature = "cli",
        arg(long = "examples_per_class_seed", default_value_t = 0)
    )]
    pub examples_per_class_seed: u64,
    /// Peak learning rate (for the global batch; not rescaled when --batch changes).
    #[cfg_attr(feature = "cli", arg(long = "base_lr", default_value_t = bit_hyperrule::BASE_LR))]
    pub base_lr: f64,
    /// Train for this many steps instead of the HyperRule's (same warmup/decay proportions).
    #[cfg_attr(feature = "cli", arg(long))]
    pub steps: Option<usize>,
    /// Resolution instead of the HyperRule's, as PRECROP,CROP (e.g. 40,32).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_resolution))]
    pub resolution: Option<(usize, usize)>,
}

/// `PRECROP,CROP`, e.g. `40,32`.
#[cfg(feature = "cli")]
fn parse_resolution(s: &str) -> std::result::Result<(usize, usize), String> {
    let (pre, crop) = s.split_once(',').ok_or("expected PRECROP,CROP")?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("`{v}`: {e}"));
    Ok((parse(pre)?, parse(crop)?))
}

impl TrainConfig {
    /// The reference defaults: batch 512, split to fit memory, lr 0.003, 8 workers, saving on, CPU.
    pub fn new(
        name: impl Into<String>,
        model: impl Into<String>,
        dataset: impl Into<String>,
        datadir: impl Into<PathBuf>,
        logdir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            run: RunSettings::new(name, dataset, datadir, logdir),
            model: model.into(),
            examples_per_class: None,
            examples_per_class_seed: 0,
            base_lr: bit_hyperrule::BASE_LR,
            steps: None,
            resolution: None,
        }
    }

    /// The run directory, `{logdir}/{name}`.
    pub fn run_dir(&self) -> PathBuf {
        self.run.run_dir()
    }

    /// Checks the settings that can be checked without touching data; the dataset and where
    /// it is.
    pub fn validate(&self) -> Result<(DatasetName, PathBuf)> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        let (dataset, datadir) = self.run.validate()?;
        if !(self.base_lr.is_finite() && self.base_lr > 0.0) {
            return bad(format!("--base_lr {} must be positive", self.base_lr));
        }
        if self.steps == Some(0) || self.examples_per_class == Some(0) {
            return bad("--steps and --examples_per_class must be at least 1".into());
        }
        check_steps(self.steps.unwrap_or(1))?;
        if let Some((precrop, crop)) = self.resolution {
            Augment::default()
                .train(precrop, crop)
                .validate()
                .map_err(|e| TrainError::InvalidConfig(format!("--resolution: {e}")))?;
        }
        if dataset == DatasetName::Images {
            return bad(
                "--dataset images has no labels to fine-tune on: use class folders \
                 (--dataset folder), or `bit distill`, which needs no labels"
                    .into(),
            );
        }
        Ok((dataset, datadir))
    }

    /// The `.npz` to start from, resolved as every `bit` command resolves `--model`
    /// ([`ModelHub::locate`]): `--model` itself if it is a file, else
    /// `{bit_pretrained_dir}/{model}.npz`, else the released model of that name from the cache
    /// (`$BIT_HOME`), downloaded and verified if needed.
    pub fn checkpoint_path(&self) -> Result<PathBuf> {
        let dir = &self.run.models.bit_pretrained_dir;
        match self.run.hub()?.locate(&self.model) {
            Ok((path, _)) => Ok(path),
            Err(bit_zoo::Error::UnknownModel(_)) => Err(TrainError::MissingCheckpoint {
                path: dir.join(format!("{}.npz", self.model)),
                model: self.model.clone(),
            }),
            Err(source) => Err(TrainError::Download {
                model: zoo::find(&self.model).map_or_else(|_| self.model.clone(), |e| e.name),
                dir: dir.clone(),
                source: Box::new(source),
            }),
        }
    }
}

/// Settings of a distillation run (`bit distill`): the [`RunSettings`] every run has, and the
/// models and recipe of distillation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct DistillConfig {
    /// Name, place, data, batches, devices.
    #[cfg_attr(feature = "cli", command(flatten))]
    #[serde(flatten)]
    pub run: RunSettings,
    /// The teacher: a BiT model name, a .npz, or a fine-tuned .safetensors from `bit train`.
    #[cfg_attr(feature = "cli", arg(long))]
    pub teacher: String,
    /// The student's starting point: a BiT model name or file (its head is replaced by a zero
    /// head of the teacher's size unless --keep_student_head), or `scratch:ARCH` (e.g.
    /// scratch:R50x1) for random weights.
    #[cfg_attr(feature = "cli", arg(long))]
    pub student: String,
    /// Keep the student's own head (it must have the teacher's number of classes).
    #[cfg_attr(feature = "cli", arg(long = "keep_student_head"))]
    pub keep_student_head: bool,
    /// Optimizer steps: distillation wants long schedules.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Self::STEPS))]
    pub steps: usize,
    /// Peak learning rate of Adam.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Self::LR))]
    pub lr: f64,
    /// Decoupled weight decay: the weights shrink by this fraction per step, times the
    /// schedule (big_vision's `wd`).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Self::WD))]
    pub wd: f64,
    /// Linear warmup steps [default: the images of 1500 steps at batch 512, at most a tenth of
    /// the run].
    #[cfg_attr(feature = "cli", arg(long = "warmup_steps"))]
    pub warmup_steps: Option<usize>,
    /// Clip the gradient to this global L2 norm (0: no clipping).
    #[cfg_attr(feature = "cli", arg(long = "clip_norm", default_value_t = Self::CLIP_NORM))]
    pub clip_norm: f32,
    /// Softmax temperature of the KL loss.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Self::TEMPERATURE))]
    pub temperature: f32,
    /// The student's input side [default: the teacher's resolution].
    #[cfg_attr(feature = "cli", arg(long))]
    pub resolution: Option<usize>,
    /// The teacher's input side, when it should differ from the student's: both still see the
    /// same crop of the same images, made at the larger side and resized (bilinear) for the
    /// other model, e.g. a 384 px teacher for a 224 px student [default: the student's side].
    #[cfg_attr(feature = "cli", arg(long = "teacher_resolution"))]
    pub teacher_resolution: Option<usize>,
}

impl DistillConfig {
    /// Default number of optimizer steps.
    pub const STEPS: usize = 10_000;
    /// Default peak learning rate.
    pub const LR: f64 = 0.003;
    /// Default decoupled weight decay.
    pub const WD: f64 = 1e-4;
    /// Default global gradient norm.
    pub const CLIP_NORM: f32 = 1.0;
    /// Default softmax temperature.
    pub const TEMPERATURE: f32 = 1.0;

    /// The defaults of `bit distill`: batch 512, 10k steps, lr 0.003, wd 1e-4, clipping at 1,
    /// T = 1, the teacher's resolution, CPU.
    pub fn new(
        name: impl Into<String>,
        teacher: impl Into<String>,
        student: impl Into<String>,
        dataset: impl Into<String>,
        datadir: impl Into<PathBuf>,
        logdir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            run: RunSettings::new(name, dataset, datadir, logdir),
            teacher: teacher.into(),
            student: student.into(),
            keep_student_head: false,
            steps: Self::STEPS,
            lr: Self::LR,
            wd: Self::WD,
            warmup_steps: None,
            clip_norm: Self::CLIP_NORM,
            temperature: Self::TEMPERATURE,
            resolution: None,
            teacher_resolution: None,
        }
    }

    /// The run directory, `{logdir}/{name}`.
    pub fn run_dir(&self) -> PathBuf {
        self.run.run_dir()
    }

    /// Checks the settings that can be checked without touching data or models; the dataset
    /// and where it is.
    pub fn validate(&self) -> Result<(DatasetName, PathBuf)> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        let data = self.run.validate()?;
        if self.steps == 0 {
            return bad("--steps must be at least 1".into());
        }
        check_steps(self.steps)?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("--lr {} must be positive", self.lr));
        }
        if !(self.wd.is_finite() && self.wd >= 0.0) {
            return bad(format!("--wd {} must not be negative", self.wd));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm >= 0.0) {
            return bad(format!(
                "--clip_norm {} must not be negative",
                self.clip_norm
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!(
                "--temperature {} must be positive",
                self.temperature
            ));
        }
        for (flag, side) in [
            ("--resolution", self.resolution),
            ("--teacher_resolution", self.teacher_resolution),
        ] {
            if let Some(crop) = side {
                Preprocess::Inception { crop }
                    .validate()
                    .map_err(|e| TrainError::InvalidConfig(format!("{flag}: {e}")))?;
            }
        }
        Ok(data)
    }

    /// The learning-rate schedule of this run.
    pub fn schedule(&self) -> WarmupCosine {
        // 1500 steps at batch 512 in images, but never most of a short run.
        let warmup = self
            .warmup_steps
            .unwrap_or_else(|| (1500 * 512 / self.run.batch).min(self.steps / 10));
        WarmupCosine {
            lr: self.lr,
            warmup,
            total: self.steps,
        }
    }

    /// Adam with decoupled weight decay and the defaults of optax (`b1` 0.9, `b2` 0.999,
    /// `eps` 1e-8). Burn's AdamW multiplies its decay by the step's learning rate, so `wd / lr`
    /// gives big_vision's `wd` times the schedule.
    pub fn optimizer(&self) -> ModuleOptimizer {
        AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-8)
            .with_weight_decay((self.wd / self.lr) as f32)
            .init()
    }
}
