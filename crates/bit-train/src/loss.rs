//! What a shard of a micro-batch is scored against, and the losses of the two objectives:
//! cross-entropy on (mixed) labels for fine-tuning, the function-matching KL for distillation.

use bit_model::ResNetV2;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor};

/// The loss of a model on a shard of a micro-batch: what [`DataParallel`](crate::DataParallel)
/// differentiates on every device.
pub trait ShardLoss: Sync {
    /// The mean loss of `model` (the replica on `device`) on `images`, examples
    /// `range.0..range.1` of the micro-batch.
    fn shard_loss(
        &self,
        model: &ResNetV2,
        images: Tensor<4>,
        range: (usize, usize),
        device: &Device,
    ) -> Tensor<1>;
}

/// The labels a micro-batch is trained on: plain, or mixed with partners (mixup).
#[derive(Debug, Clone)]
pub struct Targets {
    /// The examples' own labels.
    pub labels: Tensor<1, Int>,
    /// With mixup: the partners' labels and the weight `λ` of the own labels.
    pub mixed: Option<(Tensor<1, Int>, f32)>,
}

impl Targets {
    /// `λ CE(logits, y) + (1 - λ) CE(logits, y_partner)`, or plain `CE(logits, y)`, for the
    /// logits of examples `a..b`.
    pub fn cross_entropy(&self, logits: Tensor<2>, (a, b): (usize, usize)) -> Tensor<1> {
        let device = logits.device();
        let ce = CrossEntropyLossConfig::new().init(&device);
        let own = self.labels.clone().narrow(0, a, b - a).to_device(&device);
        match &self.mixed {
            Some((partners, lambda)) => {
                let other = partners.clone().narrow(0, a, b - a).to_device(&device);
                ce.forward(logits.clone(), own) * *lambda
                    + ce.forward(logits, other) * (1.0 - lambda)
            }
            None => ce.forward(logits, own),
        }
    }
}

impl ShardLoss for Targets {
    /// [`Targets::cross_entropy`] of the model's logits.
    fn shard_loss(
        &self,
        model: &ResNetV2,
        images: Tensor<4>,
        range: (usize, usize),
        _device: &Device,
    ) -> Tensor<1> {
        self.cross_entropy(model.forward(images), range)
    }
}

/// `T² · KL(softmax(teacher/T) ‖ softmax(student/T))`, averaged over the batch: the function
/// matching loss. The teacher's logits are constants.
///
/// ```
/// use bit_train::distillation_loss;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let s = Tensor::<2>::from_floats([[1.0, 2.0, 3.0]], &device);
/// let same = distillation_loss(s.clone(), s.clone(), 2.0).into_scalar::<f32>();
/// assert!(same.abs() < 1e-6); // matching functions: no loss
/// let other = Tensor::<2>::from_floats([[3.0, 2.0, 1.0]], &device);
/// assert!(distillation_loss(s, other, 2.0).into_scalar::<f32>() > 0.0);
/// ```
pub fn distillation_loss(
    student_logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    temperature: f32,
) -> Tensor<1> {
    let n = student_logits.dims()[0] as f32;
    let teacher = teacher_logits.detach() / temperature;
    let p = softmax(teacher.clone(), 1);
    let log_p = log_softmax(teacher, 1);
    let log_q = log_softmax(student_logits / temperature, 1);
    (p * (log_p - log_q)).sum() * (temperature * temperature / n)
}

/// The teacher's logits for a micro-batch, the targets of its shards.
pub struct TeacherTargets {
    /// `[batch, classes]`, on the model's (autodiff) device, constant.
    pub logits: Tensor<2>,
    /// Softmax temperature.
    pub temperature: f32,
}

impl ShardLoss for TeacherTargets {
    fn shard_loss(
        &self,
        model: &ResNetV2,
        images: Tensor<4>,
        (a, b): (usize, usize),
        device: &Device,
    ) -> Tensor<1> {
        let teacher = self.logits.clone().narrow(0, a, b - a).to_device(device);
        distillation_loss(model.forward(images), teacher, self.temperature)
    }
}

#[cfg(test)]
mod tests {
    use bit_model::backend::host_values as host;
    use burn::tensor::TensorData;

    use super::*;

    #[test]
    fn the_loss_and_its_gradient_match_a_direct_computation() {
        let device = Device::flex().autodiff();
        let (n, c) = (3, 5);
        let s: Vec<f32> = (0..n * c)
            .map(|i| ((i * 37) % 11) as f32 / 3.0 - 1.5)
            .collect();
        let t: Vec<f32> = (0..n * c)
            .map(|i| ((i * 53) % 13) as f32 / 4.0 - 1.0)
            .collect();
        for temperature in [1.0f32, 2.5] {
            let student =
                Tensor::<2>::from_data(TensorData::new(s.clone(), [n, c]), &device).require_grad();
            let teacher = Tensor::<2>::from_data(TensorData::new(t.clone(), [n, c]), &device);
            let loss = distillation_loss(student.clone(), teacher, temperature);
            let value = host(loss.clone())[0] as f64;
            let grads = loss.backward();
            let grad = host(student.grad(&grads).unwrap());
            // Directly, in f64: T² / n · Σ p (log p - log q), and its gradient T / n · (q - p).
            let tt = f64::from(temperature);
            let (mut want, mut want_grad) = (0.0, vec![0.0; n * c]);
            for r in 0..n {
                let log_p = bit_infer::log_softmax(&t[r * c..][..c], tt);
                let log_q = bit_infer::log_softmax(&s[r * c..][..c], tt);
                for k in 0..c {
                    let (p, q) = (log_p[k].exp(), log_q[k].exp());
                    want += tt * tt / n as f64 * p * (log_p[k] - log_q[k]);
                    want_grad[r * c + k] = tt / n as f64 * (q - p);
                }
            }
            assert!(
                (value - want).abs() < 1e-5 * want.abs().max(1.0),
                "T={temperature}: {value} vs {want}"
            );
            for (g, w) in grad.iter().zip(&want_grad) {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-6,
                    "T={temperature}: {g} vs {w}"
                );
            }
        }
        // The temperature softens: at a higher T the same logits are closer in distribution
        // (before the T² factor, which keeps the gradient's scale).
        let kl_at = |t_: f32| {
            let student = Tensor::<2>::from_data(TensorData::new(s.clone(), [n, c]), &device);
            let teacher = Tensor::<2>::from_data(TensorData::new(t.clone(), [n, c]), &device);
            host(distillation_loss(student, teacher, t_))[0] / (t_ * t_)
        };
        assert!(kl_at(4.0) < kl_at(1.0));
    }
}
