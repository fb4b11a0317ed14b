//! A model ready for inference: weights, the resolution it expects and its class names, from
//! a released name, an `.npz` or a fine-tuned `.safetensors`.

use std::path::{Path, PathBuf};

use bit_model::{
    CLASSES_METADATA_KEY, HubInfo, HubLayout, NORMALIZATION_METADATA_KEY, Precision,
    RESOLUTION_METADATA_KEY, ResNetV2, WEIGHT_DTYPE_METADATA_KEY, WeightDType, run_metadata,
};
use bit_zoo::{LabelSet, LoadedModel, ModelHub, PretrainedModel};
use burn::tensor::Device;

use crate::error::{InferError, Result};
use crate::feed::Feed;
use crate::labels::read_label_file;

/// The resolution used when neither the caller, the file nor the catalog gives one (the
/// upstream BiT pre-training resolution).
pub const DEFAULT_RESOLUTION: usize = 224;

/// Overrides for [`InferenceModel::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Input resolution, instead of the file's or the catalog's.
    pub resolution: Option<usize>,
    /// A label file (one class name per line), instead of the file's or the release's names.
    pub labels: Option<PathBuf>,
    /// What the network computes in (half precision needs a GPU device, int8 the CPU).
    /// `None`: the file's own, [`Precision::Int8`] for weights exported in int8 (when this CPU
    /// has int8 kernels, and on the CPU device), f32 otherwise.
    pub precision: Option<Precision>,
}

/// A model with what inference needs to know about it.
#[derive(Debug)]
pub struct InferenceModel {
    /// The network.
    pub model: ResNetV2,
    /// Side of the square input.
    pub resolution: usize,
    /// One name per head output, when known.
    pub class_names: Option<Vec<String>>,
    /// The file the weights came from.
    pub path: PathBuf,
    /// The release's catalog entry, for a released model.
    pub entry: Option<PretrainedModel>,
}

impl InferenceModel {
    /// Loads `model`: a path to an `.npz` or `.safetensors`, or a released name (fetched into
    /// `hub`'s cache if needed).
    ///
    /// The resolution is, in order: `options`, the file's metadata (fine-tuned models saved by
    /// `bit train`), the catalog, [`DEFAULT_RESOLUTION`]. Class names: `options.labels`, the
    /// file's metadata, the release's ImageNet label files for ImageNet heads (a 1000- or
    /// 21843-way head of a file that is not in the catalog counts as one); without them,
    /// classes are numbers. Label files that cannot be fetched only cost the names (with a
    /// warning), never the prediction.
    ///
    /// ```no_run
    /// use bit_infer::{InferenceModel, LoadOptions};
    /// use bit_zoo::ModelHub;
    /// use burn::tensor::Device;
    ///
    /// let hub = ModelHub::from_env()?;
    /// let m = InferenceModel::load(&hub, "distill/R50x1_224", &LoadOptions::default(), &Device::flex())?;
    /// assert_eq!((m.resolution, m.model.config().head_size), (224, 1000));
    /// println!("class 281 is {}", m.class_name(281));
    /// # Ok::<(), bit_infer::InferError>(())
    /// ```
    pub fn load(
        hub: &ModelHub,
        model: &str,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        if let Some(precision) = options.precision {
            precision.check(device)?;
        }
        let LoadedModel {
            model: net,
            metadata,
            path,
            entry,
        } = hub.load_with_metadata(model, device)?;
        let head_size = net.config().head_size;
        let bad_metadata = |reason: String| InferError::Labels {
            path: path.clone(),
            reason,
        };
        let resolution = match (options.resolution, metadata.get(RESOLUTION_METADATA_KEY)) {
            (Some(r), _) => r,
            (None, Some(r)) => r.parse().map_err(|e| {
                bad_metadata(format!(
                    "bad `{RESOLUTION_METADATA_KEY}` metadata `{r}`: {e}"
                ))
            })?,
            (None, None) => entry.as_ref().map_or_else(
                || {
                    tracing::info!(
                        "{}: no resolution known, using {DEFAULT_RESOLUTION}",
                        path.display()
                    );
                    DEFAULT_RESOLUTION
                },
                |e| e.resolution,
            ),
        };
        // Images are fed in BiT's [-1, 1]; a model that asks for another normalization
        // (a hub checkpoint's config) would see inputs it was not trained on.
        if let Some(normalization) = metadata.get(NORMALIZATION_METADATA_KEY) {
            return Err(InferError::InvalidArgument(format!(
                "{}: its configuration normalizes images with {normalization} (on the [0, 1] \
                 scale), but bit feeds BiT's [-1, 1] (mean = std = 0.5)",
                path.display()
            )));
        }
        bit_data::Preprocess::Eval { crop: resolution }
            .validate()
            .map_err(|e| InferError::InvalidArgument(format!("{}: {e}", path.display())))?;
        net.check_rgb(&path)?;
        let class_names = if let Some(file) = &options.labels {
            Some(read_label_file(file, head_size)?)
        } else if let Some(json) = metadata.get(CLASSES_METADATA_KEY) {
            let names: Vec<String> = serde_json::from_str(json)
                .map_err(|e| bad_metadata(format!("bad `{CLASSES_METADATA_KEY}` metadata: {e}")))?;
            if names.len() != head_size {
                return Err(bad_metadata(format!(
                    "{} class names in its metadata for a {head_size}-way head",
                    names.len()
                )));
            }
            Some(names)
        } else {
            let labels = match &entry {
                Some(e) => e.labels.filter(|l| l.len() == head_size),
                None => LabelSet::for_head_size(head_size),
            };
            labels.and_then(|l| match hub.class_names(l) {
                Ok(names) => Some(names),
                Err(e) => {
                    tracing::warn!("{e}; classes are shown as numbers");
                    None
                }
            })
        };
        let precision = options.precision.unwrap_or_else(|| {
            let int8_weights =
                metadata.get(WEIGHT_DTYPE_METADATA_KEY).map(String::as_str) == Some("int8");
            if !int8_weights {
                Precision::F32
            } else if Precision::Int8.check(device).is_ok() && Precision::has_int8_kernels() {
                tracing::info!("{}: int8 weights, computing in int8", path.display());
                Precision::Int8
            } else {
                tracing::info!(
                    "{}: int8 weights, computing in f32 (int8 needs the CPU device and a CPU \
                     with AVX-512 VNNI)",
                    path.display()
                );
                Precision::F32
            }
        });
        Ok(Self {
            model: net.with_precision(precision),
            resolution,
            class_names,
            path,
            entry,
        })
    }

