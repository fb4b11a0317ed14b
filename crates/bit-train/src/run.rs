//! The optimization loop every objective shares (fine-tuning on labels, distillation from a
//! teacher): a [`Run`] owns the run directory (its lock and logs); [`Run::drive`] steps a model
//! through a learning-rate schedule, one optimizer update per `batch_split` micro-batches,
//! stops on request or on a non-finite loss, evaluates and checkpoints every `eval_every` steps
//! and at the end, never checkpointing weights that went non-finite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bit_data::{Batch, BatchStream, Mixup, MixupStep};
use bit_model::{Precision, ResNetV2};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use serde_json::json;

use crate::checkpoint::{self, RunLock, TrainState};
use crate::error::{Result, TrainError};
use crate::log::{RunLog, python_exp};
use crate::loss_scale::{LossScale, Scaled};
use crate::memory::{self, BatchSplit};
use crate::parallel::{DataParallel, Targets};

/// What a loop optimizes and how it is evaluated.
pub(crate) trait Objective {
    /// An evaluation's result.
    type Eval;

    /// Forward and backward of `scale * loss` on micro-batch `batch` of optimizer step `step`
    /// over the devices of `parallel` (`model` is the main device's replica), leaving the
    /// gradients there; returns the unscaled loss.
    fn backward(
        &mut self,
        parallel: &mut DataParallel,
        model: &ResNetV2,
        batch: &Batch,
        step: usize,
        scale: f32,
    ) -> Result<f32>;

    /// Evaluates `model` (with autodiff) on the held-out data.
    fn evaluate(&mut self, model: &ResNetV2) -> Result<Self::Eval>;

    /// The evaluation's loss: a non-finite one means the run diverged.
    fn eval_loss(eval: &Self::Eval) -> f64;

    /// Writes an evaluation to the logs; `at` is the step or `end`.
    fn log_eval(eval: &Self::Eval, at: &str, log: &mut RunLog);
}

/// The loop's settings, common to every objective.
#[derive(Debug, Clone)]
pub(crate) struct LoopSettings {
    /// Micro-batches per optimizer update.
    pub batch_split: usize,
    /// Evaluate and checkpoint every this many steps (and always at the end).
    pub eval_every: Option<usize>,
    /// Write checkpoints.
    pub save: bool,
    /// Rescale the summed gradients to at most this global L2 norm before each update.
    pub clip_global_norm: Option<f32>,
    /// What the model computes in.
    pub precision: Precision,
}

/// Where the loop stands: what a checkpoint holds.
pub(crate) struct Position {
    /// The model being trained (on the autodiff device).
    pub model: ResNetV2,
    /// Its optimizer.
    pub optim: ModuleOptimizer,
    /// Optimizer steps done.
    pub step: usize,
    /// The next micro-batch of the training stream.
    pub next_batch: u64,
    /// Micro-batches per step: the checkpoint's when resuming (if it recorded it), else
    /// chosen before the loop starts.
    pub batch_split: Option<usize>,
    /// The loss scale of f16 training: the checkpoint's when resuming.
    pub loss_scale: Option<LossScale>,
}

/// How a loop ended.
pub(crate) struct Finished<E> {
    /// Where it stopped.
    pub at: Position,
    /// The final evaluation.
    pub eval: E,
    /// Stopped on request before the end of the schedule.
    pub interrupted: bool,
}

/// A run directory held by this process: its lock, its logs, the time spent in each phase.
pub(crate) struct Run {
    /// `{logdir}/{name}`.
    pub dir: PathBuf,
    /// `train.log`, `metrics.jsonl` and the progress bar.
    pub log: RunLog,
    timings: Timings,
    images_seen: usize,
    train_secs: f64,
    _lock: RunLock,
}

impl Run {
    /// Takes the run directory (two processes on one would overwrite each other's checkpoints
    /// and logs) and opens its logs.
    pub fn open(dir: PathBuf, quiet: bool) -> Result<Self> {
        let lock = checkpoint::lock(&dir)?;
        let log = RunLog::open(&dir, quiet)?;
        Ok(Self {
            dir,
            log,
            timings: Timings::default(),
            images_seen: 0,
            train_secs: 0.0,
            _lock: lock,
        })
    }

