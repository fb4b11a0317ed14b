//! Data parallelism over every device of the run, as `torch.nn.parallel.DistributedDataParallel`:
//! each device keeps its own replica of the model for the whole run. Each micro-batch is split
//! into one shard per device; each device computes the gradients of its shard on its replica
//! and accumulates them locally. At the end of an optimizer step the gradients are summed
//! across devices (an all-reduce: gathered on the main device and summed there, since Burn
//! 0.22's collective `all_reduce` exists only on CUDA, and through Burn Remote only among one
//! server's devices, while a gather works on every backend and across servers), the main
//! device's optimizer applies the update, and its new weights are copied to every replica
//! (the same bytes the gradients were). Copying the weights rather than having each device
//! apply the same update keeps replicas bit-identical when devices round differently (a CPU
//! beside a GPU with fused multiply-adds), and leaves replicas no optimizer state. Shard
//! losses are weighted by their share of the micro-batch, so the sum is exactly the gradient
//! of the micro-batch mean, whatever the number of devices. GroupNorm has no batch
//! statistics, so nothing else needs synchronising.
//!
//! The devices can be anything Burn runs on: GPUs of this machine, the CPU named several times,
//! or devices served by other processes and machines (`bit serve`, Burn Remote), which then
//! receive their shard of each micro-batch, send back its loss, and exchange gradients and
//! weights with the main device once per optimizer step.

use bit_model::ResNetV2;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};

use crate::error::{Result, TrainError};
use crate::loss::ShardLoss;

/// The devices a run trains on, main first, before a model is placed on them.
///
/// ```
/// use bit_device::devices_from_spec;
/// use bit_train::Devices;
///
/// let devices = Devices::new(devices_from_spec("cpu,cpu").unwrap()).unwrap();
/// assert_eq!(devices.len(), 2);
/// assert!(devices.on_host());
/// ```
pub struct Devices {
    devices: Vec<Device>,
    /// Whether every device is this process's CPU (whose memory the host reports).
    on_host: bool,
    /// With several replicas on this process's CPU, one thread pool each, splitting the cores
    /// between them as separate devices would (instead of every replica's kernels contending
    /// for all of them).
    pools: Vec<rayon::ThreadPool>,
}

impl Devices {
    /// Trains on `devices` (made autodiff devices here).
    pub fn new(devices: Vec<Device>) -> Result<Self> {
        if devices.is_empty() {
            return Err(TrainError::InvalidConfig("no device to train on".into()));
        }
        let on_host = devices.iter().all(|d| *d == Device::flex());
        let pools = if on_host && devices.len() > 1 {
            let share = (rayon::current_num_threads() / devices.len()).max(1);
            // A pool that cannot be built leaves its replica on the global pool: slower, same
            // result.
            (0..devices.len())
                .filter_map(|_| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(share)
                        .build()
                        .ok()
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            on_host,
            pools,
            devices: devices.into_iter().map(Device::autodiff).collect(),
        })
    }

    /// Recomputes cheap activations in the backward instead of keeping them (Burn's balanced
    /// gradient checkpointing): less memory per image, a little more compute.
    pub fn with_gradient_checkpointing(mut self) -> Self {
        self.devices = self
            .devices
            .into_iter()
            .map(Device::gradient_checkpointing)
            .collect();
        self
    }

    /// The device of the model, the optimizer and the all-reduced gradients.
    pub fn main(&self) -> &Device {
        &self.devices[0]
    }

    /// Every device, main first.
    pub fn as_slice(&self) -> &[Device] {
        &self.devices
    }

    /// Whether every device is this process's CPU, so that the host's memory is theirs.
    pub fn on_host(&self) -> bool {
        self.on_host
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are no devices (never true for a built value).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.devices).finish()
    }
}

/// A model on every device of the run and the optimizer of the main one: the main device's
/// replica is the model the run checkpoints and evaluates; after each optimizer step its
/// weights are copied to the others (the same bytes as the gradients were), so replicas on
/// devices whose arithmetic rounds differently (a CPU and a GPU, FMA or not) never drift apart,
/// and need no optimizer state of their own.
///
/// One optimizer step over two CPU replicas, the same update as on one device:
///
/// ```
/// use bit_model::ResNetV2Config;
/// use bit_device::devices_from_spec;
/// use bit_train::{DataParallel, Devices, Targets, bit_optimizer};
/// use burn::tensor::{Distribution, Int, Tensor};
///
/// let devices = Devices::new(devices_from_spec("cpu,cpu").unwrap()).unwrap();
/// let main = devices.main().clone();
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 10).init(&main);
/// let mut parallel = DataParallel::new(devices, model, bit_optimizer());
///
/// let images = Tensor::<4>::random([4, 3, 32, 32], Distribution::Default, &main);
/// let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 3], &main);
/// let loss = parallel.backward(images, &Targets { labels, mixed: None }, 1.0);
/// assert!(loss.is_finite());
/// let grads = parallel.all_reduce();
/// parallel.step(0.003, grads);
/// assert_eq!(parallel.replica(1).unwrap().config(), parallel.model().config());
/// ```
pub struct DataParallel {
    devices: Devices,
    /// One per device, in the order of `devices`: `replicas[0]` is the main model.
    replicas: Vec<ResNetV2>,
    /// The main model's optimizer (momentum buffers included).
    optim: ModuleOptimizer,
    /// The gradients each device has accumulated since the last all-reduce.
    pending: Vec<Option<GradientsAccumulator<ResNetV2>>>,
}

