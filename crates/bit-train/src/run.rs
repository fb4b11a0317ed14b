//! One run, whatever it optimizes: a [`Run`] owns the run directory (its lock, logs and
//! checkpoints), the devices, the data and the loop. An [`Objective`] says what a micro-batch's
//! loss is and how the model is evaluated, a [`Schedule`] the learning rate of each step; `bit
//! train` and `bit distill` are each one objective and one schedule on this run.
//!
//! The loop makes one optimizer update per `batch_split` micro-batches, stops on request or on
//! a non-finite loss, evaluates and checkpoints every `eval_every` steps and at the end (never
//! checkpointing weights that went non-finite), then exports the model and reports the time.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bit_data::{Batch, BatchStream, DatasetName};
use bit_model::{ResNetV2, Trainable};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use serde_json::json;

use crate::checkpoint::{self, Bookmark, RunLock, Saved};
use crate::config::RunSettings;
use crate::data::TrainingData;
use crate::error::{Result, TrainError};
use crate::failure;
use crate::gradients::clip_global_norm;
use crate::log::{RunLog, python_exp};
use crate::loss_scale::{LossScale, Scaled};
use crate::memory;
use crate::objective::{EvalData, Export, Objective};
use crate::parallel::{DataParallel, Devices};
use crate::probe::FewShotProbe;
use crate::schedule::Schedule;
use crate::timings::Timings;
use crate::watchdog::Watchdog;

/// How a run is driven from outside.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Set it (e.g. from a Ctrl-C handler) to stop after the current step: the run then
    /// evaluates, checkpoints and returns normally.
    pub stop: Arc<AtomicBool>,
    /// No terminal output (the log files are still written).
    pub quiet: bool,
}

/// What a finished (or stopped) run produced.
#[derive(Debug, Clone)]
pub struct Outcome<E> {
    /// Optimizer steps done in total (including before a resume).
    pub steps: usize,
    /// The final evaluation.
    pub eval: E,
    /// Whether the run was stopped before the end of its schedule.
    pub interrupted: bool,
    /// `{logdir}/{name}`.
    pub run_dir: PathBuf,
    /// The trained model, without autodiff.
    pub model: ResNetV2,
}

/// Where a run starts: the model and its optimizer at a position of the schedule, either the
/// run's last checkpoint or step 0. Made by [`Run::start`].
pub struct Start {
    pub(crate) model: ResNetV2,
    pub(crate) optim: ModuleOptimizer,
    pub(crate) position: Position,
    /// The checkpoint's micro-batches per step, kept when resuming.
    pub(crate) batch_split: Option<usize>,
    /// What the checkpoints record of the data and settings.
    pub(crate) bookmark: Bookmark,
}

impl Start {
    /// The optimizer steps already done.
    pub fn step(&self) -> usize {
        self.position.step
    }

    /// The model the run starts from (on the main device, with autodiff).
    pub fn model(&self) -> &ResNetV2 {
        &self.model
    }
}

/// Where the loop stands besides the weights: what a checkpoint holds of it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Position {
    /// Optimizer steps done.
    pub step: usize,
    /// The next micro-batch of the training stream.
    pub next_batch: u64,
    /// The loss scale of f16 training: the checkpoint's when resuming.
    pub loss_scale: Option<LossScale>,
}

/// A run directory held by this process with the devices it trains on: opened, then its data
/// loaded, its start found, and the loop run with [`fit`](Self::fit).
///
/// A run of a custom objective is the same four calls (see `examples/linear_probe.rs`):
///
/// ```no_run
/// # use bit_train::{Objective, Run, RunSettings, TrainOptions, bit_optimizer};
/// # fn go<O: Objective>(mut objective: O) -> bit_train::Result<()> {
/// let settings = RunSettings::new("probe", "fashion_mnist", "/usr/share/datasets/fashion-mnist", "/tmp/runs");
/// let mut run = Run::open(&settings, &TrainOptions::default(), &settings)?;
/// let data = run.load_data(None)?;
/// let classes = data.classes().len();
/// let start = run.start(&data, bit_optimizer(), |device, _log| {
///     Ok(bit_model::ResNetV2::from_npz_with_zero_head("tiny.npz", classes, device)?)
/// })?;
/// let schedule = bit_hyperrule::HyperRule::new((28, 28), data.train.len());
/// let outcome = run.fit(start, &mut objective, data, &schedule, None)?;
/// # Ok(()) }
/// ```
pub struct Run {
    dir: PathBuf,
    log: RunLog,
    settings: RunSettings,
    /// The dataset of the settings and where it is, as validated when the run was opened.
    data: (DatasetName, PathBuf),
    /// Until the loop places the model on them.
    devices: Option<Devices>,
    /// The run's last checkpoint, found when the run was opened.
    saved: Option<Saved>,
    stop: Arc<AtomicBool>,
    timings: Timings,
    images_seen: usize,
    train_secs: f64,
    _lock: RunLock,
}

