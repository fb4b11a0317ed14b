//! Knowledge distillation by function matching (Beyer et al. 2022, "Knowledge distillation: A
//! good teacher is patient and consistent"), on the loop fine-tuning uses.
//!
//! - **Consistent:** teacher and student see the same augmented view of each image, made on the
//!   fly: an inception-style crop and flip, then mixup (λ ~ Beta(1, 1), with probability 1)
//!   between two images of the micro-batch. The teacher runs in inference mode on that very
//!   tensor.
//! - **Function matching:** the loss is `T² · KL(softmax(t/T) ‖ softmax(s/T))`, averaged over the
//!   batch (big_vision's `kl` distance); labels are never used for training.
//! - **Optimizer:** Adam with decoupled weight decay (big_vision's convention: each step shrinks
//!   the weights by `wd · lr_t / lr`, i.e. `wd` times the schedule, not times the learning
//!   rate), the gradient clipped to global norm 1, linear warmup then cosine decay to zero.
//! - **Patient:** long schedules resume exactly from checkpoints, with the logs, metrics,
//!   progress bar and Ctrl-C behaviour of `bit train`.

use std::path::PathBuf;
#[cfg(test)]
use std::sync::Arc;

use bit_data::{Batch, BatchStream, DatasetName, Mixup, Preprocess};
use bit_infer::{InferenceModel, LoadOptions, rank};
use bit_model::backend::host_values;
use bit_model::zoo::ModelHub;
use bit_model::{Architecture, ResNetV2};
use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::checkpoint;
use crate::config::RunSettings;
use crate::error::{Result, TrainError};
use crate::log::RunLog;
use crate::parallel::{DataParallel, ShardLoss};
use crate::run::{Bookmark, Objective, Position, Run, Views};
use crate::trainer::{EvalFeed, TrainOptions, load_data};

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

/// Linear warmup from 0 to `lr` over `warmup` steps, then cosine decay to 0 at `total`.
///
/// ```
/// use bit_train::WarmupCosine;
///
/// let s = WarmupCosine { lr: 0.01, warmup: 10, total: 110 };
/// assert_eq!(s.lr(0), Some(0.0));
/// assert_eq!(s.lr(5), Some(0.005));
/// assert_eq!(s.lr(10), Some(0.01));
/// assert!((s.lr(60).unwrap() - 0.005).abs() < 1e-12);
/// assert_eq!(s.lr(110), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: usize,
    /// Steps in all.
    pub total: usize,
}

impl WarmupCosine {
    /// The learning rate of `step`, or `None` once the schedule is over.
    pub fn lr(&self, step: usize) -> Option<f64> {
        if step >= self.total {
            return None;
        }
        if step < self.warmup {
            return Some(self.lr * step as f64 / self.warmup as f64);
        }
        let progress = (step - self.warmup) as f64 / (self.total - self.warmup) as f64;
        Some(self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
    }
}

/// `T² · KL(softmax(teacher/T) ‖ softmax(student/T))`, averaged over the batch: the function
/// matching loss. The teacher's logits are constants.
///
/// ```
/// use bit_train::distillation_loss;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::default();
/// let s = Tensor::<2>::from_floats([[1.0, 2.0, 3.0]], &device);
/// let same = distillation_loss(s.clone(), s.clone(), 2.0).into_scalar::<f32>();
/// assert!(same.abs() < 1e-6); // matching functions: no loss
/// let other = Tensor::<2>::from_floats([[3.0, 2.0, 1.0]], &device);
/// assert!(distillation_loss(s, other, 2.0).into_scalar::<f32>() > 0.0);
/// ```
pub fn distillation_loss(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    temperature: f32,
) -> Tensor<1> {
    let n = student_logits.dims()[0] as f32;
    let teacher = teacher_logits.detach() / temperature;
    let p = softmax(teacher.clone(), 1);
    let log_p = log_softmax(teacher, 1);
    let log_q = log_softmax(student_logits / temperature, 1);
    (p * (log_p - log_q)).sum() * (temperature * temperature / n)
}

/// The teacher's logits for a micro-batch, the targets of its shards.
pub struct TeacherTargets {
    /// `[batch, classes]`, on the model's (autodiff) device, constant.
    pub logits: Tensor<2>,
    /// Softmax temperature.
    pub temperature: f32,
}

impl ShardLoss for TeacherTargets {
    fn shard_loss(&self, logits: Tensor<2>, (a, b): (usize, usize), device: &Device) -> Tensor<1> {
        let teacher = self.logits.clone().narrow(0, a, b - a).to_device(device);
        distillation_loss(logits, teacher, self.temperature)
    }
}

/// What a distillation evaluation measured on the validation set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DistillEval {
    /// Examples evaluated.
    pub examples: usize,
    /// Mean `T² · KL(teacher ‖ student)`: the objective.
    pub kl: f64,
    /// Fraction where the student's top class is the teacher's.
    pub agree_top1: f64,
    /// Fraction where the teacher's top class is among the student's five highest.
    pub agree_top5: f64,
    /// The student's top-1 / top-5 on the labels, when the labels index the teacher's head.
    pub student_top: Option<(f64, f64)>,
    /// The teacher's top-1 / top-5 on the same examples.
    pub teacher_top: Option<(f64, f64)>,
}

