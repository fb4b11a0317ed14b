//! Throughput of a BiT ResNetV2 on one device: images per second for inference or for a full
//! training step (forward, cross-entropy, backward, SGD with momentum), and the peak resident
//! memory of the process: `bit bench` as an example (`bit_train::throughput::Bench`). Run each
//! configuration in its own process so the peak is its own:
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

use bit_train::throughput::Bench;
use clap::Parser;

/// The arguments of `bit bench`.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    bench: Bench,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", Args::parse().bench.run()?);
    Ok(())
}