    /// Sets `at.batch_split` from `setting` (see [`BatchSplit`]): with `auto`, by probing
    /// what micro-batches of `crop` px images cost `objective` on `parallel`'s devices.
    /// Logs the choice.
    pub fn choose_split<O: Objective>(
        &mut self,
        setting: BatchSplit,
        batch: usize,
        at: &mut Position,
        (objective, parallel): (&mut O, &mut DataParallel),
        crop: usize,
    ) -> Result<usize> {
        let sizes = (batch, parallel.len());
        // Momentum (SGD) or two moments (Adam) per parameter on every device, made at the
        // first update.
        let reserve = 2 * 4 * (at.model.num_params() * parallel.len()) as u64;
        let on_host = parallel.on_host();
        let (model, optim) = (&at.model, &at.optim);
        // Replicas only if a probe runs: on remote devices (never probed) placing them would
        // upload the whole model once more before `drive` places them for the run.
        let mut placed = false;
        let probe = |images: usize| -> Result<()> {
            if !placed {
                parallel.replicate(model, optim);
                placed = true;
            }
            let batch = Batch {
                images: vec![0.0; images * 3 * crop * crop],
                labels: vec![0; images],
                size: crop,
            };
            // A step number no run reaches, so no view of a real step is cached.
            objective.backward(parallel, model, &batch, usize::MAX, 1.0)?;
            drop(parallel.all_reduce(model));
            Ok(())
        };
        let (split, note) =
            memory::resolve_split(setting, sizes, (at.batch_split, reserve), on_host, probe)?;
        self.log.info(&note);
        at.batch_split = Some(split);
        Ok(split)
    }