/// What a finished (or stopped) distillation produced.
#[derive(Debug, Clone)]
pub struct DistillOutcome {
    /// Optimizer steps done in total (including before a resume).
    pub steps: usize,
    /// The final evaluation.
    pub eval: DistillEval,
    /// Whether the run was stopped before the end of its schedule.
    pub interrupted: bool,
    /// `{logdir}/{name}`.
    pub run_dir: PathBuf,
    /// The student, without autodiff.
    pub student: ResNetV2,
}

/// Distills `config.teacher` into `config.student` on `config.dataset`, resuming the run's last
/// checkpoint if there is one. The student is written to `{run}/model.safetensors`.
pub fn distill(config: &DistillConfig, options: &TrainOptions) -> Result<DistillOutcome> {
    let (dataset, datadir) = config.validate()?;
    let mut run = Run::open(config.run_dir(), options.quiet)?;
    run.log.info(&format!("{config:?}"));
    let mut parallel = config.run.data_parallel()?;
    let main = parallel.main().clone();
    let hub = config.run.hub()?;
    let mut teacher = load_teacher(&hub, &config.teacher, &main, &mut run.log)?;
    teacher.model = teacher.model.with_precision(config.run.precision);
    let head = teacher.model.config().head_size;
    let crop = config.resolution.unwrap_or(teacher.resolution);
    let (train, valid) = load_data(&config.run, (dataset, &datadir), None, &mut run.log)?;
    let bookmark = Bookmark::of(&config.run, &*train);
    let mut at = match checkpoint::find(&run.dir)? {
        Some(saved) => bookmark.resume(&saved, config.optimizer(), &main, &mut run.log)?,
        None => Position {
            model: load_student(&hub, config, head, &main, &mut run.log)?,
            optim: config.optimizer(),
            step: 0,
            next_batch: 0,
            batch_split: None,
            loss_scale: None,
        },
    };
    let schedule = config.schedule();
    run.log.info(&format!(
        "Distilling at {crop}px, T={}, {} steps ({} warmup), lr {}, wd {}",
        config.temperature, schedule.total, schedule.warmup, config.lr, config.wd
    ));
    let sides = Sides::new(crop, config.teacher_resolution.unwrap_or(crop));
    let labelled = reports_accuracy(dataset, bookmark.classes.len(), head, &mut run.log);
    let mut objective = Distill {
        teacher: &teacher.model,
        views: Views::new(Mixup::new(1.0, config.run.seed)?, main.clone()),
        temperature: config.temperature,
        sides,
        eval: EvalFeed {
            valid,
            crop: sides.view,
            loader: config.run.loader(1),
        },
        labelled,
        teacher_valid: None,
    };
    let split = run.choose_split(
        config.run.batch_split,
        config.run.batch,
        &mut at,
        (&mut objective, &mut parallel),
        sides.view,
    )?;
    let loader = config.run.loader(split);
    objective.eval.loader = loader;
    let view = Preprocess::Inception { crop: sides.view };
    let mut batches = BatchStream::train(train.clone(), view, loader, at.next_batch)?;
    let finished = run.drive(
        at,
        &mut objective,
        &mut parallel,
        &mut batches,
        &config
            .run
            .loop_settings(split, (config.clip_norm > 0.0).then_some(config.clip_norm)),
        (&|step| schedule.lr(step), schedule.total),
        &bookmark,
        &options.stop,
    )?;
    if config.run.save {
        let names = teacher.class_names.as_deref();
        run.export(&finished.at.model, crop, names)?;
    }
    run.report();
    Ok(DistillOutcome {
        steps: finished.at.step,
        eval: finished.eval,
        interrupted: finished.interrupted,
        run_dir: run.dir.clone(),
        student: finished.at.model.valid(),
    })
}

