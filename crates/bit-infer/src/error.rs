//! The one error type of `bit-infer`.

use std::path::PathBuf;

/// Why a model could not be run over the data. Every variant names the file or class
/// involved.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The model could not be found, fetched or loaded.
    #[error(transparent)]
    Model(#[from] bit_model::Error),

    /// A released model could not be found or fetched.
    #[error(transparent)]
    Zoo(#[from] bit_zoo::Error),

    /// The images or the dataset could not be read.
    #[error(transparent)]
    Data(#[from] bit_data::DataError),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A label file, class map or model metadata does not fit the model.
    #[error("{path}: {reason}")]
    Labels {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The dataset's classes cannot be matched to the model's head.
    #[error("cannot match the dataset's classes to the model's head: {0}")]
    ClassMapping(String),

    /// A setting that cannot work (`top_k` of 0, a resolution of 0, ...).
    #[error("{0}")]
    InvalidArgument(String),
}

impl InferError {
    /// A closure turning an I/O error on `path` into [`InferError::Io`].
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// `Result` with this crate's [`InferError`].
pub type Result<T> = std::result::Result<T, InferError>;
