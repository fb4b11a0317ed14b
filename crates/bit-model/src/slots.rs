//! Where every parameter of a [`ResNetV2`] body lives: the one table that each checkpoint
//! layout (the release's `.npz`, timm's and transformers' state dicts) names in its own terms.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use crate::bottleneck::PreActBottleneck;
use crate::group_norm::GroupNormRelu;
use crate::resnet::ResNetV2;
use crate::std_conv::StdConv2d;

/// The widest ResNetV2 a checkpoint may describe: BiT's widest is x4; far beyond, the sizes
/// derived from the width stop making sense (and would overflow).
pub(crate) const MAX_WIDTH_FACTOR: usize = 64;

/// A place in the body (everything but the classifier), in BiT's own structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// The stem's 7x7 convolution.
    Root,
    /// GroupNorm `layer` (1, 2 or 3: BiT's `a`, `b`, `c`) of a unit; block and unit count from 0.
    Norm {
        block: usize,
        unit: usize,
        layer: usize,
    },
    /// Convolution `layer` (1, 2 or 3) of a unit.
    Conv {
        block: usize,
        unit: usize,
        layer: usize,
    },
    /// The projection of a block's first unit.
    Projection { block: usize, unit: usize },
    /// The GroupNorm before the head.
    PreHeadNorm,
}

/// What a [`Place`] holds.
pub(crate) enum Slot<'a> {
    /// A standardized convolution (its raw OIHW kernel).
    Conv(&'a mut StdConv2d),
    /// A GroupNorm (its gamma and beta).
    Norm(&'a mut GroupNormRelu),
}

/// Every body parameter of `model` with its place, in the release's order.
pub(crate) fn body_slots(model: &mut ResNetV2) -> Vec<(Place, Slot<'_>)> {
    let mut slots = vec![(Place::Root, Slot::Conv(&mut model.root.conv))];
    for (block, stage) in model.body.iter_mut().enumerate() {
        for (unit, bottleneck) in stage.units.iter_mut().enumerate() {
            let PreActBottleneck {
                gn1,
                conv1,
                gn2,
                conv2,
                gn3,
                conv3,
                downsample,
                ..
            } = bottleneck;
            for (layer, (gn, conv)) in [(gn1, conv1), (gn2, conv2), (gn3, conv3)]
                .into_iter()
                .enumerate()
            {
                let layer = layer + 1;
                slots.push((Place::Norm { block, unit, layer }, Slot::Norm(gn)));
                slots.push((Place::Conv { block, unit, layer }, Slot::Conv(conv)));
            }
            if let Some(proj) = downsample {
                slots.push((Place::Projection { block, unit }, Slot::Conv(proj)));
            }
        }
    }
    slots.push((Place::PreHeadNorm, Slot::Norm(&mut model.head.gn)));
    slots
}

/// Replaces a (possibly still lazy) parameter's value, keeping its id, device and
/// trainability.
pub(crate) fn set_param<const D: usize>(param: &mut Param<Tensor<D>>, data: TensorData) {
    let tensor = Tensor::from_data(data, &param.lazy_device());
    *param = param.clone().transform_for_load(tensor, param.id);
}
