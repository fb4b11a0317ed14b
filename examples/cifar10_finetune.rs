//! Fine-tune BiT-M-R50x1 on CIFAR-10 through the library API, the equivalent of
//! `bit train --name cifar10_run --model BiT-M-R50x1 --logdir /tmp/bit_logs --dataset cifar10`:
//!
//! ```text
//! cargo run --release --example cifar10_finetune -- \
//!     --bit-pretrained-dir ~/bit_models --datadir ~/data/cifar10 --examples-per-class 5
//! ```
//!
//! `BiT-M-R50x1.npz` comes from https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz;
//! CIFAR-10 is downloaded into `--datadir` on first use. Ctrl-C stops after the current step,
//! evaluates and checkpoints; running again resumes.

use std::path::PathBuf;

use bit_train::{TrainConfig, TrainOptions, train};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Where BiT-M-R50x1.npz is (downloaded into the cache, $BIT_HOME, if it is not there).
    #[arg(long, default_value = ".")]
    bit_pretrained_dir: PathBuf,
    /// Where CIFAR-10 is, or is downloaded to.
    #[arg(long, default_value = "/tmp/cifar10")]
    datadir: PathBuf,
    /// Where the run's logs and checkpoints go.
    #[arg(long, default_value = "/tmp/bit_logs")]
    logdir: PathBuf,
    /// Few-shot: examples per class (the full 50k images otherwise).
    #[arg(long)]
    examples_per_class: Option<usize>,
    /// Global batch; the README's lighter setting is 128 with --base-lr 0.001.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Micro-batches per step, to fit memory.
    #[arg(long, default_value_t = 4)]
    batch_split: usize,
    #[arg(long, default_value_t = 0.001)]
    base_lr: f64,
    /// `cpu`, or `cuda` / `wgpu` with a GPU build.
    #[arg(long, default_value = "cpu")]
    device: String,
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
        args.logdir,
    );
    config.bit_pretrained_dir = args.bit_pretrained_dir;
    config.examples_per_class = args.examples_per_class;
    config.batch = args.batch;
    config.batch_split = args.batch_split;
    config.base_lr = args.base_lr;
    config.device = args.device;
    config.eval_every = Some(100);
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
