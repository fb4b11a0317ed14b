//! The native checkpoint format: safetensors with the architecture in its metadata, so a
//! fine-tuned model reloads without the `.npz` it came from.

use std::collections::HashMap;
use std::path::Path;

use burn::config::Config;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::resnet::{ResNetV2, ResNetV2Config};

/// Metadata key under which the [`ResNetV2Config`] (JSON) is stored.
pub const CONFIG_METADATA_KEY: &str = "bit_model.config";
/// Metadata key holding the input resolution a model was trained at.
pub const RESOLUTION_METADATA_KEY: &str = "bit.resolution";
/// Metadata key holding the class names (a JSON array, in head order).
pub const CLASSES_METADATA_KEY: &str = "bit.classes";

/// The metadata entries for a model of `resolution` with `classes`, to pass to
/// [`ResNetV2::save_safetensors_with_metadata`]: `bit predict` and `bit eval` read them back.
///
/// ```
/// let meta = bit_model::run_metadata(128, Some(&["cat".to_string(), "dog".into()]));
/// assert_eq!(meta[0], ("bit.resolution", "128".to_string()));
/// assert_eq!(meta[1].1, r#"["cat","dog"]"#);
/// ```
pub fn run_metadata(resolution: usize, classes: Option<&[String]>) -> Vec<(&'static str, String)> {
    let mut meta = vec![(RESOLUTION_METADATA_KEY, resolution.to_string())];
    if let Some(classes) = classes {
        let names = serde_json::to_string(classes).expect("strings serialise");
        meta.push((CLASSES_METADATA_KEY, names));
    }
    meta
}

impl ResNetV2 {
    /// Saves every parameter to a safetensors file, with the configuration in its metadata.
    /// The file is written to a temporary sibling and renamed into place, so a crash or a full
    /// disk never leaves a half-written checkpoint behind.
    ///
    /// ```
    /// use bit_model::{ResNetV2, ResNetV2Config};
    /// use burn::tensor::Device;
    ///
    /// let device = Device::flex();
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 5).init(&device);
    /// let path = std::env::temp_dir().join("bit_model_doc_save.safetensors");
    /// model.save_safetensors(&path)?;
    /// let again = ResNetV2::from_safetensors(&path, &device)?;
    /// assert_eq!(again.config(), model.config());
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), bit_model::Error>(())
    /// ```
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_safetensors_with_metadata(path, &[])
    }

    /// [`save_safetensors`](Self::save_safetensors) with extra string metadata (class names,
    /// resolution, provenance), returned again by
    /// [`from_safetensors_with_metadata`](Self::from_safetensors_with_metadata).
    ///
    /// ```
    /// use bit_model::{ResNetV2, ResNetV2Config};
    /// use burn::tensor::Device;
    ///
    /// let device = Device::flex();
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 2).init(&device);
    /// let path = std::env::temp_dir().join("bit_model_doc_meta.safetensors");
    /// model.save_safetensors_with_metadata(&path, &[("my.resolution", "128".into())])?;
    /// let (_, meta) = ResNetV2::from_safetensors_with_metadata(&path, &device)?;
    /// assert_eq!(meta["my.resolution"], "128");
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), bit_model::Error>(())
    /// ```
    pub fn save_safetensors_with_metadata(
        &self,
        path: impl AsRef<Path>,
        metadata: &[(&str, String)],
    ) -> Result<()> {
        let path = path.as_ref();
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| Error::Save {
            path: path.to_path_buf(),
            source,
        };
        // Serialized in memory, then written through our own atomic write: Burn's file store
        // leaves a full-size temporary file behind when killed, created with mode 0600.
        let mut store = SafetensorsStore::from_bytes(None)
            .metadata(CONFIG_METADATA_KEY, self.config().to_string());
        for (key, value) in metadata {
            store = store.metadata(*key, value.clone());
        }
        self.save_into(&mut store).map_err(|e| failed(e.into()))?;
        let bytes = store.get_bytes().map_err(|e| failed(e.into()))?;
        bit_hub::write_atomically(path, |file| std::io::Write::write_all(file, &bytes))
            .map_err(|e| failed(e.into()))
    }

    /// Loads a file written by [`save_safetensors`](Self::save_safetensors).
    pub fn from_safetensors(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_safetensors_with_metadata(path, device).map(|(model, _)| model)
    }

    /// [`from_safetensors`](Self::from_safetensors), also returning the file's metadata.
    pub fn from_safetensors_with_metadata(
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<(Self, HashMap<String, String>)> {
        let path = path.as_ref();
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
        let metadata = metadata.metadata().clone().unwrap_or_default();
        let config = metadata.get(CONFIG_METADATA_KEY).ok_or_else(|| {
            corrupt(format!(
                "no `{CONFIG_METADATA_KEY}` metadata; not saved by bit-model"
            ))
        })?;
        let config = ResNetV2Config::load_binary(config.as_bytes())
            .map_err(|e| corrupt(format!("bad `{CONFIG_METADATA_KEY}` metadata: {e}")))?;
        let mut model = config.try_init(device)?;
        let mut store = SafetensorsStore::from_bytes(Some(bytes));
        model
            .load_from(&mut store)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok((refuse_non_finite(path, model)?, metadata))
    }
}

/// `model`, or [`Error::NonFinite`] naming the parameters of `path` with NaN or infinite values:
/// such a file is the end of a diverged run, and using it only spreads NaN.
pub(crate) fn refuse_non_finite(path: &Path, model: ResNetV2) -> Result<ResNetV2> {
    let parameters = model.non_finite_parameters();
    if parameters.is_empty() {
        Ok(model)
    } else {
        Err(Error::NonFinite {
            path: path.to_path_buf(),
            parameters,
        })
    }
}
