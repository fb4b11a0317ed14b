//! Every format a BiT model is read from, told apart in one place: the release's `.npz`, this
//! crate's safetensors (architecture in its metadata), and the hub layouts of timm and
//! transformers (a directory, `model.safetensors`, `pytorch_model.bin`, `.pth`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use burn::tensor::Device;

use crate::error::{Error, Result};
use crate::hub_layout::{HubCheckpoint, HubInfo};
use crate::native::{CLASSES_METADATA_KEY, CONFIG_METADATA_KEY, RESOLUTION_METADATA_KEY};
use crate::npz::NpzCheckpoint;
use crate::resnet::ResNetV2;

/// Metadata key holding the per-channel mean and standard deviation (JSON
/// `{"mean": [..3], "std": [..3]}`, on the `[0, 1]` scale) a hub checkpoint asks images to be
/// normalized with, present only when they are not BiT's 0.5 and 0.5 (inputs in `[-1, 1]`).
pub const NORMALIZATION_METADATA_KEY: &str = "bit.normalization";

/// The format of a model file.
///
/// ```
/// use bit_model::{CheckpointFormat, HubInfo, HubLayout, ResNetV2Config, WeightDType};
/// use burn::tensor::Device;
///
/// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 2).init(&Device::flex());
/// let dir = std::env::temp_dir().join("bit_model_doc_format");
/// model.save_hub(&dir, HubLayout::Timm, &HubInfo::default(), WeightDType::F32)?;
/// assert_eq!(CheckpointFormat::of(&dir)?, CheckpointFormat::Hub);
/// model.save_safetensors(dir.join("native.safetensors"))?;
/// assert_eq!(CheckpointFormat::of(dir.join("native.safetensors"))?, CheckpointFormat::Native);
/// assert_eq!(CheckpointFormat::of("BiT-M-R50x1.npz")?, CheckpointFormat::Npz);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), bit_model::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// The official release layout ([`NpzCheckpoint`]); also any file the others are not.
    Npz,
    /// Safetensors written by this crate ([`ResNetV2::save_safetensors`]).
    Native,
    /// timm's or transformers' layout ([`HubCheckpoint`]): a directory, a safetensors file
    /// without this crate's configuration, or a PyTorch `.bin`/`.pth`/`.pt`.
    Hub,
}

impl CheckpointFormat {
    /// The format of `path`, from what it is (a directory), its extension, and for a
    /// `.safetensors`, its header's metadata (only the header is read).
    pub fn of(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Ok(Self::Hub);
        }
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        Ok(match extension.as_deref() {
            Some("safetensors")
                if safetensors_metadata(path)?.contains_key(CONFIG_METADATA_KEY) =>
            {
                Self::Native
            }
            Some("safetensors" | "bin" | "pth" | "pt") => Self::Hub,
            _ => Self::Npz,
        })
    }
}

/// The `__metadata__` of a safetensors file, reading only its header.
fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    // The format caps its header at 100 MB.
    if len > 100_000_000 {
        return Err(corrupt(format!(
            "not a safetensors file: a {len}-byte header"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
    Ok(header["__metadata__"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

impl HubInfo {
    /// The same facts as this crate's metadata entries ([`RESOLUTION_METADATA_KEY`],
    /// [`CLASSES_METADATA_KEY`], [`NORMALIZATION_METADATA_KEY`]), so that a hub checkpoint
    /// serves `bit predict` as a fine-tuned `.safetensors` does.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut meta = HashMap::new();
        if let Some(side) = self.resolution {
            meta.insert(RESOLUTION_METADATA_KEY.to_string(), side.to_string());
        }
        if let Some(names) = &self.class_names {
            let json = serde_json::to_string(names).expect("strings serialise");
            meta.insert(CLASSES_METADATA_KEY.to_string(), json);
        }
        if let Some((mean, std)) = self.mean_std
            && (mean != [0.5; 3] || std != [0.5; 3])
        {
            let json = serde_json::json!({"mean": mean, "std": std}).to_string();
            meta.insert(NORMALIZATION_METADATA_KEY.to_string(), json);
        }
        meta
    }
}

impl ResNetV2 {
    /// Loads a model file of any [`CheckpointFormat`] with its own head, and what the file
    /// says of itself as metadata (empty for an `.npz`; see [`HubInfo::metadata`] for the hub
    /// layouts).
    ///
    /// ```no_run
    /// use bit_model::ResNetV2;
    /// use burn::tensor::Device;
    ///
    /// // A timm directory from the hub, a fine-tune's .safetensors, a release .npz: the same call.
    /// let (model, metadata) = ResNetV2::open_any("resnetv2_50x1_bit.goog_in21k", &Device::flex())?;
    /// # Ok::<(), bit_model::Error>(())
    /// ```
    pub fn open_any(
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<(Self, HashMap<String, String>)> {
        let path = path.as_ref();
        match CheckpointFormat::of(path)? {
            CheckpointFormat::Npz => Ok((Self::from_npz(path, device)?, HashMap::new())),
            CheckpointFormat::Native => Self::from_safetensors_with_metadata(path, device),
            CheckpointFormat::Hub => {
                let ckpt = HubCheckpoint::open(path)?;
                let metadata = ckpt.info().metadata();
                Ok((ckpt.load(device)?, metadata))
            }
        }
    }

    /// A model file of any [`CheckpointFormat`], its body under a new zero head of
    /// `head_size` classes: where fine-tuning starts (the stored head is not needed).
    pub fn open_any_with_zero_head(
        path: impl AsRef<Path>,
        head_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        match CheckpointFormat::of(path)? {
            CheckpointFormat::Npz => {
                NpzCheckpoint::open(path)?.load_with_zero_head(head_size, device)
            }
            CheckpointFormat::Native => {
                Ok(Self::from_safetensors(path, device)?.with_zero_head(head_size))
            }
            CheckpointFormat::Hub => {
                HubCheckpoint::open(path)?.load_with_zero_head(head_size, device)
            }
        }
    }
}