impl Run {
    /// Takes the run directory of `settings` (two processes on one would overwrite each other's
    /// checkpoints and logs), opens its logs and writes `config` (the whole configuration of
    /// the run) first, opens the devices and looks for the run's last checkpoint.
    pub fn open(
        settings: &RunSettings,
        options: &TrainOptions,
        config: &dyn Debug,
    ) -> Result<Self> {
        let data = settings.validate()?;
        let dir = settings.run_dir();
        let lock = checkpoint::lock(&dir)?;
        let mut log = RunLog::open(&dir, options.quiet)?;
        log.info(&format!("{config:?}"));
        let devices = settings.devices()?;
        log.info(&format!(
            "Going to train on {} device(s): {}",
            devices.len(),
            settings.compute.device
        ));
        let saved = checkpoint::find(&dir)?;
        Ok(Self {
            dir,
            log,
            settings: settings.clone(),
            data,
            devices: Some(devices),
            saved,
            stop: options.stop.clone(),
            timings: Timings::default(),
            images_seen: 0,
            train_secs: 0.0,
            _lock: lock,
        })
    }

    /// `{logdir}/{name}`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The run's logs, for what an objective or its set-up has to say.
    pub fn log(&mut self) -> &mut RunLog {
        &mut self.log
    }

    /// The device of the model, the optimizer and the evaluations.
    pub fn main_device(&self) -> Device {
        self.devices().main().clone()
    }

    /// Whether the run continues from a checkpoint of its own.
    pub fn resumes(&self) -> bool {
        self.saved.is_some()
    }

    /// The training and validation sets of the run's settings, with an optional few-shot draw
    /// `(K, seed)` (see [`TrainingData`]).
    pub fn load_data(&mut self, few_shot: Option<(usize, u64)>) -> Result<TrainingData> {
        let (dataset, datadir) = &self.data;
        TrainingData::load(&self.settings, (*dataset, datadir), few_shot, &mut self.log)
    }

    /// Where the run starts: its last checkpoint (refusing one of other data or settings, or
    /// with non-finite weights), its optimizer state loaded into `optim`; else `fresh`'s model
    /// on the main device with `optim` as it is.
    pub fn start(
        &mut self,
        data: &TrainingData,
        optim: ModuleOptimizer,
        fresh: impl FnOnce(&Device, &mut RunLog) -> Result<ResNetV2>,
    ) -> Result<Start> {
        let bookmark = Bookmark::of(&self.settings, &*data.train);
        let main = self.main_device();
        let start = match &self.saved {
            Some(saved) => bookmark.resume(saved, optim, &main, &mut self.log)?,
            None => Start {
                model: fresh(&main, &mut self.log)?,
                optim,
                position: Position::default(),
                batch_split: None,
                bookmark,
            },
        };
        if self.settings.save {
            self.log.info(&format!(
                "Model will be saved in '{}'",
                self.dir.join("checkpoints").display()
            ));
        }
        Ok(start)
    }

