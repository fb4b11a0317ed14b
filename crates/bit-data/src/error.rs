//! The one error type of `bit-data`.

use std::path::PathBuf;

/// Everything that can go wrong while fetching, reading or sampling a dataset. Every variant
/// names the file, URL or class involved.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A download failed or a downloaded file is damaged.
    #[error(transparent)]
    Fetch(#[from] bit_hub::FetchError),

    /// An archive could not be unpacked.
    #[error("{path} is not a valid archive: {reason}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// An archive member would be written outside the extraction directory (or is a link).
    #[error("{path} contains an unsafe entry `{entry}`; refusing to extract it")]
    UnsafeArchiveEntry {
        /// The archive.
        path: PathBuf,
        /// The offending member.
        entry: String,
    },

    /// A data file's content does not follow its format (CIFAR records, IDX headers, ...).
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// An image file could not be decoded.
    #[error("cannot decode image {path}: {source}")]
    Decode {
        /// The image.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },

    /// A file in a class folder is not an image this crate reads.
    #[error(
        "{path} is not an image (readable: {extensions}); remove it from the class folder, or skip \
         such files explicitly (`--skip_non_images`)",
        extensions = crate::folder::IMAGE_EXTENSIONS.join(", ")
    )]
    NotAnImage {
        /// The file.
        path: PathBuf,
    },

    /// A dataset directory without class sub-directories.
    #[error("{path} has no class sub-directories; expected {path}/<class>/<image>")]
    NoClasses {
        /// The directory.
        path: PathBuf,
    },

    /// A directory of unlabelled images without any.
    #[error("{path} holds no images (at any depth)")]
    NoImages {
        /// The directory.
        path: PathBuf,
    },

    /// A class directory without images.
    #[error("class `{class}` ({path}) has no images")]
    EmptyClass {
        /// The class directory.
        path: PathBuf,
        /// Its name.
        class: String,
    },

    /// Training and validation splits with different classes.
    #[error("the validation classes of {path} differ from the training classes: {detail}")]
    ClassMismatch {
        /// The validation directory.
        path: PathBuf,
        /// The first difference.
        detail: String,
    },

    /// Few-shot sampling asked for more examples than a class has.
    #[error(
        "class `{class}` has only {available} examples, but {requested} per class were requested"
    )]
    NotEnoughExamples {
        /// The class.
        class: String,
        /// Its examples.
        available: usize,
        /// K.
        requested: usize,
    },

    /// A dataset name this crate does not know.
    #[error(
        "unknown dataset `{0}`; expected one of cifar10, cifar100, imagenet2012, folder, fashion_mnist, mnist, images, vtab/<task>"
    )]
    UnknownDataset(String),

    /// The background loader failed (a panic in a worker is reported here, not swallowed).
    #[error("the data loader failed: {0}")]
    Loader(String),

    /// A parameter out of range (batch size 0, crop larger than the resize, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// `Result` with [`DataError`].
pub type Result<T> = std::result::Result<T, DataError>;
