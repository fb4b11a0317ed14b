//! Running a model over a dataset in batches: class probabilities and pooled features.

use std::path::Path;
use std::sync::Arc;

use bit_data::{Batch, BatchStream, ImageDataset, LoaderConfig};
use bit_model::backend::host_values;
use bit_model::{ResNetV2, Stage};
use burn::tensor::Device;
use indicatif::ProgressBar;
use npyz::WriterBuilder;

use crate::error::{InferError, Result};

/// The logits of one batch, row-major `[batch, classes]`, on the host.
fn logits_of(model: &ResNetV2, batch: &Batch, device: &Device) -> Vec<f32> {
    let (x, _) = batch.to_tensors(device);
    host_values(model.forward(x))
}

/// How images reach the model: the square resolution they are resized to (the reference's
/// evaluation path: bilinear resize, RGB scaled to `[-1, 1]`), the loader's batch size and
/// threads, and whether a progress bar is drawn (on stderr).
///
/// ```
/// let feed = bit_infer::Feed::new(128).with_batch_size(16).with_progress(true);
/// assert_eq!((feed.resolution, feed.loader.batch_size, feed.progress), (128, 16, true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// Side of the square input.
    pub resolution: usize,
    /// Batching and decoding threads.
    pub loader: LoaderConfig,
    /// Draw a progress bar.
    pub progress: bool,
    /// Where [`embed`] takes features: the global average of this stage's activations (the
    /// pooled pre-logits at [`Stage::Final`], the default).
    pub representation: Stage,
}

impl Feed {
    /// `resolution` px, batches of 32 decoded by 4 threads, no progress bar.
    pub fn new(resolution: usize) -> Self {
        Self {
            resolution,
            loader: LoaderConfig::new(32),
            progress: false,
            representation: Stage::Final,
        }
    }

    /// Sets where [`embed`] takes features.
    pub fn with_representation(mut self, representation: Stage) -> Self {
        self.representation = representation;
        self
    }

    /// Sets the loader (batch size, threads).
    pub fn with_loader(mut self, loader: LoaderConfig) -> Self {
        self.loader = loader;
        self
    }

    /// Sets the batch size.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.loader.batch_size = batch_size;
        self
    }

    /// Sets whether a progress bar is drawn.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// The batches of `dataset`, in order, with a progress bar named `what`.
    pub(crate) fn batches(
        &self,
        dataset: Arc<dyn ImageDataset>,
        what: &str,
    ) -> Result<(impl Iterator<Item = bit_data::Result<Batch>>, ProgressBar)> {
        if self.resolution == 0 || self.loader.batch_size == 0 {
            return Err(InferError::InvalidArgument(
                "the resolution and the batch size must be at least 1".into(),
            ));
        }
        let bar = if self.progress {
            let bar = ProgressBar::new(dataset.len() as u64);
            bar.set_style(bit_hub::progress_style(
                "{msg} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}",
            ));
            bar.set_message(what.to_string());
            bar
        } else {
            ProgressBar::hidden()
        };
        let stream = BatchStream::eval(dataset, self.resolution, self.loader)?;
        let counter = bar.clone();
        let batches = stream.inspect(move |b| {
            if let Ok(b) = b {
                counter.inc(b.len() as u64);
            }
        });
        Ok((batches, bar))
    }
}