    /// Runs `objective` from `at` on the devices of `parallel` (which get their replicas of
    /// `at` here) while `lr(step)` gives a learning rate (`total` steps in all), then evaluates
    /// and checkpoints (with `bookmark`'s description of the data).
    ///
    /// Burn reports a device that stops answering (a dead `bit serve` worker, a broken
    /// connection) by panicking where a tensor is read; that becomes
    /// [`TrainError::DeviceFailed`] here, with the checkpoints written before untouched.
    #[allow(clippy::too_many_arguments)]
    pub fn drive<O: Objective>(
        &mut self,
        at: Position,
        objective: &mut O,
        parallel: &mut DataParallel,
        batches: &mut BatchStream,
        settings: &LoopSettings,
        schedule: (&dyn Fn(usize) -> Option<f64>, usize),
        bookmark: &Bookmark,
        stop: &AtomicBool,
    ) -> Result<Finished<O::Eval>> {
        let step = std::sync::atomic::AtomicUsize::new(at.step);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.drive_steps(
                at, objective, parallel, batches, settings, schedule, bookmark, stop, &step,
            )
        }));
        outcome.unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a device thread panicked")
                .to_string();
            self.log.finish_progress();
            let step = step.load(Ordering::SeqCst);
            self.log
                .warn(&format!("[step {step}]: device failure: {reason}"));
            Err(TrainError::DeviceFailed { step, reason })
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn drive_steps<O: Objective>(
        &mut self,
        mut at: Position,
        objective: &mut O,
        parallel: &mut DataParallel,
        batches: &mut BatchStream,
        settings: &LoopSettings,
        (lr, total): (&dyn Fn(usize) -> Option<f64>, usize),
        bookmark: &Bookmark,
        stop: &AtomicBool,
        step: &std::sync::atomic::AtomicUsize,
    ) -> Result<Finished<O::Eval>> {
        at.model = at.model.with_precision(settings.precision);
        if settings.precision.needs_loss_scaling() {
            at.loss_scale.get_or_insert_with(LossScale::default);
        }
        parallel.replicate(&at.model, &at.optim);
        self.log.info("Starting training!");
        self.log.start_progress(at.step, total);
        let started = Instant::now();
        let mut interrupted = false;
        while let Some(rate) = lr(at.step) {
            if stop.load(Ordering::SeqCst) {
                self.log
                    .warn(&format!("Stop requested: finishing at step {}", at.step));
                interrupted = true;
                break;
            }
            let grads =
                self.step_gradients(&mut at, objective, parallel, batches, settings, rate)?;
            let grads = match at.loss_scale.as_mut() {
                None => Some(grads),
                Some(scaler) => match scaler.unscale(&at.model, grads) {
                    Scaled::Finite(grads) => Some(grads),
                    Scaled::Overflow { scale } => {
                        self.log.warn(&format!(
                            "[step {}]: gradients overflowed at loss scale {scale}: update \
                             skipped, scale now {}",
                            at.step, scaler.scale
                        ));
                        None
                    }
                },
            };
            if let Some(grads) = grads {
                let grads = match settings.clip_global_norm {
                    Some(max) => clip_global_norm(&at.model, grads, max),
                    None => grads,
                };
                let start = Instant::now();
                at.model = parallel.step(rate, at.model, &mut at.optim, grads);
                self.timings.add("update", start);
            }
            at.step += 1;
            step.store(at.step, Ordering::SeqCst);
            self.log.progress(at.step, String::new());
            let due = settings
                .eval_every
                .is_some_and(|n| at.step.is_multiple_of(n));
            if due && lr(at.step).is_some() {
                let eval = self.evaluate(objective, &at.model, &at.step.to_string());
                self.checkpoint_unless_diverged::<O>(eval, &at, settings, bookmark)?;
            }
        }
        // Training time proper: evaluations inside the loop are not training.
        self.train_secs = started.elapsed().as_secs_f64() - self.timings.total("eval");
        self.log.finish_progress();
        let eval = self.evaluate(objective, &at.model, "end");
        let eval = self.checkpoint_unless_diverged::<O>(eval, &at, settings, bookmark)?;
        Ok(Finished {
            at,
            eval,
            interrupted,
        })
    }

    /// The summed gradients of one optimizer step's micro-batches (logged one by one) over
    /// every device, on the main device.
    fn step_gradients<O: Objective>(
        &mut self,
        at: &mut Position,
        objective: &mut O,
        parallel: &mut DataParallel,
        batches: &mut BatchStream,
        settings: &LoopSettings,
        rate: f64,
    ) -> Result<GradientsParams> {
        let step = at.step;
        let split = settings.batch_split;
        for micro in 1..=split {
            let start = Instant::now();
            let batch = batches.next().ok_or(TrainError::StreamEnded { step })??;
            at.next_batch += 1;
            self.images_seen += batch.len();
            self.timings.add("load", start);
            let start = Instant::now();
            let loss_scale = at.loss_scale.map_or(1.0, |s| s.scale);
            let scale = loss_scale / split as f32;
            let loss = objective.backward(parallel, &at.model, &batch, step, scale)?;
            self.timings.add("fprop+grads", start);
            if !loss.is_finite() {
                self.log
                    .warn(&format!("[step {step}]: loss={loss}: stopping"));
                self.log.finish_progress();
                return Err(TrainError::NonFiniteLoss { step, loss });
            }
            let of = if split > 1 {
                format!(" ({micro}/{split})")
            } else {
                String::new()
            };
            let lr = python_exp(rate);
            self.log
                .info(&format!("[step {step}{of}]: loss={loss:.5} (lr={lr})"));
            self.log.metric(json!({"event": "train", "step": step, "micro_batch": micro, "loss": loss, "lr": rate}));
            self.log.progress(step, format!("loss {loss:.4} lr {lr}"));
        }
        let start = Instant::now();
        let grads = parallel.all_reduce(&at.model);
        self.timings.add("all-reduce", start);
        Ok(grads)
    }

    fn evaluate<O: Objective>(
        &mut self,
        objective: &mut O,
        model: &ResNetV2,
        at: &str,
    ) -> Result<O::Eval> {
        let start = Instant::now();
        let eval = objective.evaluate(model)?;
        self.timings.add("eval", start);
        O::log_eval(&eval, at, &mut self.log);
        // The picture is a convenience: failing to draw it must not stop the run.
        if let Err(e) = crate::plot::refresh(&self.dir) {
            self.log
                .warn(&format!("could not draw the run's curves: {e}"));
        }
        Ok(eval)
    }

    /// After an evaluation: saves the checkpoint unless the run diverged (a non-finite loss or
    /// weights are never checkpointed, so a rerun resumes the last good ones), and returns the
    /// evaluation. A failed evaluation still gets the trained steps checkpointed before its
    /// error is reported.
    fn checkpoint_unless_diverged<O: Objective>(
        &mut self,
        eval: Result<O::Eval>,
        at: &Position,
        settings: &LoopSettings,
        bookmark: &Bookmark,
    ) -> Result<O::Eval> {
        let step = at.step;
        let save = || -> Result<()> {
            if !at.model.non_finite_parameters().is_empty() {
                return Err(TrainError::NonFiniteLoss {
                    step,
                    loss: f32::NAN,
                });
            }
            if settings.save {
                checkpoint::save(&self.dir, &at.model, &at.optim, &bookmark.state(at))?;
            }
            Ok(())
        };
        match eval {
            Ok(eval) if !O::eval_loss(&eval).is_finite() => {
                let loss = O::eval_loss(&eval);
                self.log.warn(&format!(
                    "Validation loss is {loss} at step {step}: not checkpointing a diverged model"
                ));
                Err(TrainError::NonFiniteLoss {
                    step,
                    loss: loss as f32,
                })
            }
            Ok(eval) => save().map(|()| eval),
            Err(error) => {
                save()?;
                Err(error)
            }
        }
    }

    /// Writes the trained model to `{run}/model.safetensors` with its input resolution and
    /// class names, so `bit predict`/`bit eval` need nothing else.
    pub fn export(
        &mut self,
        model: &ResNetV2,
        crop: usize,
        classes: Option<&[String]>,
    ) -> Result<PathBuf> {
        let path = self.dir.join("model.safetensors");
        model
            .clone()
            .valid()
            .save_safetensors_with_metadata(&path, &bit_infer::metadata(crop, classes))?;
        self.log
            .info(&format!("Saved the trained model to '{}'", path.display()));
        Ok(path)
    }

    /// Logs the training throughput and the mean time of each phase.
    pub fn report(&mut self) {
        if self.images_seen > 0 {
            self.log.info(&format!("Throughput: {:.2} img/s over {} training images (loader, model and optimizer; evaluations excluded)", self.images_seen as f64 / self.train_secs, self.images_seen));
        }
        self.log
            .info(&format!("Timings:\n{}", self.timings.report()));
    }
}

