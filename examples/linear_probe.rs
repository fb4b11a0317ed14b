//! A third objective on bit-train's [`Run`], written outside the library without touching its
//! loop: a linear probe, which trains only the classifier on the frozen pooled features of a
//! BiT model (the "linear" evaluation of BiT and of VTAB's representation studies). The run
//! keeps everything else it gives `bit train`: logs, metrics, curves, resumable checkpoints,
//! Ctrl-C, data parallelism over `--device`, the memory-sized batch split and the export.
//!
//! ```text
//! cargo run --release --example linear_probe -- --model BiT-M-R50x1 --examples_per_class 10
//! ```
//!
//! On Debian's Fashion-MNIST by default (`apt-get install dataset-fashion-mnist`); `--model` is
//! a released name, a `.npz` or a `.safetensors` of `bit train`, or `tiny` for random weights.

use bit_data::{Batch, Preprocess};
use bit_hyperrule::HyperRule;
use bit_model::ResNetV2;
use bit_train::{
    DataParallel, EvalData, EvalResult, Export, FineTune, Objective, Outcome, Run, RunLog,
    RunSettings, Schedule, ShardLoss, Targets, TrainOptions, bit_optimizer,
};
use burn::tensor::{Device, Tensor};
use clap::Parser;

/// The run's settings (`bit train`'s flags: --name, --logdir, --dataset, --device, ...) and the
/// probe's own.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    run: RunSettings,
    /// The model whose features are probed: a BiT name or file, or `tiny` (random weights).
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Few-shot: train on this many examples per class.
    #[arg(long = "examples_per_class")]
    examples_per_class: Option<usize>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Learning rate (constant: the problem is convex).
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Input side.
    #[arg(long, default_value_t = 64)]
    resolution: usize,
}

/// The probe: fine-tuning's views, evaluation and export, with the loss taken through the head
/// alone on detached features, so that the body never gets a gradient (and SGD, which updates
/// only what has one, leaves it as it is).
struct LinearProbe {
    fine_tune: FineTune,
    crop: usize,
}

/// The labels of a micro-batch, scored through the head alone.
struct ProbeTargets(Targets);

impl ShardLoss for ProbeTargets {
    fn shard_loss(
        &self,
        model: &ResNetV2,
        images: Tensor<4>,
        range: (usize, usize),
        _device: &Device,
    ) -> Tensor<1> {
        let features = model.features(images).detach();
        self.0.cross_entropy(model.head.fc.forward(features), range)
    }
}

impl Objective for LinearProbe {
    type Eval = EvalResult;

    fn preprocess(&self) -> Preprocess {
        // The features of the image as it is: resized, no augmentation.
        Preprocess::Eval { crop: self.crop }
    }

    fn backward(
        &mut self,
        parallel: &mut DataParallel,
        batch: &Batch,
        step: usize,
        scale: f32,
    ) -> bit_train::Result<f32> {
        let (images, targets) = self.fine_tune.view(batch, step);
        Ok(parallel.backward(images, &ProbeTargets(targets), scale))
    }

    fn evaluate(&mut self, model: &ResNetV2, valid: &EvalData) -> bit_train::Result<EvalResult> {
        self.fine_tune.evaluate(model, valid)
    }

    fn eval_loss(eval: &EvalResult) -> f64 {
        FineTune::eval_loss(eval)
    }

    fn log_eval(eval: &EvalResult, at: &str, log: &mut RunLog) {
        FineTune::log_eval(eval, at, log)
    }

    fn export(&self) -> Export {
        self.fine_tune.export()
    }
}

/// A constant learning rate for `steps` steps: a schedule of the example's own.
struct Constant {
    lr: f64,
    steps: usize,
}

impl Schedule for Constant {
    fn lr(&self, step: usize) -> Option<f64> {
        (step < self.steps).then_some(self.lr)
    }

    fn total_steps(&self) -> usize {
        self.steps
    }
}

/// Probes `args.model` on `args.run`'s data.
fn probe(args: &Args, options: &TrainOptions) -> bit_train::Result<Outcome<EvalResult>> {
    let mut run = Run::open(&args.run, options, args)?;
    let few_shot = args.examples_per_class.map(|k| (k, args.run.seed));
    let data = run.load_data(few_shot)?;
    let classes = data.classes().to_vec();
    let start = run.start(&data, bit_optimizer(), |device, log| {
        log.info(&format!("Probing the features of {}", args.model));
        let model = match args.model.as_str() {
            "tiny" => bit_model::ResNetV2Config::named("tiny", classes.len())?.init(device),
            name => args.run.models.hub()?.load(name, device)?,
        };
        Ok(model.with_zero_head(classes.len()))
    })?;
    // The rule only sets the side; no mixup: a probe fits the features of the images
    // themselves. The schedule is the probe's own.
    let mut rule = HyperRule::new((args.resolution, args.resolution), data.train.len());
    (rule.crop, rule.mixup_alpha) = (args.resolution, 0.0);
    let mut objective = LinearProbe {
        fine_tune: FineTune::new(rule, args.run.seed, run.main_device(), classes)?,
        crop: args.resolution,
    };
    let schedule = Constant {
        lr: args.lr,
        steps: args.steps,
    };
    run.fit(start, &mut objective, data, &schedule, None)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let outcome = probe(&args, &TrainOptions::default())?;
    println!(
        "linear probe of {} after {} steps: top-1 {:.2}%, top-5 {:.2}% ({} examples); run in {}",
        args.model,
        outcome.steps,
        100.0 * outcome.eval.top1,
        100.0 * outcome.eval.top5,
        outcome.eval.examples,
        outcome.run_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use bit_testkit::parameter_values;

    use super::*;

    /// On real Fashion-MNIST images: the probe learns (well above the 10% of chance) and only
    /// the classifier moves; a second call resumes the finished run instead of training again.
    #[test]
    fn only_the_classifier_learns_and_it_learns() {
        let logdir = bit_testkit::scratch_root("linear-probe");
        let weights = logdir.join("tiny.npz");
        Device::flex().seed(3);
        let body = bit_model::ResNetV2Config::named("tiny", 10)
            .unwrap()
            .init(&Device::flex());
        body.save_npz(&weights).unwrap();
        let args = Args::parse_from([
            "linear_probe",
            "--name=probe",
            &format!("--logdir={}", logdir.display()),
            &format!("--model={}", weights.display()),
            "--dataset=fashion_mnist",
            "--examples_per_class=20",
            "--batch=50",
            "--batch_split=2",
            "--max_eval_examples=500",
            "--steps=60",
            "--resolution=32",
            "--workers=2",
        ]);
        let quiet = TrainOptions {
            quiet: true,
            ..Default::default()
        };
        let outcome = probe(&args, &quiet).unwrap();
        assert_eq!(outcome.steps, 60);
        assert!(outcome.eval.top1 > 0.4, "top-1 {}", outcome.eval.top1);
        // The classifier learned from its zero start; everything else is the file's.
        let mut trained = outcome.model.clone();
        assert!(parameter_values(&trained.head.fc).iter().any(|w| *w != 0.0));
        trained.head.fc = body.head.fc.clone();
        assert_eq!(parameter_values(&trained), parameter_values(&body));

        let again = probe(&args, &quiet).unwrap();
        assert_eq!(again.steps, 60);
        assert_eq!(
            parameter_values(&again.model),
            parameter_values(&outcome.model)
        );
        std::fs::remove_dir_all(&logdir).ok();
    }
}
