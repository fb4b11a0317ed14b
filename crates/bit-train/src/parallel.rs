//! Data parallelism over every device of the run: each micro-batch is split into one shard per
//! device, each device computes the gradients of its shard on a replica of the model, and the
//! gradients are summed on the main device. Shard losses are weighted by their share of the
//! micro-batch, so the sum is exactly the gradient of the micro-batch mean, whatever the number
//! of devices (as `torch.nn.DataParallel`). GroupNorm has no batch statistics, so nothing else
//! needs synchronising.

use bit_model::ResNetV2;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Int, Tensor};

use crate::error::{Result, TrainError};

/// What a shard of a micro-batch is scored against: `loss` of the logits of examples
/// `range` (a slice of the micro-batch), computed on `device`.
pub trait ShardLoss: Sync {
    /// The mean loss of `logits`, the model's output for examples `range.0..range.1`.
    fn shard_loss(&self, logits: Tensor<2>, range: (usize, usize), device: &Device) -> Tensor<1>;
}

/// The labels a micro-batch is trained on: plain, or mixed with partners (mixup).
#[derive(Debug, Clone)]
pub struct Targets {
    /// The examples' own labels.
    pub labels: Tensor<1, Int>,
    /// With mixup: the partners' labels and the weight `λ` of the own labels.
    pub mixed: Option<(Tensor<1, Int>, f32)>,
}

/// The devices a run trains on; the first holds the model and the optimizer.
#[derive(Debug, Clone)]
pub struct DataParallel {
    devices: Vec<Device>,
}

impl DataParallel {
    /// Trains on `devices` (made autodiff devices here).
    pub fn new(devices: Vec<Device>) -> Result<Self> {
        if devices.is_empty() {
            return Err(TrainError::InvalidConfig("no device to train on".into()));
        }
        Ok(Self {
            devices: devices.into_iter().map(Device::autodiff).collect(),
        })
    }

    /// The device of the model, the optimizer and the accumulated gradients.
    pub fn main(&self) -> &Device {
        &self.devices[0]
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether there are no devices (never true for a built value).
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Gradients of `scale * loss(micro-batch)` with respect to `model`'s parameters, on the
    /// main device, and the unscaled mean loss. `images` and `targets` live on the main device.
    pub fn gradients(
        &self,
        model: &ResNetV2,
        images: Tensor<4>,
        targets: &impl ShardLoss,
        scale: f32,
    ) -> (GradientsParams, f32) {
        let n = images.dims()[0];
        let shards = self.devices.len().min(n);
        let bounds: Vec<(usize, usize)> = (0..shards)
            .map(|i| (i * n / shards, (i + 1) * n / shards))
            .collect();
        let shard = |i: usize| {
            let (a, b) = bounds[i];
            let device = &self.devices[i];
            let replica = if i == 0 {
                model.clone()
            } else {
                model.clone().fork(device)
            };
            let x = images.clone().narrow(0, a, b - a).to_device(device);
            let loss = targets.shard_loss(replica.forward(x), (a, b), device);
            let weight = (b - a) as f32 / n as f32;
            let value = scalar(loss.clone()) * weight;
            let grads = GradientsParams::from_grads((loss * (weight * scale)).backward(), &replica);
            (grads.to_device(self.main(), model), value)
        };
        let results: Vec<(GradientsParams, f32)> = if shards == 1 {
            vec![shard(0)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..shards).map(|i| s.spawn(move || shard(i))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a device thread panicked"))
                    .collect()
            })
        };
        let mut sum = GradientsAccumulator::<ResNetV2>::new();
        let mut loss = 0.0;
        for (grads, value) in results {
            sum.accumulate(model, grads);
            loss += value;
        }
        (sum.grads(), loss)
    }
}

impl ShardLoss for Targets {
    /// `λ CE(logits, y) + (1 - λ) CE(logits, y_partner)`, or plain `CE(logits, y)`.
    fn shard_loss(&self, logits: Tensor<2>, (a, b): (usize, usize), device: &Device) -> Tensor<1> {
        let ce = CrossEntropyLossConfig::new().init(device);
        let own = self.labels.clone().narrow(0, a, b - a).to_device(device);
        match &self.mixed {
            Some((partners, lambda)) => {
                let other = partners.clone().narrow(0, a, b - a).to_device(device);
                ce.forward(logits.clone(), own) * *lambda
                    + ce.forward(logits, other) * (1.0 - lambda)
            }
            None => ce.forward(logits, own),
        }
    }
}

/// The value of a one-element tensor.
fn scalar(t: Tensor<1>) -> f32 {
    bit_model::backend::host_values(t)[0]
}