/// Whether evaluations can score accuracy: the data has labels and they index the teacher's
/// head (`classes` classes against `head`); says so in the log when not.
fn reports_accuracy(dataset: DatasetName, classes: usize, head: usize, log: &mut RunLog) -> bool {
    if dataset == DatasetName::Images {
        log.info("Unlabelled images: evaluations report agreement with the teacher");
        return false;
    }
    if classes != head {
        log.warn(&format!(
            "{classes} classes in the data, {head} in the teacher's head: accuracy is not reported"
        ));
    }
    classes == head
}

/// The teacher, in inference mode (no autodiff) on the main device's backend.
fn load_teacher(
    hub: &ModelHub,
    teacher: &str,
    main: &Device,
    log: &mut RunLog,
) -> Result<InferenceModel> {
    let device = main.clone().without_autodiff();
    let loaded =
        InferenceModel::load(hub, teacher, &LoadOptions::default(), &device).map_err(|source| {
            TrainError::Teacher {
                teacher: teacher.to_string(),
                source: Box::new(source),
            }
        })?;
    log.info(&format!(
        "Teacher {} ({}-way head, {}px) from {}",
        teacher,
        loaded.model.config().head_size,
        loaded.resolution,
        loaded.path.display()
    ));
    Ok(loaded)
}

/// The student at step 0: random weights (`scratch:ARCH`) or a checkpoint, with a zero head of
/// the teacher's size unless its own head is kept.
fn load_student(
    hub: &ModelHub,
    config: &DistillConfig,
    head: usize,
    device: &Device,
    log: &mut RunLog,
) -> Result<ResNetV2> {
    if let Some(arch) = config.student.strip_prefix("scratch:") {
        let arch: Architecture = arch.parse()?;
        log.info(&format!("Student {arch} from scratch, {head}-way head"));
        return Ok(arch.config(head).with_zero_head(true).init(device));
    }
    let loaded = InferenceModel::load(hub, &config.student, &LoadOptions::default(), device)
        .map_err(|source| TrainError::Student {
            student: config.student.clone(),
            source: Box::new(source),
        })?;
    let own = loaded.model.config().head_size;
    log.info(&format!(
        "Student from {} ({}-way head)",
        loaded.path.display(),
        own
    ));
    if config.keep_student_head {
        if own != head {
            return Err(TrainError::HeadMismatch {
                student: config.student.clone(),
                student_head: own,
                teacher_head: head,
            });
        }
        return Ok(loaded.model);
    }
    log.info(&format!("New zero-initialised {head}-way head"));
    Ok(loaded.model.with_zero_head(head))
}

/// The sides of the views: made at the larger of the two models' sides, resized for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sides {
    /// The side the loader makes the views at.
    view: usize,
    /// The student's side, when it is not the view's.
    student: Option<usize>,
    /// The teacher's side, when it is not the view's.
    teacher: Option<usize>,
}

impl Sides {
    fn new(student: usize, teacher: usize) -> Self {
        let view = student.max(teacher);
        Self {
            view,
            student: (student != view).then_some(student),
            teacher: (teacher != view).then_some(teacher),
        }
    }
}

/// `images` resized (bilinear, half-pixel centres) to a `side` square, if one is given.
fn resized(images: Tensor<4>, side: Option<usize>) -> Tensor<4> {
    match side {
        Some(side) => interpolate(
            images,
            InterpolateOptions::new(InterpolateMode::Bilinear)
                .with_align_corners(false)
                .with_output_size([side, side]),
        ),
        None => images,
    }
}

/// Distillation's objective: the student matches the teacher's function on the same view.
struct Distill<'a> {
    teacher: &'a ResNetV2,
    views: Views,
    temperature: f32,
    /// The views' side and each model's.
    sides: Sides,
    eval: EvalFeed,
    /// Whether the labels index the teacher's head (accuracy is then reported).
    labelled: bool,
    /// The teacher's validation logits, computed once (the teacher never changes).
    teacher_valid: Option<Vec<f32>>,
}