/// What a checkpoint records of a run's data and settings besides its position, and what a
/// resumed run must match.
pub(crate) struct Bookmark {
    /// Seed of shuffling, augmentation and mixup.
    pub seed: u64,
    /// Class names of the training set.
    pub classes: Vec<String>,
    /// Size of the training set.
    pub train_examples: usize,
    /// Global batch size.
    pub batch: usize,
}

impl Bookmark {
    /// The bookmark of a run with `settings` training on `train`.
    pub fn of(settings: &crate::config::RunSettings, train: &dyn bit_data::ImageDataset) -> Self {
        Self {
            seed: settings.seed,
            classes: train.classes().to_vec(),
            train_examples: train.len(),
            batch: settings.batch,
        }
    }

    /// The checkpoint state of position `at`.
    pub fn state(&self, at: &Position) -> TrainState {
        TrainState {
            step: at.step,
            next_batch: at.next_batch,
            seed: self.seed,
            model: at.model.config(),
            classes: self.classes.clone(),
            train_examples: self.train_examples,
            batch: self.batch,
            batch_split: at.batch_split,
            loss_scale: at.loss_scale,
        }
    }

    /// Resumes `saved` (its optimizer state loaded into `optim`), refusing a checkpoint of
    /// other data or settings, and non-finite weights.
    pub fn resume(
        &self,
        saved: &checkpoint::Saved,
        optim: ModuleOptimizer,
        device: &Device,
        log: &mut RunLog,
    ) -> Result<Position> {
        self.check(saved)?;
        log.info(&format!(
            "Found saved model to resume from at '{}'",
            saved.dir.display()
        ));
        let model = saved.model(device)?;
        if !model.non_finite_parameters().is_empty() {
            let run = saved
                .dir
                .parent()
                .and_then(Path::parent)
                .unwrap_or(&saved.dir);
            return Err(TrainError::NonFiniteCheckpoint {
                path: saved.dir.clone(),
                run: run.to_path_buf(),
            });
        }
        let optim = saved.optimizer(optim)?;
        log.info(&format!("Resumed at step {}", saved.state.step));
        Ok(Position {
            model,
            optim,
            step: saved.state.step,
            next_batch: saved.state.next_batch,
            batch_split: saved.state.batch_split,
            loss_scale: saved.state.loss_scale,
        })
    }

