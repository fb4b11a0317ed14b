//! What a run optimizes: an [`Objective`] (the loss of a micro-batch on every device, the
//! evaluation, what is exported), the held-out data it is evaluated on ([`EvalData`]), and
//! what the exported model records ([`Export`]).

use std::sync::Arc;

use bit_data::{Batch, BatchStream, ImageDataset, LoaderConfig, Preprocess};
use bit_model::ResNetV2;

use crate::error::Result;
use crate::log::RunLog;
use crate::parallel::DataParallel;

/// What a [`Run`](crate::Run) optimizes and how it is evaluated: fine-tuning on labels
/// ([`train`](crate::train)), distillation from a teacher ([`distill`](crate::distill)), or
/// anything else with a loss per micro-batch (a linear probe: `examples/linear_probe.rs`).
pub trait Objective {
    /// An evaluation's result.
    type Eval;

    /// How the training images are made (crop and augmentation); evaluations centre-crop to
    /// the same side.
    fn preprocess(&self) -> Preprocess;

    /// Forward and backward of `scale * loss` on micro-batch `batch` of optimizer step `step`
    /// over the replicas of `parallel` (usually [`DataParallel::backward`] with targets of the
    /// objective's making), leaving the gradients there; returns the unscaled loss.
    fn backward(
        &mut self,
        parallel: &mut DataParallel,
        batch: &Batch,
        step: usize,
        scale: f32,
    ) -> Result<f32>;

    /// Evaluates `model` (the main replica, with autodiff) on the held-out data.
    fn evaluate(&mut self, model: &ResNetV2, valid: &EvalData) -> Result<Self::Eval>;

    /// The evaluation's loss: a non-finite one means the run diverged.
    fn eval_loss(eval: &Self::Eval) -> f64;

    /// Writes an evaluation to the logs; `at` is the step or `end`.
    fn log_eval(eval: &Self::Eval, at: &str, log: &mut RunLog);

    /// What the exported model records besides its weights.
    fn export(&self) -> Export;
}

/// What `{run}/model.safetensors` records besides the weights, so that `bit predict` and `bit
/// eval` need no further flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The side of the model's input.
    pub resolution: usize,
    /// The names of the head's classes, when they are known.
    pub classes: Option<Vec<String>>,
}

/// The held-out data as evaluations read it: centre crops at the training side, in batches of
/// the training loader's size.
pub struct EvalData {
    valid: Arc<dyn ImageDataset>,
    crop: usize,
    loader: LoaderConfig,
}

impl EvalData {
    /// Centre crops of `valid` at `crop` px, read with `loader`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use bit_data::{InMemoryDataset, LoaderConfig};
    /// use bit_train::EvalData;
    ///
    /// let valid = InMemoryDataset::new(vec!["a".into()], [8, 8, 3], vec![0; 2 * 192], vec![0, 0]).unwrap();
    /// let eval = EvalData::new(Arc::new(valid), 8, LoaderConfig::new(1));
    /// assert_eq!(eval.stream().unwrap().count(), 2);
    /// ```
    pub fn new(valid: Arc<dyn ImageDataset>, crop: usize, loader: LoaderConfig) -> Self {
        Self {
            valid,
            crop,
            loader,
        }
    }

    /// The validation set.
    pub fn dataset(&self) -> &dyn ImageDataset {
        &*self.valid
    }

    /// The side of the crops.
    pub fn crop(&self) -> usize {
        self.crop
    }

    /// One pass over the validation set.
    pub fn stream(&self) -> Result<BatchStream> {
        Ok(BatchStream::eval(
            self.valid.clone(),
            self.crop,
            self.loader,
        )?)
    }
}