    /// Trains from `start` on `data` for `objective` at the learning rates of `schedule`,
    /// the summed gradients clipped to global L2 norm `clip_global_norm` if given: places the
    /// model on every device, chooses the split, runs the loop (evaluations and checkpoints
    /// included), exports the model (`{run}/model.safetensors`, unless saving is off) and
    /// reports the time.
    ///
    /// Burn reports a device that stops answering (a dead `bit serve` worker, a broken
    /// connection) by panicking where a tensor is read; that becomes
    /// [`TrainError::DeviceFailed`] here when a device then fails a liveness check, any other
    /// panic [`TrainError::Internal`] (a bug), the checkpoints written before untouched either
    /// way.
    pub fn fit<O: Objective>(
        mut self,
        start: Start,
        objective: &mut O,
        data: TrainingData,
        schedule: &dyn Schedule,
        clip_global_norm: Option<f32>,
    ) -> Result<Outcome<O::Eval>> {
        let precision = self.settings.compute.precision();
        let mut position = start.position;
        if position.step > schedule.total_steps() {
            return Err(TrainError::ResumeMismatch {
                path: self.dir.join("checkpoint.json"),
                detail: format!(
                    "{} steps done, past this schedule's {} (a smaller --steps?)",
                    position.step,
                    schedule.total_steps()
                ),
            });
        }
        if precision.needs_loss_scaling() {
            position.loss_scale.get_or_insert_with(LossScale::default);
        }
        let devices = self.devices.take().expect("a run is fitted once");
        let trainable = self.settings.train;
        if trainable != Trainable::All {
            self.log.info(&format!(
                "Training {trainable}{}; the rest of the network is frozen",
                if trainable == Trainable::Head {
                    ""
                } else {
                    " onwards"
                }
            ));
        }
        let model = start
            .model
            .with_trainable(trainable)
            .with_precision(precision);
        let mut parallel = DataParallel::new(devices, model, start.optim);
        let views = objective.preprocess();
        let split = self.choose_split(
            objective,
            &mut parallel,
            start.batch_split,
            views.output_size(),
        )?;
        let watchdog = match (parallel.devices().on_host(), self.settings.device_timeout) {
            (false, secs) if secs > 0 => self
                .log
                .warner()
                .map(|log| Watchdog::start(Duration::from_secs(secs), log)),
            _ => None,
        };
        let loader = self.settings.loader(split);
        let probe = FewShotProbe::new(&self.settings, &data, views.output_size(), loader)?;
        let mut pass = Loop {
            objective,
            parallel,
            batches: BatchStream::train(data.train, views, loader, position.next_batch)?,
            eval: EvalData::new(data.valid, views.output_size(), loader),
            schedule,
            clip_global_norm,
            split,
            position,
            bookmark: start.bookmark,
            probe,
            watchdog,
        };
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drive(&mut pass)));
        let (eval, interrupted) = outcome.unwrap_or_else(|panic| {
            let reason = bit_data::panic_message(&*panic);
            self.log.finish_progress();
            let step = pass.position.step;
            match failure::first_unresponsive(pass.parallel.devices().as_slice()) {
                Some(device) => {
                    let reason = format!("{device:?} does not answer: {reason}");
                    self.log
                        .warn(&format!("[step {step}]: device failure: {reason}"));
                    Err(TrainError::DeviceFailed { step, reason })
                }
                None => {
                    self.log
                        .warn(&format!("[step {step}]: internal error: {reason}"));
                    Err(TrainError::Internal { step, reason })
                }
            }
        })?;
        let steps = pass.position.step;
        let exported = pass.objective.export();
        let (_, model, _) = pass.parallel.into_parts();
        if self.settings.save {
            self.export(&model, &exported)?;
        }
        self.report();
        Ok(Outcome {
            steps,
            eval,
            interrupted,
            run_dir: self.dir.clone(),
            model: model.valid(),
        })
    }

    /// The micro-batches per step of `setting` (see [`crate::BatchSplit`]): with `auto`, by
    /// probing what micro-batches of `crop` px images cost `objective` on `parallel`'s
    /// devices; a resumed run keeps its checkpoint's split `kept`. Logs the choice.
    fn choose_split<O: Objective>(
        &mut self,
        objective: &mut O,
        parallel: &mut DataParallel,
        kept: Option<usize>,
        crop: usize,
    ) -> Result<usize> {
        let sizes = (self.settings.batch, parallel.len());
        // Momentum (SGD) or two moments (Adam) per parameter on the main device, made at the
        // first update (replicas get weights, not optimizer state).
        let reserve = 2 * 4 * parallel.model().num_params() as u64;
        let on_host = parallel.devices().on_host();
        let probe = |images: usize| -> Result<()> {
            let batch = Batch {
                images: vec![0.0; images * 3 * crop * crop],
                labels: vec![0; images],
                size: crop,
            };
            // A step number no run reaches, so no view of a real step is cached.
            objective.backward(parallel, &batch, usize::MAX, 1.0)?;
            drop(parallel.all_reduce());
            Ok(())
        };
        let setting = self.settings.batch_split;
        let (split, note) = memory::resolve_split(setting, sizes, (kept, reserve), on_host, probe)?;
        self.log.info(&note);
        Ok(split)
    }

    /// Runs the loop to the end of the schedule or a stop request, then evaluates and
    /// checkpoints: the final evaluation, and whether the run was stopped early.
    fn drive<O: Objective>(&mut self, pass: &mut Loop<'_, O>) -> Result<(O::Eval, bool)> {
        self.log.info("Starting training!");
        self.log
            .start_progress(pass.position.step, pass.schedule.total_steps());
        let started = Instant::now();
        let mut interrupted = false;
        while let Some(rate) = pass.schedule.lr(pass.position.step) {
            let step = pass.position.step;
            if self.stop.load(Ordering::SeqCst) {
                self.log
                    .warn(&format!("Stop requested: finishing at step {step}"));
                interrupted = true;
                break;
            }
            let grads = self.step_gradients(pass, rate)?;
            if let Some(grads) = self.unscaled(pass, grads) {
                let model = pass.parallel.model();
                let grads = match pass.clip_global_norm {
                    Some(max) => clip_global_norm(model, grads, max),
                    None => grads,
                };
                let start = Instant::now();
                pass.parallel.step(rate, grads);
                self.timings.add("update", start);
            }
            if let Some(watchdog) = &pass.watchdog {
                watchdog.idle();
            }
            pass.position.step += 1;
            let step = pass.position.step;
            self.log.progress(step, String::new());
            let due = self
                .settings
                .eval_every
                .is_some_and(|n| step.is_multiple_of(n));
            if due && pass.schedule.lr(step).is_some() {
                let eval = self.evaluate(pass, &step.to_string());
                self.checkpoint_unless_diverged(eval, pass)?;
            }
            let probe_due = pass.probe.as_ref().is_some_and(|p| p.due(step));
            if probe_due && pass.schedule.lr(step).is_some() {
                self.probe(pass, &step.to_string())?;
            }
        }
        // Training time proper: evaluations inside the loop are not training.
        self.train_secs = started.elapsed().as_secs_f64() - self.timings.total("eval");
        self.log.finish_progress();
        let eval = self.evaluate(pass, "end");
        let eval = self.checkpoint_unless_diverged(eval, pass)?;
        self.probe(pass, "end")?;
        Ok((eval, interrupted))
    }

    /// The summed gradients of one optimizer step's micro-batches (logged one by one) over
    /// every device, on the main device.
    fn step_gradients<O: Objective>(
        &mut self,
        pass: &mut Loop<'_, O>,
        rate: f64,
    ) -> Result<GradientsParams> {
        let step = pass.position.step;
        let split = pass.split;
        for micro in 1..=split {
            if let Some(watchdog) = &pass.watchdog {
                watchdog.waiting(step);
            }
            let start = Instant::now();
            let batch = pass
                .batches
                .next()
                .ok_or(TrainError::StreamEnded { step })??;
            pass.position.next_batch += 1;
            self.images_seen += batch.len();
            self.timings.add("load", start);
            let start = Instant::now();
            let loss_scale = pass.position.loss_scale.map_or(1.0, |s| s.scale);
            let scale = loss_scale / split as f32;
            let loss = pass
                .objective
                .backward(&mut pass.parallel, &batch, step, scale)?;
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
        if let Some(watchdog) = &pass.watchdog {
            watchdog.waiting(step);
        }
        let start = Instant::now();
        let grads = pass.parallel.all_reduce();
        self.timings.add("all-reduce", start);
        Ok(grads)
    }

    /// With f16 loss scaling, the gradients unscaled, or `None` (the update is skipped) when
    /// they overflowed; without, `grads` as they are.
    fn unscaled<O: Objective>(
        &mut self,
        pass: &mut Loop<'_, O>,
        grads: GradientsParams,
    ) -> Option<GradientsParams> {
        let Some(scaler) = pass.position.loss_scale.as_mut() else {
            return Some(grads);
        };
        match scaler.unscale(pass.parallel.model(), grads) {
            Scaled::Finite(grads) => Some(grads),
            Scaled::Overflow { scale } => {
                self.log.warn(&format!(
                    "[step {}]: gradients overflowed at loss scale {scale}: update skipped, \
                     scale now {}",
                    pass.position.step, scaler.scale
                ));
                None
            }
        }
    }

    fn evaluate<O: Objective>(&mut self, pass: &mut Loop<'_, O>, at: &str) -> Result<O::Eval> {
        let start = Instant::now();
        let eval = pass.objective.evaluate(pass.parallel.model(), &pass.eval)?;
        self.timings.add("eval", start);
        O::log_eval(&eval, at, &mut self.log);
        self.refresh_curves();
        Ok(eval)
    }

    /// Redraws `curves.svg`. The picture is a convenience: failing to draw it must not stop
    /// the run.
    fn refresh_curves(&mut self) {
        if let Err(e) = crate::plot::refresh(&self.dir) {
            self.log
                .warn(&format!("could not draw the run's curves: {e}"));
        }
    }

    /// The few-shot probes of the model's features, if the run has them (timed as evaluation).
    fn probe<O: Objective>(&mut self, pass: &Loop<'_, O>, at: &str) -> Result<()> {
        let Some(probe) = &pass.probe else {
            return Ok(());
        };
        let start = Instant::now();
        let device = pass.parallel.devices().main().clone().without_autodiff();
        probe.run(&pass.parallel.model().valid(), &device, at, &mut self.log)?;
        self.timings.add("eval", start);
        self.refresh_curves();
        Ok(())
    }

    /// After an evaluation: saves the checkpoint unless the run diverged (a non-finite loss or
    /// weights are never checkpointed, so a rerun resumes the last good ones), and returns the
    /// evaluation. A failed evaluation still gets the trained steps checkpointed before its
    /// error is reported.
    fn checkpoint_unless_diverged<O: Objective>(
        &mut self,
        eval: Result<O::Eval>,
        pass: &Loop<'_, O>,
    ) -> Result<O::Eval> {
        let step = pass.position.step;
        let save = || -> Result<()> {
            let model = pass.parallel.model();
            if !model.non_finite_parameters().is_empty() {
                return Err(TrainError::NonFiniteLoss {
                    step,
                    loss: f32::NAN,
                });
            }
            if self.settings.save {
                let state = pass.bookmark.state(&pass.position, model, pass.split);
                checkpoint::save(&self.dir, model, pass.parallel.optimizer(), &state)?;
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

    /// Writes the trained model to `{run}/model.safetensors` with what `exported` records
    /// (input resolution, class names), so `bit predict`/`bit eval` need nothing else.
    fn export(&mut self, model: &ResNetV2, exported: &Export) -> Result<PathBuf> {
        let path = self.dir.join("model.safetensors");
        let metadata = bit_infer::metadata(exported.resolution, exported.classes.as_deref());
        model
            .clone()
            .valid()
            .save_safetensors_with_metadata(&path, &metadata)?;
        self.log
            .info(&format!("Saved the trained model to '{}'", path.display()));
        Ok(path)
    }

    /// Logs the training throughput and the mean time of each phase.
    fn report(&mut self) {
        if self.images_seen > 0 {
            self.log.info(&format!("Throughput: {:.2} img/s over {} training images (loader, model and optimizer; evaluations excluded)", self.images_seen as f64 / self.train_secs, self.images_seen));
        }
        self.log
            .info(&format!("Timings:\n{}", self.timings.report()));
    }

    fn devices(&self) -> &Devices {
        self.devices.as_ref().expect("a run is fitted once")
    }
}

/// The loop's state: what it trains, on what, from where.
struct Loop<'a, O: Objective> {
    objective: &'a mut O,
    parallel: DataParallel,
    batches: BatchStream,
    eval: EvalData,
    schedule: &'a dyn Schedule,
    clip_global_norm: Option<f32>,
    /// Micro-batches per optimizer step; the training stream's batches are `batch / split`.
    split: usize,
    position: Position,
    bookmark: Bookmark,
    /// `--fewshot_every`'s probes.
    probe: Option<FewShotProbe>,
    /// Ends the process when a step waits on devices other than this process's CPU for longer
    /// than `--device_timeout`.
    watchdog: Option<Watchdog>,
}
