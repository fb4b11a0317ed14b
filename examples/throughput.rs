//! Throughput of a BiT ResNetV2 on one device: images per second for inference or for a full
//! training step (forward, cross-entropy, backward, SGD with momentum), and the peak resident
//! memory of the process. Run each configuration in its own process so the peak is its own:
//!
//! ```text
//! cargo run --release --example throughput -- --arch R50x1 --size 128 --batch 32 --mode train
//! cargo run --release --example throughput -- --arch tiny --size 64 --batch 32 --mode infer
//! cargo run --release --example throughput -- --arch R50x1 --batch 64 --batch-split 4
//! cargo run --release --example throughput -- --arch R50x1 --batch 32 --grad-checkpointing
//! cargo run --release --example throughput -- --arch R50x1 --batch 32 --device cpu,cpu
//! cargo run --release --example throughput -- --arch R50x1 --batch 32 --device ws://127.0.0.1:7001,ws://127.0.0.1:7002
//! ```
//!
//! Weights are random (timing does not depend on them). `--device` picks the backend and, for
//! training, the data-parallel devices as `bit train --device` does: `cpu,cpu` is two replicas
//! in this process, `ws://...` devices that `bit serve` processes serve (their memory is theirs:
//! read their peak from `/proc/PID/status`, as `scripts/bench_scale_out.sh` does).

use std::time::Instant;

use bit_model::backend::devices_from_spec;
use bit_model::{ResNetV2, ResNetV2Config};
use bit_train::memory::peak_resident_memory;
use bit_train::{DataParallel, Targets, bit_optimizer};
use burn::tensor::{Device, Distribution, Int, Tensor};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
struct Args {
    /// `R50x1` ... `R152x4`, or `tiny` (one unit per block, the golden test model).
    #[arg(long, default_value = "R50x1")]
    arch: String,
    /// Square input resolution.
    #[arg(long, default_value_t = 128)]
    size: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, value_enum, default_value_t = Mode::Train)]
    mode: Mode,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Training: process each batch in this many micro-batches (bit-train's accumulation path).
    #[arg(long, default_value_t = 1)]
    batch_split: usize,
    /// Training: recompute GroupNorm+ReLU outputs in the backward (Burn's balanced strategy).
    #[arg(long)]
    grad_checkpointing: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Mode {
    Infer,
    Train,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = match args.arch.as_str() {
        "tiny" => ResNetV2Config::new([1, 1, 1, 1], 1, 10),
        arch => arch.parse::<bit_model::Architecture>()?.config(10),
    };
    let devices = devices_from_spec(&args.device)?;
    let times = match args.mode {
        Mode::Infer => time_inference(&config, &devices[0], &args),
        Mode::Train => {
            let mut parallel = DataParallel::new(devices)?;
            if args.grad_checkpointing {
                parallel = parallel.with_gradient_checkpointing();
            }
            time_training(&config, parallel, &args)
        }
    };
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{} @{} {} batch {}{} on {}: {:.2} img/s (median {:.3} s/iter over {}; min {:.3}, max {:.3}), peak RSS {} MiB",
        args.arch,
        args.size,
        if args.mode == Mode::Train {
            "train"
        } else {
            "inference"
        },
        args.batch,
        match (args.batch_split > 1, args.grad_checkpointing) {
            (true, true) => format!(" (split {}, grad checkpointing)", args.batch_split),
            (true, false) => format!(" (split {})", args.batch_split),
            (false, true) => " (grad checkpointing)".to_string(),
            (false, false) => String::new(),
        },
        args.device,
        args.batch as f64 / median,
        median,
        times.len(),
        sorted[0],
        sorted[sorted.len() - 1],
        peak_resident_memory().map_or("?".into(), |b| (b >> 20).to_string()),
    );
    Ok(())
}

fn images(args: &Args, device: &Device) -> Tensor<4> {
    Tensor::random(
        [args.batch, 3, args.size, args.size],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

fn time_inference(config: &ResNetV2Config, device: &Device, args: &Args) -> Vec<f64> {
    let model = config.init(device);
    (0..args.warmup + args.iters)
        .map(|_| {
            let x = images(args, device);
            device.sync().ok();
            let start = Instant::now();
            let logits = model.forward(x);
            let _ = logits.into_data(); // reading back syncs asynchronous backends
            start.elapsed().as_secs_f64()
        })
        .skip(args.warmup)
        .collect()
}

fn time_training(config: &ResNetV2Config, mut parallel: DataParallel, args: &Args) -> Vec<f64> {
    let device = parallel.main().clone();
    let mut model: ResNetV2 = config.init(&device);
    let mut sgd = bit_optimizer();
    parallel.replicate(&model, &sgd);
    let split = args.batch_split.max(1);
    let micro = args.batch / split;
    let mut times = Vec::new();
    for i in 0..args.warmup + args.iters {
        let x = images(args, &device);
        let y = Tensor::<1, Int>::random([args.batch], Distribution::Uniform(0.0, 10.0), &device);
        device.sync().ok();
        let start = Instant::now();
        for m in 0..split {
            let at = m * micro;
            let targets = Targets {
                labels: y.clone().narrow(0, at, micro),
                mixed: None,
            };
            let x = x.clone().narrow(0, at, micro);
            parallel.backward(&model, x, &targets, 1.0 / split as f32);
        }
        let grads = parallel.all_reduce(&model);
        model = parallel.step(0.003, model, &mut sgd, grads);
        // Reading a parameter back waits for the update on asynchronous backends.
        let _ = model.head.fc.bias.as_ref().map(|b| b.val().into_data());
        if let Some(replica) = parallel.replica(parallel.len() - 1) {
            let _ = replica.head.fc.bias.as_ref().map(|b| b.val().into_data());
        }
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times
}
