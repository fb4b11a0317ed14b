//! Downloading a file once, with a progress bar, resume of an interrupted transfer, integrity
//! checks and an atomic rename: a file at its final path is always whole.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressBar;
use md5::{Digest, Md5};

use crate::error::{FetchError, Result, TransferError};
use crate::progress_style;

/// Environment variable: seconds a download may go without receiving a byte before it fails
/// (default 60). The partial file stays, and the next attempt resumes it.
pub const IDLE_TIMEOUT_ENV: &str = "BIT_DOWNLOAD_IDLE_TIMEOUT";

/// The idle timeout of downloads: [`IDLE_TIMEOUT_ENV`], else 60 seconds.
pub(crate) fn idle_timeout() -> Duration {
    std::env::var(IDLE_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(Duration::from_secs(60), Duration::from_secs)
}

/// A file published at a URL, with what is known of it.
///
/// ```no_run
/// use bit_hub::RemoteFile;
///
/// let labels = RemoteFile::new("https://storage.googleapis.com/bit_models/ilsvrc2012_wordnet_lemmas.txt");
/// labels.fetch("labels/ilsvrc2012_wordnet_lemmas.txt".as_ref())?;
/// # Ok::<(), bit_hub::FetchError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteFile {
    /// Where to get it.
    pub url: String,
    /// Its published size in bytes, if known (the server's length is always checked).
    pub size: Option<u64>,
    /// Its published MD5, lowercase hex, if known.
    pub md5: Option<String>,
    /// Its published SHA-256, lowercase hex, if known (the Hugging Face hub publishes one
    /// for every large file).
    pub sha256: Option<String>,
    /// Sent as `Authorization: Bearer <token>` (a Hugging Face token for private repos).
    pub auth_token: Option<String>,
}

impl RemoteFile {
    /// A file of unknown size and checksum: only the server's length is checked.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Checks a local copy against the published size, MD5 and SHA-256.
    pub fn verify(&self, path: &Path) -> Result<()> {
        let len = std::fs::metadata(path).map_err(FetchError::io(path))?.len();
        if let Some(size) = self.size.filter(|&s| s != len) {
            return Err(integrity(path, "size", size.to_string(), len.to_string()));
        }
        if let Some(md5) = &self.md5 {
            let found = md5_file(path)?;
            if !found.eq_ignore_ascii_case(md5) {
                return Err(integrity(path, "MD5", md5.clone(), found));
            }
        }
        if let Some(sha256) = &self.sha256 {
            let found = crate::sha256_file(path).map_err(FetchError::io(path))?;
            if !found.eq_ignore_ascii_case(sha256) {
                return Err(integrity(path, "SHA-256", sha256.clone(), found));
            }
        }
        Ok(())
    }

    /// Makes sure `dest` holds this file: keeps a copy that verifies, otherwise downloads it
    /// (resuming a partial `dest.part` left by an interrupted run) and verifies it.
    pub fn fetch(&self, dest: &Path) -> Result<()> {
        if dest.is_file() {
            return self.verify(dest);
        }
        self.download_to(dest, &|_| Ok(()))
    }

    /// Downloads the file to `dest` whether or not a copy is there: the transfer goes to
    /// `dest.part` (resumed if an earlier one was cut), is verified with [`verify`](Self::verify)
    /// and then `check` (a format check, e.g. [`verify_npz`](crate::verify_npz)), and only then
    /// renamed over `dest`. A transfer that fails a check is deleted, so the next attempt
    /// starts afresh instead of resuming garbage.
    pub fn download_to(&self, dest: &Path, check: &dyn Fn(&Path) -> Result<()>) -> Result<()> {
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(FetchError::io(dir))?;
        }
        let part = part_path(dest);
        // A transfer that completed before its verification or rename was cut short.
        let complete = self
            .size
            .is_some_and(|s| std::fs::metadata(&part).is_ok_and(|m| m.len() == s));
        if !complete {
            download(self, &part, dest).map_err(|source| FetchError::Download {
                url: self.url.clone(),
                dest: dest.to_path_buf(),
                source: Box::new(source),
            })?;
        }
        if let Err(e) = self.verify(&part).and_then(|()| check(&part)) {
            std::fs::remove_file(&part).ok();
            return Err(e);
        }
        std::fs::rename(&part, dest).map_err(FetchError::io(dest))
    }
}

