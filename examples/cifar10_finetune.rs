//! Fine-tune BiT-M-R50x1 on CIFAR-10 through the library API, the equivalent of
//! `bit train --name cifar10_run --model BiT-M-R50x1 --logdir /tmp/bit_logs --dataset cifar10`:
//!
//! ```text
//! cargo run --release --example cifar10_finetune -- \
//!     --bit_pretrained_dir ~/bit_models --datadir ~/data/cifar10 --examples_per_class 5
//! ```
//!
//! `BiT-M-R50x1.npz` comes from https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz;
//! CIFAR-10 is downloaded into `--datadir` on first use. Ctrl-C stops after the current step,
//! evaluates and checkpoints; running again resumes.

use std::path::PathBuf;

use bit_train::{TrainConfig, TrainOptions, train};
use bit_zoo::PretrainedDir;
use clap::Parser;

/// Where things are on this machine; the run's settings are in `main`, in code.
#[derive(Parser)]
struct Args {
    /// Where BiT-M-R50x1.npz is (downloaded into the cache, $BIT_HOME, if it is not there).
    #[command(flatten)]
    models: PretrainedDir,
    /// Where CIFAR-10 is, or is downloaded to.
    #[arg(long, default_value = "/tmp/cifar10")]
    datadir: PathBuf,
    /// Few-shot: examples per class (the full 50k images otherwise).
    #[arg(long = "examples_per_class")]
    examples_per_class: Option<usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Library warnings (skipped files, ignored checkpoint arrays) go to the terminal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = TrainConfig::new(
        "cifar10_run",
        "BiT-M-R50x1",
        "cifar10",
        args.datadir,
        "/tmp/bit_logs",
    );
    config.run.models = args.models;
    config.examples_per_class = args.examples_per_class;
    // A lighter setting: batch 128 in four micro-batches of 32 (an explicit split; the default,
    // `BatchSplit::Auto`, sizes it to the free memory), lr 0.001.
    config.run.batch = 128;
    config.run.batch_split = 4.into();
    config.base_lr = 0.001;
    config.run.eval_every = Some(100);
    let outcome = train(&config, &TrainOptions::default())?;
    println!(
        "CIFAR-10 after {} steps: top-1 {:.2}%, top-5 {:.2}%; model in {}",
        outcome.steps,
        100.0 * outcome.eval.top1,
        100.0 * outcome.eval.top5,
        outcome.run_dir.join("model.safetensors").display()
    );
    Ok(())
}