impl Distill<'_> {
    /// The student's input for `batch` at `step`, and the teacher's logits for exactly that
    /// view (at its own side).
    fn view(&mut self, batch: &Batch, step: usize) -> (Tensor<4>, TeacherTargets) {
        let (x, _) = self.views.of(batch, step);
        let logits = self.teacher_logits(x.clone().without_autodiff()).autodiff();
        // Autodiff tensors meeting in one op must share the view's checkpointing strategy.
        let logits = match x.gradient_checkpointing_strategy() {
            Some(strategy) => logits.with_gradient_checkpointing_strategy(strategy),
            None => logits,
        };
        let targets = TeacherTargets {
            logits,
            temperature: self.temperature,
        };
        (resized(x, self.sides.student), targets)
    }

    /// The teacher's logits for views `images` (without autodiff).
    fn teacher_logits(&self, images: Tensor<4>) -> Tensor<2> {
        self.teacher.forward(resized(images, self.sides.teacher))
    }

    /// Host logits of `forward` over every batch of `stream`, and the labels.
    fn logits(
        forward: impl Fn(Tensor<4>) -> Tensor<2>,
        stream: BatchStream,
        device: &Device,
    ) -> Result<(Vec<f32>, Vec<usize>)> {
        let (mut all, mut labels) = (Vec::new(), Vec::new());
        for batch in stream {
            let batch = batch?;
            let (x, _) = batch.to_tensors(device);
            all.extend(host_values(forward(x)));
            labels.extend(&batch.labels);
        }
        Ok((all, labels))
    }
}

impl Objective for Distill<'_> {
    type Eval = DistillEval;

    fn backward(
        &mut self,
        parallel: &mut DataParallel,
        model: &ResNetV2,
        batch: &Batch,
        step: usize,
        scale: f32,
    ) -> Result<f32> {
        let (x, targets) = self.view(batch, step);
        Ok(parallel.backward(model, x, &targets, scale))
    }

    fn evaluate(&mut self, model: &ResNetV2) -> Result<DistillEval> {
        let device = self.views.device().without_autodiff();
        if self.teacher_valid.is_none() {
            let teacher = |x| self.teacher_logits(x);
            let (logits, _) = Self::logits(teacher, self.eval.stream()?, &device)?;
            self.teacher_valid = Some(logits);
        }
        let student = model.clone().valid();
        let side = self.sides.student;
        let (student, labels) = Self::logits(
            |x| student.forward(resized(x, side)),
            self.eval.stream()?,
            &device,
        )?;
        let teacher = self.teacher_valid.as_deref().expect("computed above");
        Ok(compare(
            teacher,
            &student,
            &labels,
            self.teacher.config().head_size,
            self.temperature,
            self.labelled,
        ))
    }

    fn eval_loss(eval: &DistillEval) -> f64 {
        eval.kl
    }

    fn log_eval(e: &DistillEval, at: &str, log: &mut RunLog) {
        let pct = |t: Option<(f64, f64)>| {
            t.map_or("n/a".to_string(), |(a, b)| {
                format!("top1 {:.2}%, top5 {:.2}%", 100.0 * a, 100.0 * b)
            })
        };
        log.info(&format!(
            "Validation@{at} KL {:.5}, agreement top1 {:.2}%, top5 {:.2}%; student {}; teacher {}",
            e.kl,
            100.0 * e.agree_top1,
            100.0 * e.agree_top5,
            pct(e.student_top),
            pct(e.teacher_top)
        ));
        let top = |t: Option<(f64, f64)>| t.map(|(a, b)| json!([a, b]));
        log.metric(json!({"event": "eval", "step": at, "kl": e.kl, "agree_top1": e.agree_top1, "agree_top5": e.agree_top5, "student_top1_top5": top(e.student_top), "teacher_top1_top5": top(e.teacher_top), "examples": e.examples}));
    }
}

