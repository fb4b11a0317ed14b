//! The cache: downloaded files live under one root, at their path in the bucket, beside a stamp
//! saying they passed their checks.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::download::RemoteFile;
use crate::error::{FetchError, Result};

/// Environment variable naming the cache root.
pub const BIT_HOME_ENV: &str = "BIT_HOME";

/// A directory of fetched files.
///
/// A file is used only after it passed its checks once (size, MD5 when published, and the
/// caller's format check such as a full CRC read of an `.npz`); a `<file>.verified` stamp
/// records the length and modification time it had then, so later uses cost nothing, while a
/// file changed since (a copy cut short, an edit) is checked again. A cached file that fails is
/// deleted and downloaded again.
///
/// ```no_run
/// use bit_hub::{Cache, RemoteFile, verify_npz};
///
/// let cache = Cache::from_env()?; // $BIT_HOME, else ~/.cache/big-transfer
/// let remote = RemoteFile::new("https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz");
/// let path = cache.fetch(&remote, "models/BiT-M-R50x1.npz", &verify_npz)?;
/// # Ok::<(), bit_hub::FetchError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `root` (created on first download).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$BIT_HOME`, else `big-transfer` in the user's cache directory (`~/.cache/big-transfer`
    /// on Linux).
    pub fn from_env() -> Result<Self> {
        if let Some(home) = std::env::var_os(BIT_HOME_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::new(home));
        }
        dirs::cache_dir()
            .map(|d| Self::new(d.join("big-transfer")))
            .ok_or(FetchError::NoCacheDir)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `relative` (a `/`-separated path) is kept.
    pub fn path(&self, relative: &str) -> PathBuf {
        relative
            .split('/')
            .filter(|c| !c.is_empty())
            .fold(self.root.clone(), |p, c| p.join(c))
    }

    /// Whether `relative` is cached and passed its checks (without checking again).
    pub fn is_verified(&self, relative: &str) -> bool {
        let path = self.path(relative);
        stamp_of(&path).is_some_and(|s| std::fs::read_to_string(stamp_path(&path)).ok() == Some(s))
    }

    /// The verified local copy of `remote`, kept at `relative`: a cached copy that passes its
    /// checks, else a fresh download (resumed if an earlier one was cut short).
    pub fn fetch(
        &self,
        remote: &RemoteFile,
        relative: &str,
        check: &dyn Fn(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let path = self.path(relative);
        if path.is_file() {
            if self.is_verified(relative) {
                return Ok(path);
            }
            match remote.verify(&path).and_then(|()| check(&path)) {
                Ok(()) => {
                    self.stamp(&path)?;
                    return Ok(path);
                }
                Err(e) => {
                    tracing::warn!("{e}; downloading it again from {}", remote.url);
                    std::fs::remove_file(&path).map_err(FetchError::io(&path))?;
                }
            }
        }
        std::fs::remove_file(stamp_path(&path)).ok();
        remote.download_to(&path, check)?;
        self.stamp(&path)?;
        Ok(path)
    }

    /// Forgets `relative`: deletes the file and its stamp, so the next
    /// [`fetch`](Self::fetch) downloads it again (for damage found after its checks passed).
    pub fn invalidate(&self, relative: &str) -> Result<()> {
        let path = self.path(relative);
        std::fs::remove_file(stamp_path(&path)).ok();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(FetchError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    fn stamp(&self, path: &Path) -> Result<()> {
        let stamp = stamp_of(path).ok_or_else(|| FetchError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("cannot read its length and modification time"),
        })?;
        let dest = stamp_path(path);
        std::fs::write(&dest, stamp).map_err(FetchError::io(dest))
    }
}

/// `<len> <mtime in ns>` of a file, the identity a stamp vouches for.
fn stamp_of(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(format!("{} {}", meta.len(), modified.as_nanos()))
}

fn stamp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    path.with_file_name(name)
}
