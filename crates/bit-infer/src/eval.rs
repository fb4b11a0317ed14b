//! Evaluation: mean cross-entropy, top-1 and top-5 accuracy over a validation stream.

use std::path::Path;
use std::sync::Arc;

use bit_data::{Batch, ImageDataset};
use bit_model::ResNetV2;
use bit_model::backend::host_values;
use burn::tensor::Device;
use serde::Serialize;

use crate::error::{InferError, Result};
use crate::feed::{Feed, save_labels, write_npy};

/// What an evaluation measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of examples whose label has the highest logit.
    pub top1: f64,
    /// Fraction whose label is among the five highest logits.
    pub top5: f64,
    /// Examples evaluated.
    pub examples: usize,
}

/// Runs `model` (without autodiff) over every batch of `stream` (a
/// [`BatchStream::eval`](bit_data::BatchStream::eval)). Labels index the model's head. Loss
/// and ranks are computed per example on the host from the logits, like the reference's
/// `reduction='none'`.
pub fn evaluate(
    model: &ResNetV2,
    stream: impl IntoIterator<Item = bit_data::Result<Batch>>,
    device: &Device,
) -> Result<EvalResult> {
    evaluate_recording(model, stream, device, None)
}

/// [`evaluate`], also keeping what went in and came out in `record`.
fn evaluate_recording(
    model: &ResNetV2,
    stream: impl IntoIterator<Item = bit_data::Result<Batch>>,
    device: &Device,
    mut record: Option<&mut EvalRecord>,
) -> Result<EvalResult> {
    let (mut loss, mut top1, mut top5, mut examples) = (0.0f64, 0usize, 0usize, 0usize);
    let classes = model.config().head_size;
    if let Some(record) = record.as_deref_mut() {
        record.classes = classes;
    }
    for batch in stream {
        let batch = batch?;
        let (x, _) = batch.to_tensors(device);
        if let Some(record) = record.as_deref_mut() {
            let [_, c, h, w] = x.dims();
            record.input_shape = [c, h, w];
            record.inputs.extend(host_values(x.clone()));
            record.labels.extend_from_slice(&batch.labels);
        }
        let logits = host_values(model.forward(x));
        if let Some(record) = record.as_deref_mut() {
            record.logits.extend_from_slice(&logits);
        }
        for (row, &label) in logits.chunks_exact(classes).zip(&batch.labels) {
            if label >= classes {
                return Err(InferError::ClassMapping(format!(
                    "label {label} for a {classes}-way head"
                )));
            }
            loss -= log_softmax(row, 1.0)[label];
            let rank = rank(row, label);
            top1 += usize::from(rank == 0);
            top5 += usize::from(rank < 5);
            examples += 1;
        }
    }
    let n = examples.max(1) as f64;
    Ok(EvalResult {
        loss: loss / n,
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        examples,
    })
}

/// `log softmax(row / temperature)` in f64, computed stably (the maximum subtracted first);
/// a NaN logit makes every value NaN.
///
/// ```
/// let p = bit_infer::log_softmax(&[0.0, 0.0], 1.0);
/// assert!((p[0] - 0.5f64.ln()).abs() < 1e-12);
/// let sharp = bit_infer::log_softmax(&[0.0, 1.0], 0.5);
/// assert!(sharp[1] > bit_infer::log_softmax(&[0.0, 1.0], 1.0)[1]);
/// ```
pub fn log_softmax(row: &[f32], temperature: f64) -> Vec<f64> {
    let scaled: Vec<f64> = row.iter().map(|&v| f64::from(v) / temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = scaled.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
    scaled.iter().map(|v| v - log_sum).collect()
}

/// The rank of class `label` in a row of logits (0: top-1; below 5: top-5): how many other
/// classes score at least as high. Ties count against the label (a constant head is right for
/// no one), a NaN logit elsewhere counts as higher, and a NaN logit for the label ranks beyond
/// any k, so a model that produces NaN is never correct.
///
/// ```
/// use bit_infer::rank;
///
/// assert_eq!(rank(&[0.1, 0.9, 0.3], 2), 1);
/// assert_eq!(rank(&[0.0; 10], 4), 9);
/// assert_eq!(rank(&[f32::NAN, 0.0], 0), usize::MAX);
/// ```
pub fn rank(row: &[f32], label: usize) -> usize {
    let target = row[label];
    if target.is_nan() {
        return usize::MAX;
    }
    row.iter()
        .enumerate()
        .filter(|&(j, &v)| j != label && (v >= target || v.is_nan()))
        .count()
}

/// [`evaluate`] over every example of `dataset` (labels already index the head; see
/// [`Relabelled`](crate::Relabelled) for datasets whose classes do not).
///
/// ```
/// use std::sync::Arc;
/// use bit_data::InMemoryDataset;
/// use bit_infer::Feed;
/// use bit_model::ResNetV2Config;
/// use burn::tensor::Device;
///
/// let device = Device::flex();
/// // A zero head scores every class alike: ties count against the label, so nothing is top-1
/// // (and with three classes everything is top-5).
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 3).with_zero_head(true).init(&device);
/// let data = InMemoryDataset::new(vec!["a".into(), "b".into(), "c".into()], [8, 8, 3], vec![7; 4 * 192], vec![0, 1, 2, 1])?;
/// let r = bit_infer::evaluate_dataset(&model, Arc::new(data), &Feed::new(32), &device)?;
/// assert_eq!((r.examples, r.top1, r.top5), (4, 0.0, 1.0));
/// assert!((r.loss - 3f64.ln()).abs() < 1e-6);
/// # Ok::<(), bit_infer::InferError>(())
/// ```
pub fn evaluate_dataset(
    model: &ResNetV2,
    dataset: Arc<dyn ImageDataset>,
    feed: &Feed,
    device: &Device,
) -> Result<EvalResult> {
    let (batches, bar) = feed.batches(dataset, "eval")?;
    let result = evaluate(model, batches, device)?;
    bar.finish_and_clear();
    Ok(result)
}

