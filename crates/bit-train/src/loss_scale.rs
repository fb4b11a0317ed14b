//! Dynamic loss scaling for f16 training, as PyTorch's `GradScaler`: the loss is multiplied by
//! a large scale before the backward so that small gradients survive f16's range, the summed
//! gradients are divided by it before the update, and a step whose gradients overflowed is
//! skipped and the scale halved; after 2000 steps without overflow the scale doubles.

use bit_model::ResNetV2;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::gradients::scale_gradients;

/// The scale and how long it has held; kept in checkpoints so a resumed run scales as an
/// uninterrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// What the loss is multiplied by.
    pub scale: f32,
    /// Steps since the scale last changed.
    pub good_steps: usize,
}

impl Default for LossScale {
    /// PyTorch's starting scale, 2^16.
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

/// What one step's gradients came to.
pub(crate) enum Scaled {
    /// Unscaled and finite: take the step.
    Finite(GradientsParams),
    /// Overflowed at `scale` (now halved): skip the step.
    Overflow { scale: f32 },
}

impl LossScale {
    /// Steps without overflow before the scale doubles (PyTorch's `growth_interval`).
    pub const GROWTH_INTERVAL: usize = 2000;

    /// `grads` (of the loss times [`scale`](Self::scale)) divided by the scale, or an overflow;
    /// updates the scale either way.
    pub(crate) fn unscale(&mut self, model: &ResNetV2, mut grads: GradientsParams) -> Scaled {
        scale_gradients(model, &mut grads, 1.0 / self.scale);
        let mut check = AllFinite {
            grads: &grads,
            finite: None,
        };
        model.visit(&mut check);
        let finite = check.finite.is_none_or(|f| f.all().into_scalar::<bool>());
        if !finite {
            let scale = self.scale;
            *self = Self {
                scale: (scale / 2.0).max(1.0),
                good_steps: 0,
            };
            return Scaled::Overflow { scale };
        }
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            *self = Self {
                scale: self.scale * 2.0,
                good_steps: 0,
            };
        }
        Scaled::Finite(grads)
    }
}

/// Whether every gradient is finite, as one device value (read once).
struct AllFinite<'a> {
    grads: &'a GradientsParams,
    finite: Option<Tensor<1, burn::tensor::Bool>>,
}

impl ModuleVisitor for AllFinite<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let ok = g.is_finite().all().reshape([1]);
            self.finite = Some(match self.finite.take() {
                Some(acc) => acc.bool_and(ok),
                None => ok,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bit_model::ResNetV2Config;
    use burn::tensor::Device;

    /// The gradients of `scale * sum(logits)` on a constant image.
    fn grads(model: &ResNetV2, scale: f32) -> GradientsParams {
        let x = Tensor::<4>::ones([1, 3, 32, 32], &Device::flex().autodiff());
        GradientsParams::from_grads((model.forward(x).sum() * scale).backward(), model)
    }

    #[test]
    fn an_overflow_skips_the_step_and_halves_the_scale_growth_doubles_it() {
        let model = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&Device::flex().autodiff());
        let mut scale = LossScale::default();
        // Gradients of the scaled loss come back as those of the loss.
        let head = match scale.unscale(&model, grads(&model, 65536.0)) {
            Scaled::Finite(g) => g.get::<2>(model.head.fc.weight.id).unwrap(),
            Scaled::Overflow { .. } => panic!("finite gradients reported as an overflow"),
        };
        let plain = grads(&model, 1.0)
            .get::<2>(model.head.fc.weight.id)
            .unwrap();
        head.into_data()
            .assert_approx_eq::<f32>(&plain.into_data(), burn::tensor::Tolerance::default());
        assert_eq!(scale.good_steps, 1);

        // One infinite gradient: the step is skipped, the scale halved.
        let overflowing = {
            let mut g = grads(&model, 1.0);
            let w = model.head.fc.weight.id;
            let inf =
                Tensor::<2>::full(model.head.fc.weight.dims(), f32::INFINITY, &Device::flex());
            g.remove::<2>(w);
            g.register(w, inf);
            g
        };
        assert!(matches!(
            scale.unscale(&model, overflowing),
            Scaled::Overflow { scale: 65536.0 }
        ));
        assert_eq!(
            scale,
            LossScale {
                scale: 32768.0,
                good_steps: 0
            }
        );

        // The interval's last good step doubles it.
        scale.good_steps = LossScale::GROWTH_INTERVAL - 1;
        assert!(matches!(
            scale.unscale(&model, grads(&model, 1.0)),
            Scaled::Finite(_)
        ));
        assert_eq!(
            scale,
            LossScale {
                scale: 65536.0,
                good_steps: 0
            }
        );
    }
}
