//! The one error type of `bit-model`.

use std::path::PathBuf;

/// Everything that can go wrong while building, loading or saving a BiT model.
///
/// Every variant names the file (and the array, where there is one) so that a user with a
/// damaged or foreign checkpoint knows exactly what to fix. Nothing in this crate panics on bad
/// input.
///
/// ```
/// use bit_model::{Error, ResNetV2};
/// use burn::tensor::Device;
///
/// let err = ResNetV2::from_npz("no/such/BiT-M-R50x1.npz", &Device::flex()).unwrap_err();
/// assert!(matches!(err, Error::Io { .. }));
/// assert!(err.to_string().contains("no/such/BiT-M-R50x1.npz"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The file is not a readable archive (truncated download, wrong format, bad CRC).
    #[error("{path} is not a valid checkpoint: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// An array that the architecture needs is absent.
    #[error("{path} has no array `{key}`; is it a BiT ResNetV2 checkpoint?")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The missing key, in BiT's naming (`resnet/block1/unit01/a/...`).
        key: String,
    },

    /// An array has the wrong shape for the architecture inferred from the file.
    #[error("array `{key}` in {path} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The array.
        key: String,
        /// The shape the architecture needs, in the file's own layout (HWIO for kernels).
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },

    /// An array is not stored as 32-bit floats.
    #[error("array `{key}` in {path} has dtype `{found}`, expected float32 (`<f4`)")]
    DType {
        /// The file.
        path: PathBuf,
        /// The array.
        key: String,
        /// The numpy type string found (`<f8`, `<f2`, ...).
        found: String,
    },

    /// Two arrays map onto the same parameter (e.g. `standardized_conv2d` and
    /// `standardized_conv2d_1` in one unit).
    #[error("{path} has two arrays for `{key}`: `{first}` and `{second}`")]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The normalised key both map to.
        key: String,
        /// The first array name.
        first: String,
        /// The second array name.
        second: String,
    },

    /// The arrays present do not describe a BiT ResNetV2 (no root conv, a gap in the unit
    /// numbering, a width that is not a multiple of 64, ...).
    #[error("{path} does not describe a BiT ResNetV2: {reason}")]
    Architecture {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },

    /// A checkpoint whose weights contain NaN or infinite values.
    #[error(
        "{path} holds NaN or infinite values in {} ({}): refusing a broken checkpoint",
        if parameters.len() == 1 { "one parameter".to_string() } else { format!("{} parameters", parameters.len()) },
        parameters.join(", ")
    )]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The parameters with non-finite values.
        parameters: Vec<String>,
    },

    /// A weights file in none of the layouts this crate reads (the release's `.npz`, this
    /// crate's safetensors, timm's or transformers' state dicts).
    #[error(
        "{path} is in no BiT checkpoint layout this crate knows: its first tensor `{key}` is \
         none of timm's (`stem.conv.weight`, `stages.N.blocks.N.*`, `head.fc.*`) or \
         transformers' (`bit.embedder.convolution.weight`, `bit.encoder.stages.N.layers.N.*`, \
         `classifier.1.*`)"
    )]
    UnknownLayout {
        /// The file.
        path: PathBuf,
        /// Its first tensor name.
        key: String,
    },

    /// A tensor of a hub-layout checkpoint that BiT's ResNetV2 has no place for (BatchNorm
    /// statistics of a non-BiT ResNetV2, another stem, ...): loading the rest would compute a
    /// different network.
    #[error(
        "{path}: tensor `{key}` has no place in BiT's ResNetV2 ({layout} layout); is it another \
         ResNetV2 variant (BatchNorm, a deep stem)?"
    )]
    UnexpectedKey {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// The layout the file was read in.
        layout: String,
    },

    /// A weight stored in a type that is not floating point.
    #[error(
        "tensor `{key}` in {path} has element type {found}, expected a float type (f32, f16, \
         bf16 or f64)"
    )]
    NotFloat {
        /// The file.
        path: PathBuf,
        /// The tensor.
        key: String,
        /// The type found.
        found: String,
    },

    /// A model whose input is not an RGB image.
    #[error(
        "{path}: the model's root convolution takes {channels} input channels, but images have 3 \
         (RGB)"
    )]
    NotRgb {
        /// The checkpoint.
        path: PathBuf,
        /// Its input channels.
        channels: usize,
    },

    /// A model configuration that cannot be built.
    #[error("invalid ResNetV2 configuration: {0}")]
    InvalidConfig(String),

    /// A stage name that is none of [`Stage`](crate::Stage)'s.
    #[error("unknown stage `{0}`: expected stem, stage1, stage2, stage3, stage4 or final")]
    UnknownStage(String),

    /// An architecture name that is neither `tiny` nor a BiT one.
    #[error("unknown architecture {0}")]
    UnknownArchitecture(String),

    /// A device cannot compute in the precision asked for.
    #[error("cannot compute in {precision} on {device}: {reason}")]
    UnsupportedPrecision {
        /// `bf16` or `f16`.
        precision: String,
        /// The device, as Burn names it.
        device: String,
        /// Why not.
        reason: String,
    },

    /// Writing a native checkpoint failed (disk full, permissions, ...); the previous file, if
    /// any, is left untouched.
    #[error("cannot save model to {path}: {source}")]
    Save {
        /// The destination.
        path: PathBuf,
        /// What failed: the file system, or the serializer.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