impl DataParallel {
    /// Places `model` (on the main device) on every device, where the copies stay for the run;
    /// `optim` (momentum buffers included) updates the main one.
    pub fn new(devices: Devices, model: ResNetV2, optim: ModuleOptimizer) -> Self {
        let copies: Vec<ResNetV2> = devices.devices[1..]
            .iter()
            .map(|device| model.clone().fork(device))
            .collect();
        let replicas: Vec<ResNetV2> = std::iter::once(model).chain(copies).collect();
        Self {
            pending: replicas.iter().map(|_| None).collect(),
            devices,
            replicas,
            optim,
        }
    }

    /// The main device's model: what the run evaluates and checkpoints.
    pub fn model(&self) -> &ResNetV2 {
        &self.replicas[0]
    }

    /// The main device's optimizer.
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// The model of device `index` (0 is the main model), to check that the replicas stay in
    /// step.
    pub fn replica(&self, index: usize) -> Option<&ResNetV2> {
        self.replicas.get(index)
    }

    /// The devices, main first.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are no devices (never true for a built value).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The devices, the main model and its optimizer: the replicas are dropped.
    pub fn into_parts(mut self) -> (Devices, ResNetV2, ModuleOptimizer) {
        let model = self.replicas.swap_remove(0);
        (self.devices, model, self.optim)
    }

    /// Forward and backward of `scale * loss(micro-batch)`: each device runs its shard on its
    /// replica and keeps the gradients until [`all_reduce`](Self::all_reduce). `images` and
    /// `targets` live on the main device. Returns the unscaled mean loss of the micro-batch.
    pub fn backward(&mut self, images: Tensor<4>, targets: &impl ShardLoss, scale: f32) -> f32 {
        let n = images.dims()[0];
        let shards = self.devices.len().min(n);
        let bounds: Vec<(usize, usize)> = (0..shards)
            .map(|i| (i * n / shards, (i + 1) * n / shards))
            .collect();
        let replicas = &self.replicas;
        let devices = &self.devices.devices;
        let shard = |i: usize| {
            let (a, b) = bounds[i];
            let device = &devices[i];
            let replica = &replicas[i];
            let x = images.clone().narrow(0, a, b - a).to_device(device);
            let loss = targets.shard_loss(replica, x, (a, b), device);
            let weight = (b - a) as f32 / n as f32;
            let value = scalar(loss.clone()) * weight;
            let grads = GradientsParams::from_grads((loss * (weight * scale)).backward(), replica);
            (grads, value)
        };
        let results: Vec<(GradientsParams, f32)> = if shards == 1 {
            vec![shard(0)]
        } else {
            std::thread::scope(|s| {
                let pools = &self.devices.pools;
                let handles: Vec<_> = (0..shards)
                    .map(|i| {
                        s.spawn(move || match pools.get(i) {
                            Some(pool) => pool.install(|| shard(i)),
                            None => shard(i),
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            })
        };
        let mut loss = 0.0;
        for ((grads, value), (pending, replica)) in results
            .into_iter()
            .zip(self.pending.iter_mut().zip(&self.replicas))
        {
            pending
                .get_or_insert_with(GradientsAccumulator::new)
                .accumulate(replica, grads);
            loss += value;
        }
        loss
    }

    /// The sum over devices of the gradients accumulated since the last call, on the main
    /// device: the gradients of the optimizer step.
    pub fn all_reduce(&mut self) -> GradientsParams {
        let main = self.devices.main().clone();
        let model = &self.replicas[0];
        let mut sum = GradientsAccumulator::<ResNetV2>::new();
        for pending in &mut self.pending {
            if let Some(mut acc) = pending.take() {
                sum.accumulate(model, acc.grads().to_device(&main, model));
            }
        }
        sum.grads()
    }

    /// The optimizer step with `grads` (the all-reduced gradients, on the main device) at
    /// learning rate `rate` on the main model, whose new weights then replace every replica's
    /// (copied to each device at once).
    pub fn step(&mut self, rate: f64, grads: GradientsParams) {
        let mut replicas = std::mem::take(&mut self.replicas).into_iter();
        let main = replicas.next().expect("the main replica");
        let main = self.optim.step(rate, main, grads);
        let others = &self.devices.devices[1..];
        let copies: Vec<ResNetV2> = std::thread::scope(|s| {
            let handles: Vec<_> = others
                .iter()
                .map(|device| {
                    let main = &main;
                    s.spawn(move || main.clone().fork(device))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        self.replicas = std::iter::once(main).chain(copies).collect();
    }
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

/// The value of a one-element tensor.
fn scalar(t: Tensor<1>) -> f32 {
    bit_model::backend::host_values(t)[0]
}
