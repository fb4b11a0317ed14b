//! The native checkpoint format: safetensors with the architecture in its metadata, so a
//! fine-tuned model reloads without the `.npz` it came from.

use std::collections::HashMap;
use std::path::Path;

use burn::config::Config;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::resnet::{ResNetV2, ResNetV2Config};
use crate::storage::WeightDType;

/// Metadata key under which the [`ResNetV2Config`] (JSON) is stored.
pub const CONFIG_METADATA_KEY: &str = "bit_model.config";
/// Metadata key holding the input resolution a model was trained at.
pub const RESOLUTION_METADATA_KEY: &str = "bit.resolution";
/// Metadata key holding the class names (a JSON array, in head order).
pub const CLASSES_METADATA_KEY: &str = "bit.classes";
/// Metadata key holding the SHA-256 (hex) of the file's tensor data, everything after the
/// header: written with every file and checked on load, so that a bit flipped on disk is an
/// error naming the file, not predictions that shift silently. Files of other tools (or of
/// earlier versions) carry none and load unchecked.
pub const SHA256_METADATA_KEY: &str = "bit_model.data_sha256";

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
        self.save_safetensors_as(path, metadata, WeightDType::F32)
    }

    /// [`save_safetensors_with_metadata`](Self::save_safetensors_with_metadata) with the
    /// weights stored as `dtype` (half precision: half the size; int8: a quarter; every loader
    /// widens them back to f32).
    ///
    /// ```
    /// use bit_model::{ResNetV2, ResNetV2Config, WeightDType};
    /// use burn::tensor::Device;
    ///
    /// let device = Device::flex();
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 2).init(&device);
    /// let path = std::env::temp_dir().join("bit_model_doc_f16.safetensors");
    /// model.save_safetensors_as(&path, &[], WeightDType::F16)?;
    /// assert!(std::fs::metadata(&path)?.len() < 4 * 8_028_746 / 2 + 100_000);
    /// assert_eq!(ResNetV2::from_safetensors(&path, &device)?.config(), model.config());
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save_safetensors_as(
        &self,
        path: impl AsRef<Path>,
        metadata: &[(&str, String)],
        dtype: WeightDType,
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
        // int8 quantizes kernels standardized (see `WeightDType::Int8`).
        let model = match dtype {
            WeightDType::Int8 => self.with_standardized_kernels(),
            _ => self.clone(),
        };
        model.save_into(&mut store).map_err(|e| failed(e.into()))?;
        let bytes = store.get_bytes().map_err(|e| failed(e.into()))?;
        let bytes = crate::storage::narrow(&bytes, dtype).map_err(|e| failed(e.into()))?;
        let bytes = with_data_digest(bytes).map_err(|e| failed(e.into()))?;
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
        if let Some(recorded) = metadata.get(SHA256_METADATA_KEY) {
            let found = bit_hub::sha256_hex(&bytes[data_start(&bytes)..]);
            if found != *recorded {
                return Err(corrupt(format!(
                    "its tensor data was damaged after it was written (SHA-256 {found}, the \
                     file records {recorded}); restore it from a copy or export it again"
                )));
            }
        }
        let config = metadata.get(CONFIG_METADATA_KEY).ok_or_else(|| {
            corrupt(format!(
                "no `{CONFIG_METADATA_KEY}` metadata; not saved by bit-model"
            ))
        })?;
        let config = ResNetV2Config::load_binary(config.as_bytes())
            .map_err(|e| corrupt(format!("bad `{CONFIG_METADATA_KEY}` metadata: {e}")))?;
        let mut model = config.try_init(device)?;
        // Half-precision files (`save_safetensors_as`) load as the f32 model they came from.
        let bytes = match crate::storage::widen(&bytes).map_err(corrupt)? {
            Some(widened) => widened,
            None => bytes,
        };
        let mut store = SafetensorsStore::from_bytes(Some(bytes));
        model
            .load_from(&mut store)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok((refuse_non_finite(path, model)?, metadata))
    }
}

/// Where a safetensors file's tensor data starts: after the 8-byte header length and the
/// header (only called on bytes `read_metadata` accepted).
fn data_start(bytes: &[u8]) -> usize {
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[..8]);
    8 + u64::from_le_bytes(len) as usize
}

/// `bytes` (a safetensors file) with the SHA-256 of its tensor data added to the header's
/// metadata. The data's offsets are relative to its own start, so only the header changes; it
/// stays padded to 8 bytes with spaces, as the format recommends.
fn with_data_digest(bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    let start = data_start(&bytes);
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..start]).map_err(|e| e.to_string())?;
    let digest = bit_hub::sha256_hex(&bytes[start..]);
    header
        .entry("__metadata__")
        .or_insert_with(|| serde_json::Value::Object(Default::default()))
        .as_object_mut()
        .ok_or("the header's __metadata__ is not an object")?
        .insert(SHA256_METADATA_KEY.into(), digest.into());
    let mut header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - start);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[start..]);
    Ok(out)
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