fn integrity(path: &Path, what: &'static str, expected: String, found: String) -> FetchError {
    FetchError::Integrity {
        path: path.to_path_buf(),
        what,
        expected,
        found,
    }
}

/// `file.npz` -> `file.npz.part`.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Streams `url` into `part`, appending to what an earlier attempt left there when the server
/// honours a range request.
fn download(
    remote: &RemoteFile,
    part: &Path,
    dest: &Path,
) -> std::result::Result<(), TransferError> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let idle = idle_timeout();
    let mut response = request(&remote.url, remote.auth_token.as_deref(), have, idle)?;
    let status = response.status().as_u16();
    if status == 416 {
        // Not a prefix of what the server has now (it changed, or the part is already longer):
        // start over next time.
        std::fs::remove_file(part).ok();
        return Err(TransferError::ResumeRefused);
    }
    if !(200..300).contains(&status) {
        return Err(TransferError::Status(status));
    }
    let resumed = have > 0 && status == 206;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let remaining: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    // `Content-Range: bytes 100-199/200`: the resumed part must start where ours ends.
    if resumed
        && let Some(range) = header("content-range")
        && !range.starts_with(&format!("bytes {have}-"))
    {
        std::fs::remove_file(part).ok();
        return Err(TransferError::ResumedElsewhere { range, have });
    }
    let part_error = |source| TransferError::Part {
        path: part.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(part_error)?;
    let start = if resumed { have } else { 0 };
    let bar = ProgressBar::new(remaining.map_or(0, |r| r + start));
    bar.set_style(progress_style(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ));
    bar.set_message(
        dest.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    );
    bar.set_position(start);
    let received = copy_body(&mut response.body_mut().as_reader(), &mut file, &bar).map_err(
        |(received, failure)| match failure {
            Failure::Read(e) if is_timeout(&e) => TransferError::Stalled {
                at: start + received,
                seconds: idle.as_secs(),
            },
            Failure::Read(source) => TransferError::Interrupted {
                at: start + received,
                source,
            },
            Failure::Write(source) => part_error(source),
        },
    )?;
    file.sync_all().map_err(part_error)?;
    bar.finish_and_clear();
    match remaining {
        Some(r) if r != received => Err(TransferError::Short {
            received: start + received,
            expected: start + r,
        }),
        _ => Ok(()),
    }
}

/// The GET of `url`, from byte `have` on. Generous limits for slow links, but a dead server must
/// not hang a training run forever: a body that stops fails after `idle`, keeping what came.
pub(crate) fn request(
    url: &str,
    auth_token: Option<&str>,
    have: u64,
    idle: Duration,
) -> std::result::Result<ureq::http::Response<ureq::Body>, TransferError> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(idle))
        .build()
        .new_agent();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    if let Some(token) = auth_token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    Ok(request.call()?)
}

/// Which side of a copy failed.
enum Failure {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `body` into `file` with progress: the bytes copied, or with them what failed (after a
/// read failure, what came is on disk).
fn copy_body(
    body: &mut impl Read,
    file: &mut File,
    bar: &ProgressBar,
) -> std::result::Result<u64, (u64, Failure)> {
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => return Ok(received),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                file.sync_all().ok();
                return Err((received, Failure::Read(e)));
            }
        };
        if let Err(e) = file.write_all(&buf[..n]) {
            return Err((received, Failure::Write(e)));
        }
        received += n as u64;
        bar.inc(n as u64);
    }
}

/// Lowercase hex MD5 of a file.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(FetchError::io(path))?;
    let mut hasher = Md5::new();
    io::copy(&mut file, &mut hasher).map_err(FetchError::io(path))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Whether a read failed because the idle timeout ran out.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) || e.to_string().to_ascii_lowercase().contains("timeout")
}
