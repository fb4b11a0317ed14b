//! Downloading files once into a cache, with a progress bar, resume of an interrupted
//! transfer, integrity checks and an atomic rename: a file at its final path is always whole.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use md5::{Digest, Md5};

use crate::error::{DataError, Result};

/// A file published at a URL, with what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Where to get it.
    pub url: String,
    /// Its published size in bytes, if known.
    pub size: Option<u64>,
    /// Its published MD5, lowercase hex, if known.
    pub md5: Option<String>,
}

impl RemoteFile {
    /// Checks a local copy against the published size and MD5.
    pub fn verify(&self, path: &Path) -> Result<()> {
        let len = std::fs::metadata(path).map_err(DataError::io(path))?.len();
        if let Some(size) = self.size.filter(|&s| s != len) {
            return Err(integrity(path, "size", size.to_string(), len.to_string()));
        }
        if let Some(md5) = &self.md5 {
            let found = md5_file(path)?;
            if !found.eq_ignore_ascii_case(md5) {
                return Err(integrity(path, "MD5", md5.clone(), found));
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
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
        }
        let part = part_path(dest);
        // A transfer that completed before its verification or rename was cut short.
        let complete = self
            .size
            .is_some_and(|s| std::fs::metadata(&part).is_ok_and(|m| m.len() == s));
        if !complete {
            download(&self.url, &part, dest).map_err(|reason| DataError::Download {
                url: self.url.clone(),
                dest: dest.to_path_buf(),
                reason,
            })?;
        }
        if let Err(e) = self.verify(&part) {
            // A bad transfer must not be resumed from: start over next time.
            std::fs::remove_file(&part).ok();
            return Err(e);
        }
        std::fs::rename(&part, dest).map_err(DataError::io(dest))
    }
}

fn integrity(path: &Path, what: &'static str, expected: String, found: String) -> DataError {
    DataError::Integrity {
        path: path.to_path_buf(),
        what,
        expected,
        found,
    }
}

/// `file.tar.gz` -> `file.tar.gz.part`.
fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Streams `url` into `part`, appending to what an earlier attempt left there when the server
/// honours a range request. Errors are returned as text for [`DataError::Download`].
fn download(url: &str, part: &Path, dest: &Path) -> std::result::Result<(), String> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    // Generous limits for slow links, but a dead server must not hang a training run forever.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .build()
        .new_agent();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut response = request.call().map_err(|e| e.to_string())?;
    let resumed = have > 0 && response.status() == 206;
    let remaining: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| format!("{}: {e}", part.display()))?;
    let start = if resumed { have } else { 0 };
    let bar = ProgressBar::new(remaining.map_or(0, |r| r + start));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(
        dest.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    );
    bar.set_position(start);
    let mut reader = response.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(format!(
                    "interrupted after {} bytes ({e}); run again to resume",
                    start + received
                ));
            }
        };
        file.write_all(&buf[..n])
            .map_err(|e| format!("{}: {e}", part.display()))?;
        received += n as u64;
        bar.inc(n as u64);
    }
    file.sync_all()
        .map_err(|e| format!("{}: {e}", part.display()))?;
    bar.finish_and_clear();
    match remaining {
        Some(r) if r != received => Err(format!(
            "connection closed after {received} of {r} bytes; run again to resume"
        )),
        _ => Ok(()),
    }
}

/// Lowercase hex MD5 of a file.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(DataError::io(path))?;
    let mut hasher = Md5::new();
    io::copy(&mut file, &mut hasher).map_err(DataError::io(path))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
