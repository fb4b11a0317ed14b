//! Batches for Burn, prepared in the background: a producer thread plans each batch and a pool
//! of `workers` threads decodes and augments its images, while the model works on the previous
//! one. Every batch is a pure function of `(seed, batch number)`, so the stream is the same with
//! any number of workers, and a resumed run can start at any batch.

use std::sync::Arc;
use std::thread::JoinHandle;

use burn::tensor::{Device, Int, Tensor, TensorData};
use crossbeam_channel::{Receiver, bounded};
use rand::RngExt;
use rand::seq::SliceRandom;
use rayon::prelude::*;

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::rng::rng_for;
use crate::transform::Preprocess;

const EPOCH_STREAM: u64 = 1;
const REPLACEMENT_STREAM: u64 = 2;
const AUGMENT_STREAM: u64 = 3;

/// The most loader threads a stream starts.
pub const MAX_WORKERS: usize = 256;

/// How batches are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Examples per batch (the micro-batch when training with `batch_split`).
    pub batch_size: usize,
    /// Threads decoding and augmenting (0 and 1 both mean one).
    pub workers: usize,
    /// Seed of the shuffling and augmentation.
    pub seed: u64,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

impl LoaderConfig {
    /// `batch_size` examples per batch, 4 workers, seed 0, 2 batches ahead.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            workers: 4,
            seed: 0,
            prefetch: 2,
        }
    }

    /// Sets the number of worker threads.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// A batch of preprocessed images, NCHW in `[-1, 1]`, with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `len * 3 * size * size` values.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
    /// Side of the square images.
    pub size: usize,
}

impl Batch {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images `[n, 3, size, size]` and labels `[n]` on `device`.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = self.len();
        let images = TensorData::new(self.images.clone(), [n, 3, self.size, self.size]);
        let labels = TensorData::new(self.labels.iter().map(|&l| l as i64).collect(), [n]);
        (
            Tensor::from_data(images, device),
            Tensor::from_data(labels, device),
        )
    }
}

/// Which examples make batch `b`.
#[derive(Debug, Clone)]
enum Plan {
    /// Reshuffled every epoch; the last batch of an epoch may be short (like PyTorch's
    /// `drop_last=False`). A dataset smaller than one batch is sampled with replacement, like
    /// the reference's `RandomSampler(replacement=True)`.
    Train { first: u64 },
    /// In order, once.
    Eval,
}

/// An iterator over prepared batches; dropping it stops the background work. A failure of the
/// background threads (a decoding error, or a panic) is an `Err` item, never a silently shorter
/// stream.
pub struct BatchStream {
    receiver: Receiver<Result<Batch>>,
    producer: Option<JoinHandle<()>>,
    batches: Option<u64>,
    /// Batches handed out so far.
    received: u64,
    /// Whether the stream has ended (after its last batch or its error).
    done: bool,
}

impl BatchStream {
    /// Endless training batches from batch number `first_batch` on (0 for a new run;
    /// `step * batch_split` when resuming at an optimizer step).
    pub fn train(
        dataset: Arc<dyn ImageDataset>,
        preprocess: Preprocess,
        config: LoaderConfig,
        first_batch: u64,
    ) -> Result<Self> {
        Self::start(
            dataset,
            preprocess,
            config,
            Plan::Train { first: first_batch },
        )
    }

    /// One pass over `dataset` in order, resized to `crop`.
    pub fn eval(dataset: Arc<dyn ImageDataset>, crop: usize, config: LoaderConfig) -> Result<Self> {
        Self::start(dataset, Preprocess::Eval { crop }, config, Plan::Eval)
    }

    /// Number of batches, for a finite stream.
    pub fn num_batches(&self) -> Option<u64> {
        self.batches
    }