/// The `k` most probable classes of each image, best first, as `(class, probability)` with the
/// softmax over the whole head.
///
/// ```
/// use std::sync::Arc;
/// use bit_data::InMemoryDataset;
/// use bit_infer::Feed;
/// use bit_model::ResNetV2Config;
/// use burn::tensor::Device;
///
/// let device = Device::flex();
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 4).init(&device);
/// let images = InMemoryDataset::new(vec!["a".into()], [8, 8, 3], vec![128; 2 * 8 * 8 * 3], vec![0, 0])?;
/// let top = bit_infer::predict(&model, Arc::new(images), 3, &Feed::new(32), &device)?;
/// assert_eq!(top.len(), 2);
/// assert_eq!(top[0].len(), 3);
/// assert!(top[0][0].1 >= top[0][1].1);
/// # Ok::<(), bit_infer::InferError>(())
/// ```
pub fn predict(
    model: &ResNetV2,
    images: Arc<dyn ImageDataset>,
    top_k: usize,
    feed: &Feed,
    device: &Device,
) -> Result<Vec<Vec<(usize, f32)>>> {
    if top_k == 0 {
        return Err(InferError::InvalidArgument(
            "top-k must be at least 1".into(),
        ));
    }
    let classes = model.config().head_size;
    let mut out = Vec::with_capacity(images.len());
    let (batches, bar) = feed.batches(images, "predict")?;
    for batch in batches {
        let logits = logits_of(model, &batch?, device);
        out.extend(
            logits
                .chunks_exact(classes)
                .map(|row| top_k_softmax(row, top_k)),
        );
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Softmax of `logits` (in f64, stable), then the `k` largest, best first.
fn top_k_softmax(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| (i, (exp[i] / sum) as f32))
        .collect()
}

/// Pooled features of a dataset (the pre-logits, or a stage's: [`Feed::representation`]; the
/// input of linear probes and retrieval), with the dataset's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Row-major `[len, dim]`.
    pub features: Vec<f32>,
    /// Width of a feature vector (`2048 * width_factor` for the pre-logits).
    pub dim: usize,
    /// The label of each row.
    pub labels: Vec<usize>,
}

impl Embeddings {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Writes the features as a float32 `.npy` of shape `[len, dim]` (atomically).
    pub fn save_features(&self, path: &Path) -> Result<()> {
        write_npy(path, &[self.len() as u64, self.dim as u64], &self.features)
    }

    /// Writes the labels as an int64 `.npy` of shape `[len]` (atomically).
    pub fn save_labels(&self, path: &Path) -> Result<()> {
        save_labels(path, &self.labels)
    }
}

/// Writes `labels` as an int64 `.npy` of shape `[len]` (atomically), beside features of
/// [`embed`] or [`embed_stages`].
pub fn save_labels(path: &Path, labels: &[usize]) -> Result<()> {
    let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    write_npy(path, &[labels.len() as u64], &labels)
}

/// The features of every image of `dataset`, in order, at the feed's representation.
///
/// ```
/// use std::sync::Arc;
/// use bit_data::InMemoryDataset;
/// use bit_infer::Feed;
/// use bit_model::ResNetV2Config;
/// use burn::tensor::Device;
///
/// let device = Device::flex();
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 4).init(&device);
/// let data = InMemoryDataset::new(vec!["a".into(), "b".into()], [8, 8, 3], vec![9; 3 * 8 * 8 * 3], vec![0, 1, 1])?;
/// let emb = bit_infer::embed(&model, Arc::new(data.clone()), &Feed::new(32).with_batch_size(2), &device)?;
/// assert_eq!((emb.len(), emb.dim, emb.labels.clone()), (3, 2048, vec![0, 1, 1]));
/// let feed = Feed::new(32).with_representation(bit_model::Stage::Stage2);
/// assert_eq!(bit_infer::embed(&model, Arc::new(data), &feed, &device)?.dim, 512);
/// # Ok::<(), bit_infer::InferError>(())
/// ```
pub fn embed(
    model: &ResNetV2,
    dataset: Arc<dyn ImageDataset>,
    feed: &Feed,
    device: &Device,
) -> Result<Embeddings> {
    let dim = feed.representation.channels(model.config().width_factor);
    let mut features = Vec::with_capacity(dataset.len() * dim);
    let mut labels = Vec::with_capacity(dataset.len());
    let (batches, bar) = feed.batches(dataset, "embed")?;
    for batch in batches {
        let batch = batch?;
        let (x, _) = batch.to_tensors(device);
        features.extend(host_values(model.pooled(x, feed.representation)));
        labels.extend_from_slice(&batch.labels);
    }
    bar.finish_and_clear();
    Ok(Embeddings {
        features,
        dim,
        labels,
    })
}

