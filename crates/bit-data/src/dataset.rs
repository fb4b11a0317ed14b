//! The dataset abstraction: labelled RGB images, addressable by index.

use std::sync::Arc;

use image::RgbImage;

use crate::error::{DataError, Result};

/// A labelled image dataset. Labels are cheap (no decoding), images are decoded on demand, so
/// sampling and few-shot selection never touch pixels.
pub trait ImageDataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    /// Whether there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names; label `i` is `classes()[i]`.
    fn classes(&self) -> &[String];

    /// The label of example `index`.
    fn label(&self, index: usize) -> usize;

    /// The image of example `index`, as 8-bit RGB.
    fn image(&self, index: usize) -> Result<RgbImage>;

    /// Typical `(height, width)` of the images, for the BiT-HyperRule resolution.
    fn image_size(&self) -> Option<(usize, usize)>;

    /// Files found but skipped because they are not images (see
    /// [`NonImagePolicy`](crate::NonImagePolicy)), for the run's log.
    fn skipped(&self) -> &[std::path::PathBuf] {
        &[]
    }
}

/// Decodes every image of `dataset` (in parallel) and returns the first failure: run before a
/// long job, so that a broken file costs seconds, not the job.
///
/// ```
/// use bit_data::{InMemoryDataset, check_decodes};
///
/// let data = InMemoryDataset::new(vec!["a".into()], [2, 2, 3], vec![0; 12], vec![0])?;
/// check_decodes(&data)?;
/// # Ok::<(), bit_data::DataError>(())
/// ```
pub fn check_decodes(dataset: &dyn ImageDataset) -> Result<()> {
    use rayon::prelude::*;
    (0..dataset.len())
        .into_par_iter()
        .try_for_each(|i| dataset.image(i).map(drop))
}

/// Images of one size held in memory (CIFAR, MNIST): `pixels` is `len * height * width *
/// channels` bytes, HWC, with 1 (grey, expanded to RGB on access) or 3 channels.
#[derive(Debug, Clone)]
pub struct InMemoryDataset {
    classes: Vec<String>,
    height: usize,
    width: usize,
    channels: usize,
    pixels: Vec<u8>,
    labels: Vec<usize>,
}

impl InMemoryDataset {
    /// Wraps decoded pixels; checks that sizes and labels agree.
    pub fn new(
        classes: Vec<String>,
        [height, width, channels]: [usize; 3],
        pixels: Vec<u8>,
        labels: Vec<usize>,
    ) -> Result<Self> {
        let bad = |m: String| Err(DataError::InvalidArgument(m));
        if channels != 1 && channels != 3 {
            return bad(format!("{channels} channels; expected 1 or 3"));
        }
        if pixels.len() != labels.len() * height * width * channels {
            return bad(format!(
                "{} bytes for {} images of {height}x{width}x{channels}",
                pixels.len(),
                labels.len()
            ));
        }
        if let Some(&l) = labels.iter().find(|&&l| l >= classes.len()) {
            return bad(format!("label {l} but only {} classes", classes.len()));
        }
        Ok(Self {
            classes,
            height,
            width,
            channels,
            pixels,
            labels,
        })
    }
}

impl ImageDataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }

    fn image(&self, index: usize) -> Result<RgbImage> {
        let n = self.height * self.width * self.channels;
        let raw = &self.pixels[index * n..(index + 1) * n];
        let rgb = match self.channels {
            3 => raw.to_vec(),
            _ => raw.iter().flat_map(|&g| [g, g, g]).collect(),
        };
        Ok(
            RgbImage::from_raw(self.width as u32, self.height as u32, rgb)
                .expect("size checked in new"),
        )
    }

    fn image_size(&self) -> Option<(usize, usize)> {
        Some((self.height, self.width))
    }
}

/// A view of some examples of another dataset (few-shot subsets), in the given order.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn ImageDataset>,
    indices: Vec<usize>,
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset")
            .field("len", &self.indices.len())
            .field("of", &self.inner.len())
            .finish()
    }
}

impl Subset {
    /// The examples `indices` of `inner`.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn new(inner: Arc<dyn ImageDataset>, indices: Vec<usize>) -> Self {
        assert!(
            indices.iter().all(|&i| i < inner.len()),
            "subset index out of range"
        );
        Self { inner, indices }
    }

    /// Indices into the parent dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl ImageDataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn classes(&self) -> &[String] {
        self.inner.classes()
    }

    fn label(&self, index: usize) -> usize {
        self.inner.label(self.indices[index])
    }

    fn image(&self, index: usize) -> Result<RgbImage> {
        self.inner.image(self.indices[index])
    }

    fn image_size(&self) -> Option<(usize, usize)> {
        self.inner.image_size()
    }

    fn skipped(&self) -> &[std::path::PathBuf] {
        self.inner.skipped()
    }
}
