//! The fine-tuning loop of `bit_pytorch/train.py`, with the fixes the spec lists: checkpoints
//! also without `--eval_every`, seeded few-shot draws, a flip with probability 0.5.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bit_data::{
    BatchStream, ImageDataset, LoaderConfig, Mixup, NonImagePolicy, Preprocess, Subset, few_shot,
    load_train_valid,
};
use bit_hyperrule::HyperRule;
use bit_infer::{EvalResult, evaluate};
use bit_model::ResNetV2;
use bit_model::backend::devices_from_spec;
use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsAccumulator, ModuleOptimizer, SgdConfig};
use serde_json::json;

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::log::{RunLog, python_exp};
use crate::parallel::{DataParallel, Targets};

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
pub struct TrainOutcome {
    /// Optimizer steps done in total (including before a resume).
    pub steps: usize,
    /// The final evaluation.
    pub eval: EvalResult,
    /// Whether the run was stopped before the end of its schedule.
    pub interrupted: bool,
    /// `{logdir}/{name}`.
    pub run_dir: PathBuf,
    /// The fine-tuned model, without autodiff.
    pub model: ResNetV2,
}

/// The optimizer of the reference: `torch.optim.SGD(momentum=0.9)`, no dampening, no weight
/// decay.
pub fn bit_optimizer() -> ModuleOptimizer {
    SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
        ))
        .init()
}