/// One representation of every image of a dataset, from [`embed_stages`]: the stage's pooled
/// features (rows of `[channels]`), or its whole activation maps (rows of
/// `[channels, height, width]`, NCHW), in dataset order.
#[derive(Debug, Clone, PartialEq)]
pub struct StageFeatures {
    /// Where in the network.
    pub stage: Stage,
    /// The shape of one image's features.
    pub shape: Vec<usize>,
    /// Row-major `[images, shape...]`.
    pub features: Vec<f32>,
}

impl StageFeatures {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.features.len() / self.shape.iter().product::<usize>().max(1)
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.features.is_empty()
    }

    /// Writes the features as a float32 `.npy` of shape `[images, shape...]` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut shape = vec![self.len() as u64];
        shape.extend(self.shape.iter().map(|&d| d as u64));
        write_npy(path, &shape, &self.features)
    }
}

/// The activations of several `stages` for every image of `dataset`, with the dataset's labels:
/// each stage's global average (`maps` false: the inputs of probes and retrieval), or its whole
/// maps (`maps` true: what detection and segmentation heads read, as timm's
/// `forward_intermediates`). One forward pass per batch serves every stage, and runs only as
/// deep as the deepest one asked for.
///
/// ```
/// use std::sync::Arc;
/// use bit_data::InMemoryDataset;
/// use bit_infer::{Feed, embed_stages};
/// use bit_model::{ResNetV2Config, Stage};
/// use burn::tensor::Device;
///
/// let device = Device::flex();
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 4).init(&device);
/// let data = InMemoryDataset::new(vec!["a".into()], [8, 8, 3], vec![9; 2 * 8 * 8 * 3], vec![0, 0])?;
/// let feed = Feed::new(64);
/// let (maps, labels) = embed_stages(&model, Arc::new(data), &[Stage::Stage3, Stage::Stem], true, &feed, &device)?;
/// assert_eq!((maps[0].shape.clone(), maps[0].len()), (vec![1024, 4, 4], 2));
/// assert_eq!(maps[1].shape, [64, 16, 16]);
/// assert_eq!(labels, [0, 0]);
/// # Ok::<(), bit_infer::InferError>(())
/// ```
pub fn embed_stages(
    model: &ResNetV2,
    dataset: Arc<dyn ImageDataset>,
    stages: &[Stage],
    maps: bool,
    feed: &Feed,
    device: &Device,
) -> Result<(Vec<StageFeatures>, Vec<usize>)> {
    if stages.is_empty() {
        return Err(InferError::InvalidArgument(
            "no stage to embed: name at least one".into(),
        ));
    }
    let mut out: Vec<StageFeatures> = stages
        .iter()
        .map(|&stage| StageFeatures {
            stage,
            shape: Vec::new(),
            features: Vec::new(),
        })
        .collect();
    let mut labels = Vec::with_capacity(dataset.len());
    let (batches, bar) = feed.batches(dataset, "embed")?;
    for batch in batches {
        let batch = batch?;
        let (x, _) = batch.to_tensors(device);
        for (stage, map) in out.iter_mut().zip(model.forward_intermediates(x, stages)) {
            let [n, c, h, w] = map.dims();
            let (shape, values) = if maps {
                (vec![c, h, w], map)
            } else {
                let pooled = map.reshape([n, c, h * w]).mean_dim(2).reshape([n, c, 1, 1]);
                (vec![c], pooled)
            };
            stage.shape = shape;
            stage.features.extend(host_values(values));
        }
        labels.extend_from_slice(&batch.labels);
    }
    bar.finish_and_clear();
    Ok((out, labels))
}

/// Writes a C-order `.npy` atomically ([`bit_hub::write_atomically`]).
pub(crate) fn write_npy<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: &[T],
) -> Result<()> {
    bit_hub::write_atomically(path, |file| {
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(file)
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()
    })
    .map_err(InferError::io(path))
}
