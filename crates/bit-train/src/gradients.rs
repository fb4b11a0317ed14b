//! Whole-model operations on a step's gradients: scaling them (loss-scale unscaling, clipping)
//! and clipping their global norm.

use bit_model::ResNetV2;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Multiplies every gradient of `model`'s parameters in `grads` by `factor`.
pub(crate) fn scale_gradients(model: &ResNetV2, grads: &mut GradientsParams, factor: f32) {
    struct Scale<'a>(&'a mut GradientsParams, f32);
    impl ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.remove::<D>(param.id) {
                self.0.register(param.id, g * self.1);
            }
        }
    }
    model.visit(&mut Scale(grads, factor));
}

/// Rescales `grads` so that their global L2 norm (over every parameter of `model`) is at most
/// `max`, as `optax.clip_by_global_norm`.
pub(crate) fn clip_global_norm(
    model: &ResNetV2,
    mut grads: GradientsParams,
    max: f32,
) -> GradientsParams {
    struct SumSquares<'a>(&'a GradientsParams, Option<Tensor<1>>);
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.1 = Some(match self.1.take() {
                    Some(acc) => acc + s,
                    None => s,
                });
            }
        }
    }
    let mut sum = SumSquares(&grads, None);
    model.visit(&mut sum);
    let Some(total) = sum.1 else {
        return grads;
    };
    let norm = bit_model::backend::host_values(total)[0].sqrt();
    // A non-finite norm is left alone: the loss check reports the divergence.
    if norm.is_finite() && norm > max {
        scale_gradients(model, &mut grads, max / norm);
    }
    grads
}
