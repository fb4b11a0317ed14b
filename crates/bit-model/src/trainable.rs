//! Partial fine-tuning: which part of a [`ResNetV2`] an optimizer updates.

use std::fmt;
use std::str::FromStr;

use burn::module::Module;

use crate::error::Error;
use crate::resnet::ResNetV2;

/// Where training starts in the network: every parameter from that point to the logits is
/// trained, every one before it frozen. Frozen parameters get no gradient, hence no optimizer
/// state and no weight decay, and when nothing before a point trains, the backward pass stops
/// there (with [`Head`](Self::Head), the body runs forward only: BiT's "linear" baseline, a
/// classifier on frozen pre-logits).
///
/// ```
/// use bit_model::{ResNetV2Config, Trainable};
/// use burn::module::{Module, ModuleVisitor, Param};
/// use burn::tensor::{Device, Tensor};
///
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 10)
///     .init(&Device::flex().autodiff())
///     .with_trainable("stage4".parse::<Trainable>()?);
/// assert!(model.body[3].units[0].conv2.weight.val().is_require_grad());
/// assert!(!model.body[2].units[0].conv2.weight.val().is_require_grad());
/// assert!(model.head.fc.weight.val().is_require_grad());
/// # Ok::<(), bit_model::Error>(())
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Trainable {
    /// Everything (the default: BiT's fine-tuning).
    #[default]
    All,
    /// Stages 1-4, the pre-head norm and the classifier; the stem frozen.
    Stage1,
    /// Stages 2-4 onwards.
    Stage2,
    /// Stages 3-4 onwards.
    Stage3,
    /// Stage 4, the pre-head norm and the classifier.
    Stage4,
    /// The classifier alone, on frozen pre-logits.
    Head,
}

impl Trainable {
    /// Every choice, from the most trained to the least.
    pub const ALL: [Self; 6] = [
        Self::All,
        Self::Stage1,
        Self::Stage2,
        Self::Stage3,
        Self::Stage4,
        Self::Head,
    ];

    /// The first trained stage (0-based) of the body; 4 when only the head trains.
    fn first_stage(self) -> usize {
        match self {
            Self::All | Self::Stage1 => 0,
            Self::Stage2 => 1,
            Self::Stage3 => 2,
            Self::Stage4 => 3,
            Self::Head => 4,
        }
    }
}

impl fmt::Display for Trainable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::All => "all",
            Self::Stage1 => "stage1",
            Self::Stage2 => "stage2",
            Self::Stage3 => "stage3",
            Self::Stage4 => "stage4",
            Self::Head => "head",
        })
    }
}

impl FromStr for Trainable {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|t| t.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "unknown trainable part `{s}`: expected all, stage1, stage2, stage3, stage4 \
                     or head"
                ))
            })
    }
}

impl ResNetV2 {
    /// The model with the parameters before `from` frozen and the rest trainable (see
    /// [`Trainable`]); `Trainable::All` makes every parameter trainable again.
    pub fn with_trainable(mut self, from: Trainable) -> Self {
        let first = from.first_stage();
        self.root = trained(self.root, from == Trainable::All);
        self.body = std::mem::take(&mut self.body)
            .into_iter()
            .enumerate()
            .map(|(b, block)| trained(block, b >= first))
            .collect();
        self.head.gn = trained(self.head.gn, from != Trainable::Head);
        self.head.fc = trained(self.head.fc, true);
        self
    }
}

/// `module` with every parameter trainable, or frozen.
fn trained<M: Module>(module: M, trainable: bool) -> M {
    if trainable {
        module.unfreeze()
    } else {
        module.freeze()
    }
}