    /// How to feed this model: its resolution, the default loader, no progress bar.
    pub fn feed(&self) -> Feed {
        Feed::new(self.resolution)
    }

    /// The name of head output `class`: its class name, or the number.
    pub fn class_name(&self, class: usize) -> String {
        self.class_names
            .as_ref()
            .and_then(|n| n.get(class).cloned())
            .unwrap_or_else(|| class.to_string())
    }

    /// Metadata to store beside the weights so that the model reloads with its resolution and
    /// class names: pass it to
    /// [`ResNetV2::save_safetensors_with_metadata`].
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        metadata(self.resolution, self.class_names.as_deref())
    }

    /// Writes the model to `out` in `format`, or (`None`) as `out`'s extension says: `.npz`
    /// in the official layout (weights only), `.onnx` as an ONNX model with the resolution and
    /// class names in its metadata, anything else as safetensors with
    /// [`metadata`](Self::metadata). The hub layouts write a directory `out` that timm or
    /// transformers load as it is, with the resolution and class names in its configuration
    /// ([`ResNetV2::save_hub`]).
    ///
    /// `dtype` stores the weights in half precision (`F16`/`Bf16`: half the size, read back
    /// as f32 by every loader); the release's `.npz` layout is float32 only.
    pub fn export(
        &self,
        out: &Path,
        format: Option<ExportFormat>,
        dtype: WeightDType,
    ) -> Result<()> {
        let format = format.unwrap_or_else(|| {
            let extension = out.extension().map(|e| e.to_ascii_lowercase());
            match extension.as_ref().and_then(|e| e.to_str()) {
                Some("npz") => ExportFormat::Npz,
                Some("onnx") => ExportFormat::Onnx,
                _ => ExportFormat::Safetensors,
            }
        });
        match format {
            ExportFormat::Npz if dtype != WeightDType::F32 => {
                return Err(InferError::InvalidArgument(format!(
                    "the release's .npz layout stores float32 weights only, not {dtype}: write \
                     .safetensors or a hub layout (--format timm|hf)"
                )));
            }
            ExportFormat::Npz => self.model.save_npz(out)?,
            ExportFormat::Safetensors => {
                self.model
                    .save_safetensors_as(out, &self.metadata(), dtype)?
            }
            ExportFormat::Onnx if dtype != WeightDType::F32 => {
                return Err(InferError::InvalidArgument(format!(
                    "the ONNX export stores float32 weights only, not {dtype}"
                )));
            }
            ExportFormat::Onnx => {
                self.model
                    .save_onnx(out, self.resolution, self.class_names.as_deref())?;
            }
            ExportFormat::Hub(layout) => {
                let info = HubInfo {
                    resolution: Some(self.resolution),
                    class_names: self.class_names.clone(),
                    mean_std: None,
                };
                self.model.save_hub(out, layout, &info, dtype)?;
            }
        }
        Ok(())
    }
}

/// What [`InferenceModel::export`] writes.
///
/// ```
/// use bit_infer::ExportFormat;
/// use bit_model::HubLayout;
///
/// assert_eq!("timm".parse::<ExportFormat>()?, ExportFormat::Hub(HubLayout::Timm));
/// assert_eq!("npz".parse::<ExportFormat>()?, ExportFormat::Npz);
/// assert_eq!("onnx".parse::<ExportFormat>()?, ExportFormat::Onnx);
/// assert!("tflite".parse::<ExportFormat>().is_err());
/// # Ok::<(), bit_infer::InferError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The official release layout.
    Npz,
    /// This crate's safetensors, with resolution and class names.
    Safetensors,
    /// A timm or transformers directory.
    Hub(HubLayout),
    /// An ONNX model ([`ResNetV2::save_onnx`]).
    Onnx,
}

impl std::str::FromStr for ExportFormat {
    type Err = InferError;

    /// `npz`, `safetensors`, `onnx`, `timm`, or `hf` (`transformers`).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "npz" => Ok(Self::Npz),
            "safetensors" => Ok(Self::Safetensors),
            "onnx" => Ok(Self::Onnx),
            other => other.parse().map(Self::Hub).map_err(|_| {
                InferError::InvalidArgument(format!(
                    "unknown export format `{s}`: expected npz, safetensors, onnx, timm or hf"
                ))
            }),
        }
    }
}

/// The metadata entries for a model of `resolution` with `classes` (bit-model owns the format:
/// [`bit_model::run_metadata`]).
///
/// ```
/// let meta = bit_infer::metadata(128, Some(&["cat".to_string(), "dog".into()]));
/// assert_eq!(meta[0], ("bit.resolution", "128".to_string()));
/// ```
pub fn metadata(resolution: usize, classes: Option<&[String]>) -> Vec<(&'static str, String)> {
    run_metadata(resolution, classes)
}
