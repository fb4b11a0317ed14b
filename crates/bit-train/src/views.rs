//! The augmented views of training batches: the images on the model's device, mixed with a
//! partner (mixup) when the objective mixes.

use bit_data::{Batch, Mixup, MixupStep};
use burn::tensor::{Device, Tensor};

use crate::loss::Targets;

/// The augmented views of a run's training batches: images on the model's device, mixed with
/// a partner from the same micro-batch when mixup is on (one λ per optimizer step, as the
/// reference).
pub struct Views {
    mixup: Mixup,
    current: Option<(usize, MixupStep)>,
    device: Device,
}

impl Views {
    /// Views on `device` (an autodiff device for training).
    ///
    /// ```
    /// use bit_data::{Batch, Mixup};
    /// use bit_train::Views;
    /// use burn::tensor::Device;
    ///
    /// let mut views = Views::new(Mixup::new(0.0, 0).unwrap(), Device::flex());
    /// let batch = Batch { images: vec![0.5; 2 * 3 * 4 * 4], labels: vec![1, 0], size: 4 };
    /// let (images, targets) = views.of(&batch, 0);
    /// assert_eq!(images.dims(), [2, 3, 4, 4]);
    /// assert!(targets.mixed.is_none()); // α = 0: no mixup
    /// ```
    pub fn new(mixup: Mixup, device: Device) -> Self {
        Self {
            mixup,
            current: None,
            device,
        }
    }

    /// The device the views are made on.
    pub fn device(&self) -> Device {
        self.device.clone()
    }

    /// The images of `batch` at optimizer step `step` and what they should be trained on.
    pub fn of(&mut self, batch: &Batch, step: usize) -> (Tensor<4>, Targets) {
        let (x, labels) = batch.to_tensors(&self.device);
        if !self.mixup.enabled() {
            return (
                x,
                Targets {
                    labels,
                    mixed: None,
                },
            );
        }
        if self.current.as_ref().is_none_or(|(s, _)| *s != step) {
            self.current = Some((step, self.mixup.step(step as u64)));
        }
        let (_, mix) = self.current.as_mut().expect("set above");
        let (x, partners) = mix.mix(x, labels.clone());
        let mixed = Some((partners, mix.lambda));
        (x, Targets { labels, mixed })
    }
}
