//! The fine-tuning loop of `bit_pytorch/train.py`, with the fixes the spec lists: checkpoints
//! also without `--eval_every`, seeded few-shot draws, a flip with probability 0.5.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bit_data::{
    Batch, BatchStream, DatasetName, ImageDataset, LoaderConfig, Mixup, NonImagePolicy, Preprocess,
    Subset, load_train_valid,
};
use bit_hyperrule::HyperRule;
use bit_infer::{EvalResult, evaluate};
use bit_model::ResNetV2;
use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{ModuleOptimizer, SgdConfig};
use burn::tensor::Device;
use serde_json::json;

use crate::checkpoint;
use crate::config::{RunSettings, TrainConfig};
use crate::error::Result;
use crate::log::RunLog;
use crate::parallel::DataParallel;
use crate::run::{Bookmark, Objective, Position, Run, Views};

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
    let (dataset, datadir) = config.validate()?;
    let mut run = Run::open(config.run_dir(), options.quiet)?;
    run.log.info(&format!("{config:?}"));
    let mut parallel = config.run.data_parallel()?;
    run.log.info(&format!(
        "Going to train on {} device(s): {}",
        parallel.len(),
        config.run.device
    ));
    // Fail fast on a missing checkpoint, before any dataset download: a saved run needs none,
    // a new one needs its .npz.
    let start = match checkpoint::find(&run.dir)? {
        Some(saved) => Start::Resume(saved),
        None => Start::Fresh(config.checkpoint_path()?),
    };
    let few_shot = config
        .examples_per_class
        .map(|k| (k, config.examples_per_class_seed));
    let (train, valid) = load_data(&config.run, (dataset, &datadir), few_shot, &mut run.log)?;
    let rule = hyper_rule(config, &*train);
    run.log.info(&rule.to_string());

    let bookmark = Bookmark::of(&config.run, &*train);
    let main = parallel.main().clone();
    let mut at = match start {
        Start::Resume(saved) => bookmark.resume(&saved, bit_optimizer(), &main, &mut run.log)?,
        Start::Fresh(path) => fresh(&path, bookmark.classes.len(), &main, &mut run.log)?,
    };
    if config.run.save {
        run.log.info(&format!(
            "Model will be saved in '{}'",
            run.dir.join("checkpoints").display()
        ));
    }

    let mut objective = FineTune {
        views: Views::new(Mixup::new(rule.mixup_alpha, config.run.seed)?, main.clone()),
        eval: EvalFeed {
            valid,
            crop: rule.crop,
            loader: config.run.loader(1),
        },
    };
    let split = run.choose_split(
        config.run.batch_split,
        config.run.batch,
        &mut at,
        (&mut objective, &mut parallel),
        rule.crop,
    )?;
    let loader = config.run.loader(split);
    objective.eval.loader = loader;
    let preprocess = Preprocess::Train {
        precrop: rule.precrop,
        crop: rule.crop,
    };
    let mut batches = BatchStream::train(train.clone(), preprocess, loader, at.next_batch)?;
    let finished = run.drive(
        at,
        &mut objective,
        &mut parallel,
        &mut batches,
        &config.run.loop_settings(split, None),
        (&|step| rule.lr(step), rule.total_steps()),
        &bookmark,
        &options.stop,
    )?;
    if config.run.save {
        run.export(&finished.at.model, rule.crop, Some(&bookmark.classes))?;
    }
    run.report();
    Ok(TrainOutcome {
        steps: finished.at.step,
        eval: finished.eval,
        interrupted: finished.interrupted,
        run_dir: run.dir.clone(),
        model: finished.at.model.valid(),
    })
}

/// Fine-tuning's objective: cross-entropy on the (mixed) labels, over every device; evaluated
/// by loss, top-1 and top-5 on the validation set.
struct FineTune {
    views: Views,
    eval: EvalFeed,
}

impl Objective for FineTune {
    type Eval = EvalResult;

    fn backward(
        &mut self,
        parallel: &mut DataParallel,
        model: &ResNetV2,
        batch: &Batch,
        step: usize,
        scale: f32,
    ) -> Result<f32> {
        let (x, targets) = self.views.of(batch, step);
        Ok(parallel.backward(model, x, &targets, scale))
    }

    fn evaluate(&mut self, model: &ResNetV2) -> Result<EvalResult> {
        let device = self.views.device().without_autodiff();
        Ok(evaluate(
            &model.clone().valid(),
            self.eval.stream()?,
            &device,
        )?)
    }

    fn eval_loss(eval: &EvalResult) -> f64 {
        eval.loss
    }

    fn log_eval(result: &EvalResult, at: &str, log: &mut RunLog) {
        log.info(&format!(
            "Validation@{at} loss {:.5}, top1 {:.2}%, top5 {:.2}%",
            result.loss,
            100.0 * result.top1,
            100.0 * result.top5
        ));
        log.metric(json!({"event": "eval", "step": at, "loss": result.loss, "top1": result.top1, "top5": result.top5, "examples": result.examples}));
    }
}

/// The held-out data as the evaluations read it: centre crops at the training resolution.
pub(crate) struct EvalFeed {
    /// The validation set.
    pub valid: Arc<dyn ImageDataset>,
    /// Its crop.
    pub crop: usize,
    /// Batch size and workers.
    pub loader: LoaderConfig,
}

impl EvalFeed {
    /// One pass over the validation set.
    pub fn stream(&self) -> Result<BatchStream> {
        Ok(BatchStream::eval(
            self.valid.clone(),
            self.crop,
            self.loader,
        )?)
    }
}

/// A run's training and validation sets: `dataset` from `datadir` as `run` says (evaluation
/// subset, non-images) with an optional few-shot draw `(K, seed)`. Logs the sizes and skipped
/// files, and checks that every validation image decodes: a broken file must cost seconds now,
/// not the whole run at its end.
pub(crate) fn load_data(
    run: &RunSettings,
    (dataset, datadir): (DatasetName, &Path),
    few_shot: Option<(usize, u64)>,
    log: &mut RunLog,
) -> Result<(Arc<dyn ImageDataset>, Arc<dyn ImageDataset>)> {
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
    Ok((train, valid))
}

/// The BiT-HyperRule for `train`, with the run's overrides.
fn hyper_rule(config: &TrainConfig, train: &dyn ImageDataset) -> HyperRule {
    let image_size = train.image_size().unwrap_or((224, 224));
    let mut rule = HyperRule::new(image_size, train.len())
        .with_batch(config.run.batch)
        .with_base_lr(config.base_lr);
    if let Some(steps) = config.steps {
        rule = rule.with_total_steps(steps);
    }
    if let Some((precrop, crop)) = config.resolution {
        (rule.precrop, rule.crop) = (precrop, crop);
    }
    rule
}

/// Step 0 of fine-tuning: the BiT checkpoint at `path` with a zero head of `classes` classes.
fn fresh(path: &Path, classes: usize, device: &Device, log: &mut RunLog) -> Result<Position> {
    log.info(&format!("Loading model from {}", path.display()));
    log.info("Fine-tuning from BiT");
    let model = ResNetV2::from_npz_with_zero_head(path, classes, device)?;
    model.check_rgb(path)?;
    Ok(Position {
        model,
        optim: bit_optimizer(),
        step: 0,
        next_batch: 0,
        batch_split: None,
        loss_scale: None,
    })
}

/// Where a run starts from.
enum Start {
    /// The run's own last checkpoint.
    Resume(checkpoint::Saved),
    /// A pre-trained BiT checkpoint.
    Fresh(PathBuf),
}