/// Teacher–student agreement and (when `labelled`) both models' accuracy, from row-major
/// logits of `classes` columns.
fn compare(
    teacher: &[f32],
    student: &[f32],
    labels: &[usize],
    classes: usize,
    temperature: f32,
    labelled: bool,
) -> DistillEval {
    let (mut kl, mut agree1, mut agree5) = (0.0f64, 0usize, 0usize);
    let (mut s_top, mut t_top) = ([0usize; 2], [0usize; 2]);
    let t = f64::from(temperature);
    for ((t_row, s_row), &label) in teacher
        .chunks_exact(classes)
        .zip(student.chunks_exact(classes))
        .zip(labels)
    {
        let log_p = bit_infer::log_softmax(t_row, t);
        let log_q = bit_infer::log_softmax(s_row, t);
        kl += t
            * t
            * log_p
                .iter()
                .zip(&log_q)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>();
        let teacher_class = argmax(t_row);
        let r = rank(s_row, teacher_class);
        agree1 += usize::from(r == 0);
        agree5 += usize::from(r < 5);
        if labelled {
            for (row, top) in [(s_row, &mut s_top), (t_row, &mut t_top)] {
                let r = rank(row, label);
                top[0] += usize::from(r == 0);
                top[1] += usize::from(r < 5);
            }
        }
    }
    let n = labels.len().max(1) as f64;
    let frac = |top: [usize; 2]| labelled.then(|| (top[0] as f64 / n, top[1] as f64 / n));
    DistillEval {
        examples: labels.len(),
        kl: kl / n,
        agree_top1: agree1 as f64 / n,
        agree_top5: agree5 as f64 / n,
        student_top: frac(s_top),
        teacher_top: frac(t_top),
    }
}

