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

use bit_model::ResNetV2Config;
use bit_model::backend::devices_from_spec;
use bit_train::DataParallel;
use bit_train::throughput::{Workload, measure_inference, measure_training};
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
    /// f32, or on a GPU device bf16 / f16 (mixed precision).
    #[arg(long, default_value = "f32")]
    precision: bit_model::Precision,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Mode {
    Infer,
    Train,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let model = match args.arch.as_str() {
        "tiny" => ResNetV2Config::new([1, 1, 1, 1], 1, 10),
        arch => arch.parse::<bit_model::Architecture>()?.config(10),
    };
    let work = Workload {
        model,
        size: args.size,
        batch: args.batch,
        iters: args.iters,
        warmup: args.warmup,
        batch_split: args.batch_split,
        precision: args.precision,
    };
    let devices = devices_from_spec(&args.device)?;
    let m = match args.mode {
        Mode::Infer => measure_inference(&work, &devices[0]),
        Mode::Train => {
            let mut parallel = DataParallel::new(devices)?;
            if args.grad_checkpointing {
                parallel = parallel.with_gradient_checkpointing();
            }
            measure_training(&work, parallel)
        }
    };
    let s = &m.seconds;
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
        m.images_per_second,
        s[s.len() / 2],
        s.len(),
        s[0],
        s[s.len() - 1],
        m.host_peak_bytes
            .map_or("?".into(), |b| (b >> 20).to_string()),
    );
    Ok(())
}
