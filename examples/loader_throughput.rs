//! Images per second of the bit-data training pipeline (decode, resize, random crop, flip,
//! scale, batch), on CIFAR-shaped images held in memory (32 px -> 160 -> crop 128) and on JPEG
//! files decoded from disk (500x375 -> 512 -> crop 480), for several worker counts:
//!
//! ```text
//! cargo run --release --example loader_throughput -- --workers 1,2
//! ```

use std::sync::Arc;
use std::time::Instant;

use bit_data::{
    BatchStream, FolderDataset, ImageDataset, InMemoryDataset, LoaderConfig, NonImagePolicy,
    Preprocess,
};
use clap::Parser;
use image::{Rgb, RgbImage};

#[derive(Parser)]
struct Args {
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Batches timed per measurement (after one warm-up batch).
    #[arg(long, default_value_t = 10)]
    batches: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let n = 2048;
    let pixels: Vec<u8> = (0..n * 32 * 32 * 3)
        .map(|i| ((i * 2654435761usize) >> 13) as u8)
        .collect();
    let cifar: Arc<dyn ImageDataset> = Arc::new(InMemoryDataset::new(
        vec!["a".into(), "b".into()],
        [32, 32, 3],
        pixels,
        (0..n).map(|i| i % 2).collect(),
    )?);

    let dir = std::env::temp_dir().join(format!("bit-loader-bench-{}", std::process::id()));
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.join(class))?;
        for i in 0..48 {
            let img = RgbImage::from_fn(500, 375, |x, y| {
                Rgb([(x + i) as u8, (y * 3) as u8, ((x ^ y) + i) as u8])
            });
            img.save(dir.join(class).join(format!("{i}.jpg")))?;
        }
    }
    let jpegs: Arc<dyn ImageDataset> = Arc::new(FolderDataset::open(&dir, NonImagePolicy::Error)?);

    for (name, dataset, preprocess, batch) in [
        (
            "CIFAR-shaped 32px -> 160/128",
            cifar,
            Preprocess::Train {
                precrop: 160,
                crop: 128,
                flip: true,
            },
            128,
        ),
        (
            "JPEG 500x375 -> 512/480",
            jpegs,
            Preprocess::Train {
                precrop: 512,
                crop: 480,
                flip: true,
            },
            16,
        ),
    ] {
        for &workers in &args.workers {
            let config = LoaderConfig::new(batch).with_workers(workers);
            let mut stream = BatchStream::train(dataset.clone(), preprocess, config, 0)?;
            stream.next().transpose()?;
            let start = Instant::now();
            let mut images = 0;
            for batch in stream.take(args.batches) {
                images += batch?.len();
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{name}, batch {batch}, {workers} worker(s): {:.0} img/s",
                images as f64 / secs
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
