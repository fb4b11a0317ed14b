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
        "download of {url} failed: {source}. Without network access, fetch it on another machine \
         and place it at {dest}"
    )]
    Download {
        /// What was fetched.
        url: String,
        /// Where it was going.
        dest: PathBuf,
        /// Why it failed (boxed: an HTTP error is large, and every `Result` would carry it).
        #[source]
        source: Box<TransferError>,
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

    /// Neither `$BIT_HOME` (`$HF_HOME` for the Hugging Face hub) nor a user cache directory
    /// is known.
    #[error("no cache directory: set BIT_HOME (HF_HOME for hf: models) to a writable directory")]
    NoCacheDir,

    /// A Hugging Face repository name that is not `ORG/NAME[@REVISION]`.
    #[error("`{0}` is not a Hugging Face model name: expected ORG/NAME or ORG/NAME@REVISION")]
    BadRepo(String),

    /// The Hugging Face hub did not list a repository's revision.
    #[error(
        "the Hugging Face hub could not list {repo}{}: {reason}",
        status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
    )]
    Hub {
        /// `ORG/NAME@REVISION`.
        repo: String,
        /// The HTTP status, if the hub answered.
        status: Option<u16>,
        /// What went wrong.
        reason: String,
    },

    /// A file a model needs is not in its repository.
    #[error("{repo} has no file `{file}`")]
    NotInRepo {
        /// `ORG/NAME`.
        repo: String,
        /// The file.
        file: String,
    },

    /// `HF_HUB_OFFLINE` is set and the revision was never downloaded.
    #[error("HF_HUB_OFFLINE is set and {0} is not in the cache")]
    Offline(String),
}

impl FetchError {
    /// A closure turning an I/O error on `path` into [`FetchError::Io`].
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Why a transfer stopped. What was received is kept in the `.part` file unless the message
/// says the next attempt restarts.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// No connection, TLS or protocol failure, or no response in time.
    #[error(transparent)]
    Http(#[from] ureq::Error),
    /// The server answered with an error status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The partial file is not a prefix of what the server has now (416); it was removed.
    #[error("the server refused to resume the partial file; run again to restart")]
    ResumeRefused,
    /// The server resumed somewhere else than the end of the partial file; it was removed.
    #[error("the server resumed at `{range}` instead of byte {have}; run again to restart")]
    ResumedElsewhere {
        /// Its `Content-Range`.
        range: String,
        /// The partial file's length.
        have: u64,
    },
    /// The body stopped coming for the idle timeout.
    #[error(
        "interrupted after {at} bytes (no data for {seconds} s; ${env} sets the limit); run \
         again to resume",
        env = crate::IDLE_TIMEOUT_ENV
    )]
    Stalled {
        /// Bytes of the file received in all.
        at: u64,
        /// The idle timeout.
        seconds: u64,
    },
    /// The connection failed mid-body.
    #[error("interrupted after {at} bytes ({source}); run again to resume")]
    Interrupted {
        /// Bytes of the file received in all.
        at: u64,
        /// What the connection said.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection before the announced length.
    #[error("connection closed after {received} of {expected} bytes; run again to resume")]
    Short {
        /// Bytes of the file received in all.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The partial file could not be written.
    #[error("{path}: {source}")]
    Part {
        /// The `.part` file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`FetchError`].
pub type Result<T> = std::result::Result<T, FetchError>;
