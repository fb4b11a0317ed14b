//! Fine-tuning as `bit_pytorch/train.py` does it, with the fixes the spec lists (checkpoints
//! also without `--eval_every`, seeded few-shot draws, a flip with probability 0.5): the
//! [`FineTune`] objective (cross-entropy on mixed labels) and BiT-HyperRule's schedule on a
//! [`Run`].

use std::path::Path;

use bit_data::{Augment, Batch, ImageDataset, Mixup, Preprocess};
use bit_hyperrule::HyperRule;
use bit_infer::{EvalResult, evaluate};
use bit_model::ResNetV2;
use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor};
use serde_json::json;

use crate::config::TrainConfig;
use crate::error::Result;
use crate::log::RunLog;
use crate::loss::Targets;
use crate::objective::{EvalData, Export, Objective};
use crate::parallel::DataParallel;
use crate::run::{Outcome, Run, TrainOptions};
use crate::views::Views;

/// What a finished (or stopped) fine-tuning run produced.
pub type TrainOutcome = Outcome<EvalResult>;

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
    let (dataset, _) = config.validate()?;
    let mut run = Run::open(&config.run, options, config)?;
    // Fail fast on a missing checkpoint, before any dataset download: a saved run needs none,
    // a new one needs its .npz.
    let pretrained = if run.resumes() {
        None
    } else {
        Some(config.checkpoint_path()?)
    };
    let few_shot = config
        .examples_per_class
        .map(|k| (k, config.examples_per_class_seed));
    let data = run.load_data(few_shot)?;
    let rule = hyper_rule(config, &*data.train);
    run.log().info(&rule.to_string());
    let classes = data.classes().to_vec();
    let start = run.start(&data, bit_optimizer(), |device, log| {
        let path = pretrained.expect("a run without a checkpoint of its own has its .npz");
        fresh(&path, classes.len(), device, log)
    })?;
    let augment = dataset.augment();
    if augment != Augment::default() {
        run.log().info(&format!(
            "Augmentation for this task's labels: random crop {}, flip {}",
            augment.random_crop, augment.flip
        ));
    }
    let mut objective = FineTune::new(rule.clone(), config.run.seed, run.main_device(), classes)?
        .with_augment(augment);
    run.fit(start, &mut objective, data, &rule, None)
}

/// Fine-tuning's objective: cross-entropy on the (mixed) labels, over every device; evaluated
/// by loss, top-1 and top-5 on the validation set.
pub struct FineTune {
    views: Views,
    rule: HyperRule,
    augment: Augment,
    classes: Vec<String>,
}

impl FineTune {
    /// Fine-tuning at `rule`'s resolution and mixup on the main device `device` (seeded by
    /// `seed`), for a head over `classes`.
    ///
    /// ```
    /// use bit_data::{Batch, Preprocess};
    /// use bit_hyperrule::HyperRule;
    /// use bit_train::{FineTune, Objective};
    /// use burn::tensor::Device;
    ///
    /// let rule = HyperRule::new((32, 32), 1000); // 128 px crops of 160 px images, no mixup
    /// let mut objective = FineTune::new(rule, 0, Device::flex().autodiff(), vec!["a".into(), "b".into()])?;
    /// assert_eq!(objective.preprocess(), Preprocess::Train { precrop: 160, crop: 128, flip: true });
    /// let batch = Batch { images: vec![0.0; 2 * 3 * 128 * 128], labels: vec![0, 1], size: 128 };
    /// let (images, targets) = objective.view(&batch, 0);
    /// assert_eq!((images.dims(), targets.mixed.is_none()), ([2, 3, 128, 128], true));
    /// # Ok::<(), bit_train::TrainError>(())
    /// ```
    pub fn new(rule: HyperRule, seed: u64, device: Device, classes: Vec<String>) -> Result<Self> {
        Ok(Self {
            views: Views::new(Mixup::new(rule.mixup_alpha, seed)?, device),
            rule,
            augment: Augment::default(),
            classes,
        })
    }

    /// The objective with other training augmentations than BiT's random crop and flip (the
    /// VTAB tasks whose labels they change: [`DatasetName::augment`](bit_data::DatasetName::augment)).
    ///
    /// ```
    /// use bit_data::{Augment, Preprocess};
    /// use bit_hyperrule::HyperRule;
    /// use bit_train::{FineTune, Objective};
    /// use burn::tensor::Device;
    ///
    /// let rule = HyperRule::new((32, 32), 1000);
    /// let objective = FineTune::new(rule, 0, Device::flex().autodiff(), vec!["a".into()])?
    ///     .with_augment(Augment { random_crop: false, flip: true });
    /// assert_eq!(objective.preprocess(), Preprocess::Train { precrop: 128, crop: 128, flip: true });
    /// # Ok::<(), bit_train::TrainError>(())
    /// ```
    pub fn with_augment(mut self, augment: Augment) -> Self {
        self.augment = augment;
        self
    }

    /// The images of micro-batch `batch` at optimizer step `step` on the main device, mixed
    /// if the rule mixes, and the labels they are trained on: what [`Objective::backward`]
    /// differentiates, for objectives that score the same views another way.
    pub fn view(&mut self, batch: &Batch, step: usize) -> (Tensor<4>, Targets) {
        self.views.of(batch, step)
    }
}

impl Objective for FineTune {
    type Eval = EvalResult;

    fn preprocess(&self) -> Preprocess {
        self.augment.train(self.rule.precrop, self.rule.crop)
    }

    fn backward(
        &mut self,
        parallel: &mut DataParallel,
        batch: &Batch,
        step: usize,
        scale: f32,
    ) -> Result<f32> {
        let (x, targets) = self.view(batch, step);
        Ok(parallel.backward(x, &targets, scale))
    }

    fn evaluate(&mut self, model: &ResNetV2, valid: &EvalData) -> Result<EvalResult> {
        let device = self.views.device().without_autodiff();
        Ok(evaluate(&model.clone().valid(), valid.stream()?, &device)?)
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

    fn export(&self) -> Export {
        Export {
            resolution: self.rule.crop,
            classes: Some(self.classes.clone()),
        }
    }
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
fn fresh(path: &Path, classes: usize, device: &Device, log: &mut RunLog) -> Result<ResNetV2> {
    log.info(&format!("Loading model from {}", path.display()));
    log.info("Fine-tuning from BiT");
    let model = ResNetV2::open_any_with_zero_head(path, classes, device)?;
    model.check_rgb(path)?;
    Ok(model)
}