/// The first index of the largest value (NaN never wins).
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use bit_data::InMemoryDataset;
    use bit_model::ResNetV2Config;
    use burn::tensor::TensorData;

    use super::*;

    use bit_model::backend::host_values as host;

    fn batch(n: usize, size: usize) -> Batch {
        Batch {
            images: (0..n * 3 * size * size)
                .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
                .collect(),
            labels: (0..n).map(|i| i % 3).collect(),
            size,
        }
    }

    #[test]
    fn teacher_and_student_see_the_same_mixed_view() {
        let device = Device::flex();
        let teacher = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device);
        let student = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device.clone().autodiff());
        let mut parallel = DataParallel::new(vec![device.clone()]).unwrap();
        let main = parallel.main().clone();
        let valid: Arc<dyn bit_data::ImageDataset> = Arc::new(
            InMemoryDataset::new(vec!["a".into()], [8, 8, 3], vec![0; 192], vec![0]).unwrap(),
        );
        let objective = |sides| Distill {
            teacher: &teacher,
            views: Views::new(Mixup::new(1.0, 5).unwrap(), main.clone()),
            temperature: 2.0,
            sides,
            eval: EvalFeed {
                valid: valid.clone(),
                crop: 8,
                loader: bit_data::LoaderConfig::new(4),
            },
            labelled: true,
            teacher_valid: None,
        };
        let b = batch(4, 8);
        let same = Sides::new(8, 8);
        assert_eq!(
            same,
            Sides {
                view: 8,
                student: None,
                teacher: None
            }
        );
        let (x, targets) = objective(same).view(&b, 3);
        // The view is mixed (not the raw batch) and is exactly what an independent pass of the
        // same views makes for this step: a function of (seed, step) only.
        let raw = host(b.to_tensors(&device).0);
        let seen = host(x.clone());
        assert_ne!(seen, raw);
        let (again, _) = Views::new(Mixup::new(1.0, 5).unwrap(), main.clone()).of(&b, 3);
        assert_eq!(host(again), seen);
        // The teacher's targets are its logits for that very tensor.
        let direct = host(teacher.forward(x.clone().without_autodiff()));
        assert_eq!(host(targets.logits.clone()), direct);
        // Training on the micro-batch: the student's loss is the loss of that same view.
        let loss = objective(same)
            .backward(&mut parallel, &student, &b, 3, 1.0)
            .unwrap();
        let want = distillation_loss(student.forward(x.clone()), targets.logits, 2.0);
        assert_eq!(loss, host(want)[0]);
        // Only where asked, the models see that view at different sides: here the view is
        // made at the student's 8 px and the teacher sees it resized to 16 px...
        let sides = Sides::new(8, 16);
        assert_eq!(
            (sides.view, sides.student, sides.teacher),
            (16, Some(8), None)
        );
        let sides = Sides::new(16, 8);
        assert_eq!(
            (sides.view, sides.student, sides.teacher),
            (16, None, Some(8))
        );
        let (input, targets) = objective(Sides {
            view: 8,
            student: None,
            teacher: Some(16),
        })
        .view(&b, 3);
        assert_eq!(host(input), seen);
        let big = resized(x.clone().without_autodiff(), Some(16));
        assert_eq!(big.dims(), [4, 3, 16, 16]);
        assert_eq!(host(targets.logits), host(teacher.forward(big)));
        // ...and the other way round, the student gets the view resized, the teacher the view.
        let (input, targets) = objective(Sides {
            view: 8,
            student: Some(4),
            teacher: None,
        })
        .view(&b, 3);
        assert_eq!(input.dims(), [4, 3, 4, 4]);
        assert_eq!(host(input), host(resized(x.clone(), Some(4))));
        assert_eq!(host(targets.logits), direct);
    }

    #[test]
    fn the_loss_and_its_gradient_match_a_direct_computation() {
        let device = Device::flex().autodiff();
        let (n, c) = (3, 5);
        let s: Vec<f32> = (0..n * c)
            .map(|i| ((i * 37) % 11) as f32 / 3.0 - 1.5)
            .collect();
        let t: Vec<f32> = (0..n * c)
            .map(|i| ((i * 53) % 13) as f32 / 4.0 - 1.0)
            .collect();
        for temperature in [1.0f32, 2.5] {
            let student =
                Tensor::<2>::from_data(TensorData::new(s.clone(), [n, c]), &device).require_grad();
            let teacher = Tensor::<2>::from_data(TensorData::new(t.clone(), [n, c]), &device);
            let loss = distillation_loss(student.clone(), teacher, temperature);
            let value = host(loss.clone())[0] as f64;
            let grads = loss.backward();
            let grad = host(student.grad(&grads).unwrap());
            // Directly, in f64: T² / n · Σ p (log p - log q), and its gradient T / n · (q - p).
            let tt = f64::from(temperature);
            let (mut want, mut want_grad) = (0.0, vec![0.0; n * c]);
            for r in 0..n {
                let log_p = bit_infer::log_softmax(&t[r * c..][..c], tt);
                let log_q = bit_infer::log_softmax(&s[r * c..][..c], tt);
                for k in 0..c {
                    let (p, q) = (log_p[k].exp(), log_q[k].exp());
                    want += tt * tt / n as f64 * p * (log_p[k] - log_q[k]);
                    want_grad[r * c + k] = tt / n as f64 * (q - p);
                }
            }
            assert!(
                (value - want).abs() < 1e-5 * want.abs().max(1.0),
                "T={temperature}: {value} vs {want}"
            );
            for (g, w) in grad.iter().zip(&want_grad) {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-6,
                    "T={temperature}: {g} vs {w}"
                );
            }
        }
        // The temperature softens: at a higher T the same logits are closer in distribution
        // (before the T² factor, which keeps the gradient's scale).
        let kl_at = |t_: f32| {
            let student = Tensor::<2>::from_data(TensorData::new(s.clone(), [n, c]), &device);
            let teacher = Tensor::<2>::from_data(TensorData::new(t.clone(), [n, c]), &device);
            host(distillation_loss(student, teacher, t_))[0] / (t_ * t_)
        };
        assert!(kl_at(4.0) < kl_at(1.0));
    }

    #[test]
    fn agreement_and_accuracy_count_strictly() {
        // Two examples, three classes. Teacher: class 2, then class 0. Student: 2, then 1.
        let teacher = [0.0, 1.0, 5.0, 4.0, 1.0, 0.0];
        let student = [0.0, 1.0, 3.0, 1.0, 2.0, 0.0];
        let e = compare(&teacher, &student, &[2, 1], 3, 1.0, true);
        assert_eq!((e.examples, e.agree_top1, e.agree_top5), (2, 0.5, 1.0));
        assert_eq!(e.student_top, Some((1.0, 1.0)));
        assert_eq!(e.teacher_top, Some((0.5, 1.0)));
        assert!(e.kl > 0.0);
        // Identical functions: no divergence, full agreement.
        let e = compare(&teacher, &teacher, &[2, 0], 3, 2.0, false);
        assert!(e.kl.abs() < 1e-12 && e.agree_top1 == 1.0);
        assert_eq!(e.student_top, None);
    }
}