/// What an evaluation fed the network and what came out, image by image, in dataset order:
/// another runtime (an exported ONNX file in onnxruntime or tract) given exactly these inputs
/// must give these logits, whatever its own image decoding and resizing would have done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalRecord {
    /// The network's inputs, row-major `[len, channels, height, width]` (NCHW, RGB scaled to
    /// `[-1, 1]`).
    pub inputs: Vec<f32>,
    /// `[channels, height, width]` of one input.
    pub input_shape: [usize; 3],
    /// The logits, row-major `[len, classes]`.
    pub logits: Vec<f32>,
    /// Width of a row of logits.
    pub classes: usize,
    /// The label of each image (an index of the head).
    pub labels: Vec<usize>,
}

impl EvalRecord {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no image was evaluated.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Writes `inputs.npy` (float32 `[len, C, H, W]`), `logits.npy` (float32 `[len, classes]`)
    /// and `labels.npy` (int64 `[len]`) into `dir` (created if needed), each atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(InferError::io(dir))?;
        let [c, h, w] = self.input_shape.map(|d| d as u64);
        let n = self.len() as u64;
        write_npy(&dir.join("inputs.npy"), &[n, c, h, w], &self.inputs)?;
        write_npy(
            &dir.join("logits.npy"),
            &[n, self.classes as u64],
            &self.logits,
        )?;
        save_labels(&dir.join("labels.npy"), &self.labels)
    }
}

/// [`evaluate_dataset`], also returning every input and logit it saw ([`EvalRecord`]).
///
/// ```
/// use std::sync::Arc;
/// use bit_data::InMemoryDataset;
/// use bit_infer::Feed;
/// use bit_model::ResNetV2Config;
/// use burn::tensor::Device;
///
/// let device = Device::flex();
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device);
/// let data = InMemoryDataset::new(vec!["a".into(), "b".into(), "c".into()], [8, 8, 3], vec![7; 2 * 192], vec![0, 2])?;
/// let (result, record) = bit_infer::evaluate_dataset_recorded(&model, Arc::new(data), &Feed::new(32), &device)?;
/// assert_eq!((result.examples, record.len(), record.input_shape), (2, 2, [3, 32, 32]));
/// assert_eq!((record.inputs.len(), record.logits.len()), (2 * 3 * 32 * 32, 2 * 3));
/// # Ok::<(), bit_infer::InferError>(())
/// ```
pub fn evaluate_dataset_recorded(
    model: &ResNetV2,
    dataset: Arc<dyn ImageDataset>,
    feed: &Feed,
    device: &Device,
) -> Result<(EvalResult, EvalRecord)> {
    let (batches, bar) = feed.batches(dataset, "eval")?;
    let mut record = EvalRecord::default();
    let result = evaluate_recording(model, batches, device, Some(&mut record))?;
    bar.finish_and_clear();
    Ok((result, record))
}

#[cfg(test)]
mod tests {
    use super::rank;

    #[test]
    fn ties_and_nan_never_make_a_label_correct() {
        assert_eq!(rank(&[0.1, 0.9, 0.3], 1), 0);
        assert_eq!(rank(&[0.1, 0.9, 0.3], 2), 1);
        // A constant row (a zero head): every other class ties, and ties count against.
        assert_eq!(rank(&[0.0; 10], 4), 9);
        // NaN for the label ranks last; NaN elsewhere counts as higher.
        assert_eq!(rank(&[f32::NAN, 0.0, 1.0], 0), usize::MAX);
        assert_eq!(rank(&[0.5, f32::NAN, 0.1], 0), 1);
        assert_eq!(rank(&[f32::NAN; 3], 1), usize::MAX);
    }
}
