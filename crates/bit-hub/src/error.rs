//! The one error type of `bit-hub`.

use std::path::PathBuf;

/// Why a file could not be fetched or is not what was published. Every variant names the file
/// or URL involved.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A download failed (offline, HTTP error, interrupted transfer).
    #[error(
        "download of {url} failed: {reason}. Without network access, fetch it on another machine \
         and place it at {dest}"
    )]
    Download {
        /// What was fetched.
        url: String,
        /// Where it was going.
        dest: PathBuf,
        /// Why it failed.
        reason: String,
    },

    /// A file's size, checksum or content is not the published one.
    #[error(
        "{path} is damaged: {what} is {found}, expected {expected}; delete it to fetch it again"
    )]
    Integrity {
        /// The file.
        path: PathBuf,
        /// What was checked: `size`, `MD5`, `zip`, `lines`, ...
        what: &'static str,
        /// The published or required value.
        expected: String,
        /// The value of the file.
        found: String,
    },

    /// Neither `$BIT_HOME` nor a user cache directory is known.
    #[error("no cache directory: set BIT_HOME to a writable directory")]
    NoCacheDir,
}

impl FetchError {
    /// A closure turning an I/O error on `path` into [`FetchError::Io`].
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// `Result` with this crate's [`FetchError`].
pub type Result<T> = std::result::Result<T, FetchError>;
