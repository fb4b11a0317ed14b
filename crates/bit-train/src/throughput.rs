//! How fast a model runs on a device: images per second for inference or for a whole training
//! step (forward, cross-entropy, backward, the all-reduce over replicas, SGD with momentum),
//! and the memory it took, on the host and on the device. `bit bench` and the `throughput`
//! example print these.
//!
//! Every timed iteration ends with the devices synchronized, so asynchronous (GPU) backends
//! are timed for the work they did, not for queueing it (`into_data` alone does not wait: its
//! bytes are read lazily); inputs are fresh each iteration, so no backend can reuse a previous
//! result.

use std::time::Instant;

use bit_device::Compute;
use bit_model::{Precision, ResNetV2, ResNetV2Config, Trainable};
use burn::tensor::{Device, Distribution, Int, Tensor};

use crate::error::{Result, TrainError};
use crate::memory::peak_resident_memory;
use crate::{DataParallel, Devices, Targets, bit_optimizer};

/// What to time: a batch of square random images, iterations, warm-up.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The network (its weights are random: timing does not depend on them).
    pub model: ResNetV2Config,
    /// Square input resolution.
    pub size: usize,
    /// Images per step.
    pub batch: usize,
    /// Timed iterations.
    pub iters: usize,
    /// Untimed iterations first (kernel compilation and autotuning happen there on GPUs).
    pub warmup: usize,
    /// Training: micro-batches per step, accumulated as `bit train --batch_split` does.
    pub batch_split: usize,
    /// What the network computes in.
    pub precision: Precision,
    /// Training: which part of the network trains (the rest frozen).
    pub train: Trainable,
}

/// The outcome of timing a [`Workload`].
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Seconds of each timed iteration, sorted.
    pub seconds: Vec<f64>,
    /// Images per second at the median iteration.
    pub images_per_second: f64,
    /// The process's peak resident memory (the host's memory, which holds a CPU backend's
    /// tensors), where the OS reports it.
    pub host_peak_bytes: Option<u64>,
    /// What the main device's allocator holds after the run (its pools' high-water mark; they
    /// keep pages for reuse), for backends that report it (the GPU backends).
    pub device_reserved_bytes: Option<u64>,
}

impl Measurement {
    fn of(mut seconds: Vec<f64>, batch: usize, device: &Device) -> Self {
        seconds.sort_by(f64::total_cmp);
        let median = seconds.get(seconds.len() / 2).copied().unwrap_or(f64::NAN);
        Self {
            images_per_second: batch as f64 / median,
            seconds,
            host_peak_bytes: peak_resident_memory(),
            device_reserved_bytes: device.memory_pool_usage().map(|u| u.bytes_reserved),
        }
    }
}

fn images(work: &Workload, batch: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [batch, 3, work.size, work.size],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

/// Times the forward pass on `device`.
///
/// ```
/// use bit_model::{Precision, ResNetV2Config, Trainable};
/// use bit_train::throughput::{Workload, measure_inference};
/// use burn::tensor::Device;
///
/// let work = Workload {
///     model: ResNetV2Config::new([1, 1, 1, 1], 1, 10),
///     size: 32,
///     batch: 2,
///     iters: 2,
///     warmup: 1,
///     batch_split: 1,
///     precision: Precision::F32,
///     train: Trainable::All,
/// };
/// let m = measure_inference(&work, &Device::flex());
/// assert_eq!(m.seconds.len(), 2);
/// assert!(m.images_per_second > 0.0);
/// ```
pub fn measure_inference(work: &Workload, device: &Device) -> Measurement {
    let model = work.model.init(device).with_precision(work.precision);
    let seconds = (0..work.warmup + work.iters)
        .map(|_| {
            let x = images(work, work.batch, device);
            device.sync().ok();
            let start = Instant::now();
            let logits = model.forward(x);
            device.sync().expect("the device ran the forward pass");
            drop(logits);
            start.elapsed().as_secs_f64()
        })
        .skip(work.warmup)
        .collect();
    Measurement::of(seconds, work.batch, device)
}

/// Times training steps over `devices` (one device, or replicas).
///
/// ```
/// use bit_model::{Precision, ResNetV2Config, Trainable};
/// use bit_train::Devices;
/// use bit_train::throughput::{Workload, measure_training};
/// use burn::tensor::Device;
///
/// let work = Workload {
///     model: ResNetV2Config::new([1, 1, 1, 1], 1, 10),
///     size: 32,
///     batch: 4,
///     iters: 1,
///     warmup: 1,
///     batch_split: 2,
///     precision: Precision::F32,
///     train: Trainable::Head,
/// };
/// let devices = Devices::new(vec![Device::flex()]).unwrap();
/// let m = measure_training(&work, devices);
/// assert!(m.images_per_second > 0.0);
/// ```
pub fn measure_training(work: &Workload, devices: Devices) -> Measurement {
    let device = devices.main().clone();
    let model: ResNetV2 = work
        .model
        .init(&device)
        .with_trainable(work.train)
        .with_precision(work.precision);
    let mut parallel = DataParallel::new(devices, model, bit_optimizer());
    let split = work.batch_split.max(1);
    let micro = work.batch / split;
    let mut seconds = Vec::new();
    for i in 0..work.warmup + work.iters {
        let x = images(work, work.batch, &device);
        let y = Tensor::<1, Int>::random([work.batch], Distribution::Uniform(0.0, 10.0), &device);
        device.sync().ok();
        let start = Instant::now();
        for m in 0..split {
            let at = m * micro;
            let targets = Targets {
                labels: y.clone().narrow(0, at, micro),
                mixed: None,
            };
            let x = x.clone().narrow(0, at, micro);
            parallel.backward(x, &targets, 1.0 / split as f32);
        }
        let grads = parallel.all_reduce();
        parallel.step(0.003, grads);
        for device in parallel.devices().as_slice() {
            device.sync().expect("the device ran the step");
        }
        if i >= work.warmup {
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    Measurement::of(seconds, work.batch, &device)
}

/// What to time, as `bit bench` and the `throughput` example take it on the command line.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Bench {
    /// `tiny` or a BiT architecture (R50x1 ... R152x4); weights are random.
    #[cfg_attr(feature = "cli", arg(long, default_value = "R50x1"))]
    pub arch: String,
    /// Square input resolution.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 128))]
    pub size: usize,
    /// Images per step.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub batch: usize,
    /// What to time.
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value_t = Mode::Train))]
    pub mode: Mode,
    /// Timed iterations (the median is reported).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub iters: usize,
    /// Untimed iterations first (GPU kernels are compiled there).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3))]
    pub warmup: usize,
    /// Device(s) (several: data-parallel training) and precision.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub compute: Compute,
    /// Training: micro-batches per step.
    #[cfg_attr(
        feature = "cli",
        arg(long = "batch_split", alias = "batch-split", default_value_t = 1)
    )]
    pub batch_split: usize,
    /// Training: recompute GroupNorm+ReLU outputs in the backward (Burn's balanced strategy).
    #[cfg_attr(
        feature = "cli",
        arg(long = "grad_checkpointing", alias = "grad-checkpointing")
    )]
    pub grad_checkpointing: bool,
    /// Training: which part of the network trains (all, stage1..stage4, head), as `bit train
    /// --train`.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = Trainable::All))]
    pub train: Trainable,
}

