//! The one error type of `bit-zoo`.

/// Why a model could not be found, fetched or loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file was found but could not be read as a BiT model.
    #[error(transparent)]
    Model(#[from] bit_model::Error),

    /// A name that is not one of BiT's released models.
    #[error(
        "unknown BiT model `{0}`: not a file and not a released model (`bit models` lists them, \
         e.g. `BiT-M-R50x1`, `BiT-S-R101x3`, `vtab/BiT-M-R50x1-run0-dtd`, `distill/R50x1_224`)"
    )]
    UnknownModel(String),

    /// A released file could not be downloaded or is damaged.
    #[error("cannot get {what}: {source}")]
    Fetch {
        /// The model or file, in words.
        what: String,
        /// What went wrong.
        source: bit_hub::FetchError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