    fn start(
        dataset: Arc<dyn ImageDataset>,
        preprocess: Preprocess,
        config: LoaderConfig,
        plan: Plan,
    ) -> Result<Self> {
        preprocess.validate()?;
        if config.batch_size == 0 {
            return Err(DataError::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        if dataset.is_empty() {
            return Err(DataError::InvalidArgument("the dataset is empty".into()));
        }
        if config.workers > MAX_WORKERS {
            return Err(DataError::InvalidArgument(format!(
                "{} workers: at most {MAX_WORKERS} (a few per core is plenty)",
                config.workers
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.workers.max(1))
            .thread_name(|i| format!("bit-data-{i}"))
            .build()
            .map_err(|e| {
                DataError::InvalidArgument(format!("cannot start {} workers: {e}", config.workers))
            })?;
        let n = dataset.len();
        let eval_batches = n.div_ceil(config.batch_size) as u64;
        let batches = matches!(plan, Plan::Eval).then_some(eval_batches);
        let (sender, receiver) = bounded(config.prefetch.max(1));
        let producer = std::thread::Builder::new()
            .name("bit-data-loader".into())
            .spawn(move || {
                let mut planner = Planner {
                    n,
                    config,
                    epoch: None,
                };
                let numbers: Box<dyn Iterator<Item = u64>> = match plan {
                    Plan::Train { first } => Box::new(first..),
                    Plan::Eval => Box::new(0..eval_batches),
                };
                for b in numbers {
                    let indices = match plan {
                        Plan::Train { .. } => planner.train_batch(b),
                        Plan::Eval => (b as usize * config.batch_size
                            ..((b as usize + 1) * config.batch_size).min(n))
                            .collect(),
                    };
                    let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        pool.install(|| prepare(&*dataset, preprocess, &indices, config.seed, b))
                    }))
                    .unwrap_or_else(|panic| {
                        Err(DataError::Loader(format!(
                            "batch {b}: {}",
                            panic_message(panic.as_ref())
                        )))
                    });
                    let failed = batch.is_err();
                    if sender.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| {
                DataError::InvalidArgument(format!("cannot start the loader thread: {e}"))
            })?;
        Ok(Self {
            receiver,
            producer: Some(producer),
            batches,
            received: 0,
            done: false,
        })
    }
}

/// The text of a caught panic's payload (a loader worker's, a device thread's), for an error
/// that says what went wrong instead of unwinding further.
///
/// ```
/// let caught = std::panic::catch_unwind(|| panic!("device lost: {}", 3)).unwrap_err();
/// assert_eq!(bit_data::panic_message(&*caught), "device lost: 3");
/// ```
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a thread panicked without a message".into())
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.batches.is_some_and(|n| self.received >= n) {
            return None;
        }
        match self.receiver.recv() {
            Ok(batch) => {
                self.received += 1;
                self.done = batch.is_err();
                Some(batch)
            }
            // The producer is gone before the last batch: say why instead of ending quietly.
            Err(_) => {
                self.done = true;
                let why = match self.producer.take().map(JoinHandle::join) {
                    Some(Err(panic)) => panic_message(panic.as_ref()),
                    _ => "the loader thread stopped".into(),
                };
                Some(Err(DataError::Loader(format!(
                    "after {} batches: {why}",
                    self.received
                ))))
            }
        }
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Disconnect first so a producer blocked on a full channel wakes up and exits.
        let (_, dead) = bounded(0);
        self.receiver = dead;
        if let Some(producer) = self.producer.take() {
            producer.join().ok();
        }
    }
}

struct Planner {
    n: usize,
    config: LoaderConfig,
    /// The current epoch's number and permutation.
    epoch: Option<(u64, Vec<usize>)>,
}

impl Planner {
    fn train_batch(&mut self, b: u64) -> Vec<usize> {
        let (n, size, seed) = (self.n, self.config.batch_size, self.config.seed);
        if size > n {
            let mut rng = rng_for(seed, REPLACEMENT_STREAM, b);
            return (0..size).map(|_| rng.random_range(0..n)).collect();
        }
        let per_epoch = n.div_ceil(size) as u64;
        let (epoch, pos) = (b / per_epoch, (b % per_epoch) as usize);
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut rng_for(seed, EPOCH_STREAM, epoch));
            self.epoch = Some((epoch, perm));
        }
        let perm = &self.epoch.as_ref().expect("set above").1;
        perm[pos * size..((pos + 1) * size).min(n)].to_vec()
    }
}

/// Decodes and preprocesses the examples of batch `b` in parallel; sample `j` uses its own
/// RNG, so the result does not depend on the thread count.
fn prepare(
    dataset: &dyn ImageDataset,
    preprocess: Preprocess,
    indices: &[usize],
    seed: u64,
    b: u64,
) -> Result<Batch> {
    let size = preprocess.output_size();
    let per_image = 3 * size * size;
    let mut images = vec![0f32; indices.len() * per_image];
    images
        .par_chunks_mut(per_image)
        .zip(indices.par_iter())
        .enumerate()
        .try_for_each(|(j, (out, &i))| {
            let mut rng = rng_for(seed ^ AUGMENT_STREAM.rotate_left(32), b, j as u64);
            preprocess.apply(&dataset.image(i)?, &mut rng, out)
        })?;
    Ok(Batch {
        images,
        labels: indices.iter().map(|&i| dataset.label(i)).collect(),
        size,
    })
}