/// What [`Bench`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Mode {
    /// The forward pass.
    Infer,
    /// A whole SGD step: forward, cross-entropy, backward, update.
    Train,
}

impl Bench {
    /// Runs it: one line a script can grep (what ran, img/s, the times, memory).
    ///
    /// ```
    /// use bit_device::Compute;
    /// use bit_train::throughput::{Bench, Mode};
    ///
    /// let bench = Bench {
    ///     arch: "tiny".into(),
    ///     size: 32,
    ///     batch: 2,
    ///     mode: Mode::Infer,
    ///     iters: 1,
    ///     warmup: 0,
    ///     compute: Compute::default(),
    ///     batch_split: 1,
    ///     grad_checkpointing: false,
    ///     train: bit_model::Trainable::All,
    /// };
    /// assert!(bench.run().unwrap().contains(" img/s"));
    /// ```
    pub fn run(&self) -> Result<String> {
        if self.batch_split == 0 || !self.batch.is_multiple_of(self.batch_split) {
            return Err(TrainError::InvalidConfig(
                "--batch must be a multiple of --batch_split (at least 1)".into(),
            ));
        }
        let work = Workload {
            model: ResNetV2Config::named(&self.arch, 10)?,
            size: self.size,
            batch: self.batch,
            iters: self.iters.max(1),
            warmup: self.warmup,
            batch_split: self.batch_split,
            precision: self.compute.precision(),
            train: self.train,
        };
        let devices = self.compute.devices()?;
        for device in &devices {
            match self.mode {
                Mode::Infer => self.compute.precision().check(device)?,
                Mode::Train => self.compute.precision().check_training(device)?,
            }
        }
        let m = match self.mode {
            Mode::Infer => measure_inference(&work, &devices[0]),
            Mode::Train => {
                let mut devices = Devices::new(devices)?;
                if self.grad_checkpointing {
                    devices = devices.with_gradient_checkpointing();
                }
                measure_training(&work, devices)
            }
        };
        let mib = |b: Option<u64>| b.map_or("n/a".to_string(), |b| format!("{} MiB", b >> 20));
        let s = &m.seconds;
        let mut levers = Vec::new();
        if self.batch_split > 1 {
            levers.push(format!("split {}", self.batch_split));
        }
        if self.grad_checkpointing {
            levers.push("grad checkpointing".to_string());
        }
        if self.mode == Mode::Train && self.train != Trainable::All {
            levers.push(format!("training {}", self.train));
        }
        let levers = if levers.is_empty() {
            String::new()
        } else {
            format!(" ({})", levers.join(", "))
        };
        Ok(format!(
            "{} @{} {} {} batch {}{levers} on {}: {:.2} img/s (median {:.4} s/step of {}, min \
             {:.4}, max {:.4}); device memory reserved {}; host peak RSS {}",
            self.arch,
            self.size,
            self.compute.precision(),
            match self.mode {
                Mode::Infer => "infer",
                Mode::Train => "train",
            },
            self.batch,
            self.compute.device,
            m.images_per_second,
            s[s.len() / 2],
            s.len(),
            s[0],
            s[s.len() - 1],
            mib(m.device_reserved_bytes),
            mib(m.host_peak_bytes),
        ))
    }
}
