//! # bit-hub
//!
//! Getting BiT's published files (checkpoints, label lists, datasets) onto the machine once and
//! intact: a [`RemoteFile`] downloads with a progress bar into `<file>.part`, resumes an
//! interrupted transfer with an HTTP range request, checks the server's length, the published
//! size and MD5 and a format check (a full CRC read of an `.npz`: [`verify_npz`]), and only
//! then renames the file into place. A transfer that stalls fails after an idle timeout
//! ([`IDLE_TIMEOUT_ENV`], 60 s by default) and is resumed by the next attempt. A [`Cache`]
//! (`$BIT_HOME`) keeps verified files and fetches a damaged one again; an [`HfHub`] fetches
//! model repositories of the Hugging Face hub into the cache its Python tools share. All of
//! that is the default feature `download`; without it the crate is [`write_atomically`], the SHA-256
//! digests the project's own files carry ([`sha256_file`], [`sha256_hex`]) and
//! [`progress_style`], which every crate of the project uses, and no HTTP client.
//!
//! ```no_run
//! use bit_hub::{Cache, RemoteFile, verify_npz};
//!
//! let cache = Cache::from_env()?;
//! let remote = RemoteFile::new("https://storage.googleapis.com/bit_models/BiT-S-R50x1.npz");
//! let path = cache.fetch(&remote, "models/BiT-S-R50x1.npz", &verify_npz)?;
//! println!("{}", path.display());
//! # Ok::<(), bit_hub::FetchError>(())
//! ```
#![warn(missing_docs)]

mod atomic;
#[cfg(feature = "download")]
mod cache;
#[cfg(feature = "download")]
mod check;
mod digest;
#[cfg(feature = "download")]
mod download;
#[cfg(feature = "download")]
mod error;
#[cfg(feature = "download")]
mod hf;

pub use atomic::write_atomically;
#[cfg(feature = "download")]
pub use cache::{BIT_HOME_ENV, Cache};
#[cfg(feature = "download")]
pub use check::{verify_lines, verify_npz};
pub use digest::{sha256_file, sha256_hex};
#[cfg(feature = "download")]
pub use download::{IDLE_TIMEOUT_ENV, RemoteFile, md5_file};
#[cfg(feature = "download")]
pub use error::{FetchError, Result, TransferError};
#[cfg(feature = "download")]
pub use hf::{HF_ENDPOINT, HfFile, HfHub, HfRepo};

/// The look of every progress bar of the project (downloads, data passes, training steps):
/// `template` in indicatif's syntax, with a `=> ` bar.
///
/// ```
/// let bar = indicatif::ProgressBar::hidden();
/// bar.set_style(bit_hub::progress_style("{msg} [{bar:30}] {pos}/{len}"));
/// ```
pub fn progress_style(template: &'static str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .expect("a valid indicatif template")
        .progress_chars("=> ")
}