/// Fine-tunes a BiT checkpoint on a dataset with the BiT-HyperRule, resuming the run's last
/// checkpoint if there is one.
pub fn train(config: &TrainConfig, options: &TrainOptions) -> Result<TrainOutcome> {
    let dataset = config.validate()?;
    let run_dir = config.run_dir();
    // Two processes on one run directory would overwrite each other's checkpoints and logs.
    let _lock = checkpoint::lock(&run_dir)?;
    let mut log = RunLog::open(&run_dir, options.quiet)?;
    log.info(&format!("{config:?}"));

    let devices = DataParallel::new(devices_from_spec(&config.device)?)?;
    log.info(&format!(
        "Going to train on {} device(s): {}",
        devices.len(),
        config.device
    ));

    // Fail fast on a missing checkpoint, before any dataset download: a saved run needs none,
    // a new one needs its .npz.
    let start = match checkpoint::find(&run_dir)? {
        Some(saved) => Start::Resume(saved),
        None => Start::Fresh(config.checkpoint_path()?),
    };

    let policy = NonImagePolicy::from_skip_flag(config.skip_non_images);
    let data = load_train_valid(dataset, &config.datadir, policy)?;
    let train: Arc<dyn ImageDataset> = match config.examples_per_class {
        Some(k) => Arc::new(few_shot(data.train, k, config.examples_per_class_seed)?),
        None => data.train,
    };
    let valid: Arc<dyn ImageDataset> = match config.max_eval_examples {
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
    // A file that does not decode must cost seconds now, not the whole run at its end.
    bit_data::check_decodes(&*valid)?;

    let image_size = train.image_size().unwrap_or((224, 224));
    let mut rule = HyperRule::new(image_size, train.len())
        .with_batch(config.batch)
        .with_base_lr(config.base_lr);
    if let Some(steps) = config.steps {
        rule = rule.with_total_steps(steps);
    }
    if let Some((precrop, crop)) = config.resolution {
        (rule.precrop, rule.crop) = (precrop, crop);
    }
    log.info(&rule.to_string());

    let classes: Vec<String> = train.classes().to_vec();
    let main = devices.main().clone();
    let mut optim = bit_optimizer();
    let (mut model, mut step, mut next_batch) = match start {
        Start::Resume(saved) => {
            check_resumable(&saved, config, &classes, train.len())?;
            log.info(&format!(
                "Found saved model to resume from at '{}'",
                saved.dir.display()
            ));
            let model = saved.model(&main)?;
            if !model.non_finite_parameters().is_empty() {
                return Err(TrainError::NonFiniteCheckpoint {
                    path: saved.dir.clone(),
                    run: run_dir.clone(),
                });
            }
            optim = saved.optimizer(optim)?;
            log.info(&format!("Resumed at step {}", saved.state.step));
            (model, saved.state.step, saved.state.next_batch)
        }
        Start::Fresh(path) => {
            log.info(&format!("Loading model from {}", path.display()));
            log.info("Fine-tuning from BiT");
            let model = ResNetV2::from_npz_with_zero_head(&path, classes.len(), &main)?;
            model.check_rgb(&path)?;
            (model, 0, 0)
        }
    };
    if config.save {
        log.info(&format!(
            "Model will be saved in '{}'",
            run_dir.join("checkpoints").display()
        ));
    }

    let micro = config.batch / config.batch_split;
    let loader = LoaderConfig {
        batch_size: micro,
        workers: config.workers,
        seed: config.seed,
        prefetch: 2,
    };
    let preprocess = Preprocess::Train {
        precrop: rule.precrop,
        crop: rule.crop,
    };
    let mut batches = BatchStream::train(train.clone(), preprocess, loader, next_batch)?;
    let mixup = Mixup::new(rule.mixup_alpha, config.seed)?;
    let mut timings = Timings::default();
    let run_eval = |model: &ResNetV2,
                    step: String,
                    log: &mut RunLog,
                    timings: &mut Timings|
     -> Result<EvalResult> {
        let start = Instant::now();
        let stream = BatchStream::eval(valid.clone(), rule.crop, loader)?;
        let result = evaluate(
            &model.clone().valid(),
            stream,
            &main.clone().without_autodiff(),
        )?;
        timings.add("eval", start);
        log.info(&format!(
            "Validation@{step} loss {:.5}, top1 {:.2}%, top5 {:.2}%",
            result.loss,
            100.0 * result.top1,
            100.0 * result.top5
        ));
        log.metric(json!({"event": "eval", "step": step, "loss": result.loss, "top1": result.top1, "top5": result.top5, "examples": result.examples}));
        Ok(result)
    };
    // Weights that went non-finite are never checkpointed: a rerun resumes the last good ones.
    let save = |model: &ResNetV2, optim: &ModuleOptimizer, state: &TrainState| -> Result<()> {
        if !model.non_finite_parameters().is_empty() {
            return Err(TrainError::NonFiniteLoss {
                step: state.step,
                loss: f32::NAN,
            });
        }
        if config.save {
            checkpoint::save(&run_dir, model, optim, state)?;
        }
        Ok(())
    };
    let state = |step: usize, next_batch: u64, model: &ResNetV2| TrainState {
        step,
        next_batch,
        seed: config.seed,
        model: model.config(),
        classes: classes.clone(),
        train_examples: train.len(),
        batch: config.batch,
    };

    log.info("Starting training!");
    log.start_progress(step, rule.total_steps());
    let started = Instant::now();
    let (mut images_seen, mut interrupted) = (0usize, false);
    while let Some(lr) = rule.lr(step) {
        if options.stop.load(Ordering::SeqCst) {
            log.warn(&format!("Stop requested: finishing at step {step}"));
            interrupted = true;
            break;
        }
        let mut mix = mixup.step(step as u64);
        let mut grads = GradientsAccumulator::<ResNetV2>::new();
        for accum in 1..=config.batch_split {
            let start = Instant::now();
            let batch = batches
                .next()
                .ok_or_else(|| TrainError::InvalidConfig("the training stream ended".into()))??;
            next_batch += 1;
            images_seen += batch.len();
            let (x, y) = batch.to_tensors(&main);
            let (x, targets) = if mixup.enabled() {
                let (x, partners) = mix.mix(x, y.clone());
                (
                    x,
                    Targets {
                        labels: y,
                        mixed: Some((partners, mix.lambda)),
                    },
                )
            } else {
                (
                    x,
                    Targets {
                        labels: y,
                        mixed: None,
                    },
                )
            };
            timings.add("load", start);
            let start = Instant::now();
            let (g, loss) = devices.gradients(&model, x, &targets, 1.0 / config.batch_split as f32);
            timings.add("fprop+grads", start);
            if !loss.is_finite() {
                log.warn(&format!("[step {step}]: loss={loss}: stopping"));
                log.finish_progress();
                return Err(TrainError::NonFiniteLoss { step, loss });
            }
            grads.accumulate(&model, g);
            let accstep = if config.batch_split > 1 {
                format!(" ({accum}/{})", config.batch_split)
            } else {
                String::new()
            };
            log.info(&format!(
                "[step {step}{accstep}]: loss={loss:.5} (lr={})",
                python_exp(lr)
            ));
            log.metric(json!({"event": "train", "step": step, "micro_batch": accum, "loss": loss, "lr": lr}));
            log.progress(step, format!("loss {loss:.4} lr {}", python_exp(lr)));
        }
        let start = Instant::now();
        model = optim.step(lr, model, grads.grads());
        timings.add("update", start);
        step += 1;
        log.progress(step, String::new());
        if config
            .eval_every
            .is_some_and(|every| step.is_multiple_of(every))
            && rule.lr(step).is_some()
        {
            let eval = run_eval(&model, step.to_string(), &mut log, &mut timings);
            checkpoint_unless_diverged(eval, step, &mut log, || {
                save(&model, &optim, &state(step, next_batch, &model))
            })?;
        }
    }
    // Training time proper: evaluations inside the loop are not training.
    let train_secs = started.elapsed().as_secs_f64() - timings.total("eval");
    log.finish_progress();
    let eval = run_eval(&model, "end".into(), &mut log, &mut timings);
    let eval = checkpoint_unless_diverged(eval, step, &mut log, || {
        save(&model, &optim, &state(step, next_batch, &model))
    })?;
    if config.save {
        let export = run_dir.join("model.safetensors");
        // With its classes and resolution, so `bit predict`/`bit eval` need nothing else.
        model.clone().valid().save_safetensors_with_metadata(
            &export,
            &bit_infer::metadata(rule.crop, Some(&classes)),
        )?;
        log.info(&format!(
            "Saved the fine-tuned model to '{}'",
            export.display()
        ));
    }
    if images_seen > 0 {
        log.info(&format!("Throughput: {:.2} img/s over {images_seen} training images (loader, model and optimizer; evaluations excluded)", images_seen as f64 / train_secs));
    }
    log.info(&format!("Timings:\n{}", timings.report()));
    Ok(TrainOutcome {
        steps: step,
        eval,
        interrupted,
        run_dir,
        model: model.valid(),
    })
}

/// After an evaluation: saves the checkpoint unless the run diverged (a non-finite evaluation
/// loss is never checkpointed, so a rerun resumes the last good weights), and returns the
/// evaluation. An evaluation that failed still gets the trained steps checkpointed before its
/// error is reported.
fn checkpoint_unless_diverged(
    eval: Result<EvalResult>,
    step: usize,
    log: &mut RunLog,
    save: impl FnOnce() -> Result<()>,
) -> Result<EvalResult> {
    match eval {
        Ok(result) if !result.loss.is_finite() => {
            log.warn(&format!(
                "Validation loss is {} at step {step}: not checkpointing a diverged model",
                result.loss
            ));
            Err(TrainError::NonFiniteLoss {
                step,
                loss: result.loss as f32,
            })
        }
        Ok(result) => save().map(|()| result),
        Err(error) => {
            save()?;
            Err(error)
        }
    }
}

/// Where a run starts from.
enum Start {
    /// The run's own last checkpoint.
    Resume(checkpoint::Saved),
    /// A pre-trained BiT checkpoint.
    Fresh(PathBuf),
}

/// Refuses to continue a saved run with different data or batch settings.
fn check_resumable(
    saved: &checkpoint::Saved,
    config: &TrainConfig,
    classes: &[String],
    train_examples: usize,
) -> Result<()> {
    let s = &saved.state;
    let detail = if s.classes != classes {
        Some(format!("classes {:?}, this one {:?}", s.classes, classes))
    } else if s.train_examples != train_examples {
        Some(format!(
            "{} training examples, this one {train_examples}",
            s.train_examples
        ))
    } else if s.batch != config.batch || s.seed != config.seed {
        Some(format!(
            "batch {} and seed {}, this one batch {} and seed {}",
            s.batch, s.seed, config.batch, config.seed
        ))
    } else {
        None
    };
    match detail {
        Some(detail) => Err(TrainError::ResumeMismatch {
            path: saved.dir.clone(),
            detail,
        }),
        None => Ok(()),
    }
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