    /// Refuses to continue a saved run with different data or batch settings.
    fn check(&self, saved: &checkpoint::Saved) -> Result<()> {
        let s = &saved.state;
        let detail = if s.classes != self.classes {
            format!("classes {:?}, this one {:?}", s.classes, self.classes)
        } else if s.train_examples != self.train_examples {
            format!(
                "{} training examples, this one {}",
                s.train_examples, self.train_examples
            )
        } else if s.batch != self.batch || s.seed != self.seed {
            format!(
                "batch {} and seed {}, this one batch {} and seed {}",
                s.batch, s.seed, self.batch, self.seed
            )
        } else {
            return Ok(());
        };
        Err(TrainError::ResumeMismatch {
            path: saved.dir.clone(),
            detail,
        })
    }
}

/// The augmented views of a run's training batches: images on the model's device, mixed with
/// a partner from the same micro-batch when mixup is on (one λ per optimizer step, as the
/// reference).
pub(crate) struct Views {
    mixup: Mixup,
    current: Option<(usize, MixupStep)>,
    device: Device,
}

impl Views {
    /// Views on `device` (an autodiff device for training).
    pub fn new(mixup: Mixup, device: Device) -> Self {
        Self {
            mixup,
            current: None,
            device,
        }
    }

    /// The device the views are made on.
    pub fn device(&self) -> Device {
        self.device.clone()
    }

    /// The images of `batch` at optimizer step `step` and what they should be trained on.
    pub fn of(&mut self, batch: &Batch, step: usize) -> (Tensor<4>, Targets) {
        let (x, labels) = batch.to_tensors(&self.device);
        if !self.mixup.enabled() {
            return (
                x,
                Targets {
                    labels,
                    mixed: None,
                },
            );
        }
        if self.current.as_ref().is_none_or(|(s, _)| *s != step) {
            self.current = Some((step, self.mixup.step(step as u64)));
        }
        let (_, mix) = self.current.as_mut().expect("set above");
        let (x, partners) = mix.mix(x, labels.clone());
        let mixed = Some((partners, mix.lambda));
        (x, Targets { labels, mixed })
    }
}

/// Multiplies every gradient of `model`'s parameters in `grads` by `factor`.
pub(crate) fn scale_gradients(model: &ResNetV2, grads: &mut GradientsParams, factor: f32) {
    struct Scale<'a>(&'a mut GradientsParams, f32);
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register(param.id, g * self.1);
            }
        }
    }
    model.visit(&mut Scale(grads, factor));
}

/// Rescales `grads` so that their global L2 norm (over every parameter of `model`) is at most
/// `max`, as `optax.clip_by_global_norm`.
pub(crate) fn clip_global_norm(
    model: &ResNetV2,
    mut grads: GradientsParams,
    max: f32,
) -> GradientsParams {
    struct SumSquares<'a>(&'a GradientsParams, Option<Tensor<1>>);
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.1 = Some(match self.1.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut sum = SumSquares(&grads, None);
    model.visit(&mut sum);
    let Some(total) = sum.1 else {
        return grads;
    };
    let norm = bit_model::backend::host_values(total)[0].sqrt();
    // A non-finite norm is left alone: the loss check reports the divergence.
    if norm.is_finite() && norm > max {
        scale_gradients(model, &mut grads, max / norm);
    }
    grads
}

/// Mean seconds per phase, like the reference's `chrono` report.
#[derive(Default)]
struct Timings(BTreeMap<&'static str, (f64, usize)>);

impl Timings {
    fn add(&mut self, name: &'static str, start: Instant) {
        let entry = self.0.entry(name).or_default();
        entry.0 += start.elapsed().as_secs_f64();
        entry.1 += 1;
    }

    fn total(&self, name: &str) -> f64 {
        self.0.get(name).map_or(0.0, |(t, _)| *t)
    }

    fn report(&self) -> String {
        let mut means: Vec<(&str, f64)> = self
            .0
            .iter()
            .map(|(k, (t, n))| (*k, t / *n as f64))
            .collect();
        means.sort_by(|a, b| b.1.total_cmp(&a.1));
        means
            .iter()
            .map(|(k, t)| format!("{k}: {t:.5}s"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
