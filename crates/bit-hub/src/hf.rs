//! Model repositories of the Hugging Face hub, downloaded into the cache the Python tools use
//! (`huggingface_hub`'s layout), so that a model fetched here is found by timm and
//! transformers and the other way round.
//!
//! One request to the hub's API (`/api/models/{repo}/revision/{revision}?blobs=true`) gives
//! the revision's commit and, for every file, its size and (for large files) SHA-256. The
//! chosen files are then downloaded from `/{repo}/resolve/{commit}/{file}` (all from that one
//! commit) as [`RemoteFile`]s: progress, resume of a cut transfer, idle timeout, and the size
//! and SHA-256 checked before a file is kept. The cache holds
//! `models--{org}--{name}/blobs/{sha256 or git blob id}`, `snapshots/{commit}/{file}` (a
//! relative link to the blob) and `refs/{revision}` (the commit), exactly as
//! `huggingface_hub` writes them.
//!
//! Environment, as `huggingface_hub` reads it: `HF_ENDPOINT` (a mirror), `HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; `HF_TOKEN`, else the token file
//! `$HF_HOME/token` (`huggingface-cli login`); `HF_HUB_OFFLINE=1` uses the cache only. Without
//! network, a revision already in the cache is used with a warning.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::download::{RemoteFile, idle_timeout, request};
use crate::error::{FetchError, Result, TransferError};

/// The hub's address, unless `HF_ENDPOINT` names a mirror.
pub const HF_ENDPOINT: &str = "https://huggingface.co";

/// A model repository at a revision: `ORG/NAME` or `ORG/NAME@REVISION` (a branch, tag or
/// commit; `main` by default).
///
/// ```
/// use bit_hub::HfRepo;
///
/// let repo: HfRepo = "timm/resnetv2_50x1_bit.goog_in21k".parse()?;
/// assert_eq!((repo.id.as_str(), repo.revision.as_str()), ("timm/resnetv2_50x1_bit.goog_in21k", "main"));
/// let pinned: HfRepo = "google/bit-50@v1.0".parse()?;
/// assert_eq!(pinned.revision, "v1.0");
/// assert!("../../etc/passwd".parse::<HfRepo>().is_err());
/// # Ok::<(), bit_hub::FetchError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfRepo {
    /// `ORG/NAME`.
    pub id: String,
    /// Branch, tag or commit.
    pub revision: String,
}

impl FromStr for HfRepo {
    type Err = FetchError;

    fn from_str(s: &str) -> Result<Self> {
        let (id, revision) = s.split_once('@').unwrap_or((s, "main"));
        let part_ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let parts: Vec<&str> = id.split('/').collect();
        let revision_ok = !revision.is_empty() && revision.split('/').all(part_ok);
        if parts.len() != 2 || !parts.iter().all(|p| part_ok(p)) || !revision_ok {
            return Err(FetchError::BadRepo(s.to_string()));
        }
        Ok(Self {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }
}

/// One file of a revision, as the hub's API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfFile {
    /// Its path in the repository.
    pub name: String,
    /// Bytes.
    pub size: Option<u64>,
    /// SHA-256 of a large (LFS) file.
    pub sha256: Option<String>,
    /// Git blob id, for the others.
    pub blob_id: Option<String>,
}

impl HfFile {
    /// Its name in the cache's `blobs/`: what `huggingface_hub` names it (the ETag).
    fn blob(&self) -> Option<&str> {
        self.sha256.as_deref().or(self.blob_id.as_deref())
    }
}

/// The hub and the local cache of its files.
///
/// ```no_run
/// use bit_hub::HfHub;
///
/// let hub = HfHub::from_env()?;
/// let repo = "timm/resnetv2_50x1_bit.goog_in21k".parse()?;
/// let dir = hub.snapshot(&repo, &|files| {
///     files.iter().filter(|f| f.name.ends_with(".json") || f.name == "model.safetensors")
///         .map(|f| f.name.clone()).collect()
/// })?;
/// println!("{}", dir.join("model.safetensors").display());
/// # Ok::<(), bit_hub::FetchError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfHub {
    endpoint: String,
    cache: PathBuf,
    token: Option<String>,
    offline: bool,
}

impl HfHub {
    /// The hub at `endpoint`, caching into `cache` (a `huggingface_hub` cache directory).
    pub fn new(endpoint: impl Into<String>, cache: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            cache: cache.into(),
            token: None,
            offline: false,
        }
    }

    /// Sends `token` with every request (private and gated repositories).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Uses only what is cached.
    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The hub and cache the environment names (see the [module docs](self)).
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let home = var("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("huggingface")))
            .ok_or(FetchError::NoCacheDir)?;
        let cache = var("HF_HUB_CACHE").map_or_else(|| home.join("hub"), PathBuf::from);
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"));
        Ok(Self::new(
            var("HF_ENDPOINT").unwrap_or_else(|| HF_ENDPOINT.into()),
            cache,
        )
        .with_token(token)
        .with_offline(offline))
    }

    /// The cache directory.
    pub fn cache(&self) -> &Path {
        &self.cache
    }

    /// `models--{org}--{name}` in the cache.
    fn repo_dir(&self, repo: &HfRepo) -> PathBuf {
        self.cache
            .join(format!("models--{}", repo.id.replace('/', "--")))
    }

    /// The local directory of `repo`'s revision holding the files `choose` picks from its
    /// listing, downloaded (and verified) if not cached yet.
    pub fn snapshot(
        &self,
        repo: &HfRepo,
        choose: &dyn Fn(&[HfFile]) -> Vec<String>,
    ) -> Result<PathBuf> {
        if self.offline {
            return self
                .cached(repo)
                .ok_or_else(|| FetchError::Offline(repo.id.clone()));
        }
        let (commit, files) = match self.listing(repo) {
            Ok(listing) => listing,
            // No answer at all (no network, a dead mirror): a revision cached earlier serves.
            Err(FetchError::Hub { status: None, .. }) if self.cached(repo).is_some() => {
                let dir = self.cached(repo).expect("checked");
                tracing::warn!(
                    "the hub did not answer; using {} from the cache",
                    dir.display()
                );
                return Ok(dir);
            }
            Err(e) => return Err(e),
        };
        let repo_dir = self.repo_dir(repo);
        let snapshot = repo_dir.join("snapshots").join(&commit);
        for name in choose(&files) {
            let file =
                files
                    .iter()
                    .find(|f| f.name == name)
                    .ok_or_else(|| FetchError::NotInRepo {
                        repo: repo.id.clone(),
                        file: name.clone(),
                    })?;
            let link = snapshot.join(&name);
            if link.is_file() {
                continue;
            }
            let blob = repo_dir.join("blobs").join(file.blob().unwrap_or(&commit));
            if !blob.is_file() {
                let remote = RemoteFile {
                    url: format!("{}/{}/resolve/{commit}/{name}", self.endpoint, repo.id),
                    size: file.size,
                    sha256: file.sha256.clone(),
                    auth_token: self.token.clone(),
                    ..RemoteFile::default()
                };
                remote.download_to(&blob, &|_| Ok(()))?;
            }
            link_to(&blob, &link)?;
        }
        if repo.revision != commit {
            let refs = repo_dir.join("refs").join(&repo.revision);
            let dir = refs.parent().expect("a file in refs/");
            std::fs::create_dir_all(dir).map_err(FetchError::io(dir))?;
            crate::write_atomically(&refs, |f| std::io::Write::write_all(f, commit.as_bytes()))
                .map_err(FetchError::io(&refs))?;
        }
        Ok(snapshot)
    }

    /// The revision's directory in the cache, if it was downloaded before.
    fn cached(&self, repo: &HfRepo) -> Option<PathBuf> {
        let dir = self.repo_dir(repo);
        let commit = std::fs::read_to_string(dir.join("refs").join(&repo.revision))
            .map(|c| c.trim().to_string())
            .unwrap_or_else(|_| repo.revision.clone());
        let snapshot = dir.join("snapshots").join(commit);
        snapshot.is_dir().then_some(snapshot)
    }

    /// The revision's commit and files, from the hub's API.
    fn listing(&self, repo: &HfRepo) -> Result<(String, Vec<HfFile>)> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.endpoint,
            repo.id,
            repo.revision.replace('/', "%2F")
        );
        let failed = |status: Option<u16>, reason: String| FetchError::Hub {
            repo: format!("{}@{}", repo.id, repo.revision),
            status,
            reason,
        };
        let mut response = request(&url, self.token.as_deref(), 0, idle_timeout())
            .map_err(|e| failed(None, e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            let reason = match status {
                401 | 403 => "private or gated: set HF_TOKEN to a token that may read it",
                404 => "no such repository or revision",
                _ => "the hub refused",
            };
            return Err(failed(Some(status), reason.into()));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| failed(None, TransferError::Http(e).to_string()))?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| failed(Some(status), format!("not the hub's API answer: {e}")))?;
        let commit = json["sha"]
            .as_str()
            .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| failed(Some(status), "no commit (`sha`) in the answer".into()))?;
        let files = json["siblings"]
            .as_array()
            .map(|siblings| {
                siblings
                    .iter()
                    .filter_map(|s| {
                        let text = |v: &serde_json::Value| v.as_str().map(String::from);
                        Some(HfFile {
                            name: text(&s["rfilename"])?,
                            size: s["lfs"]["size"].as_u64().or(s["size"].as_u64()),
                            sha256: text(&s["lfs"]["sha256"]),
                            blob_id: text(&s["blobId"]),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok((commit.to_string(), files))
    }
}

/// `link` -> `blob`, relative as `huggingface_hub` makes it; a copy where links fail.
fn link_to(blob: &Path, link: &Path) -> Result<()> {
    let dir = link.parent().expect("a file in a snapshot");
    std::fs::create_dir_all(dir).map_err(FetchError::io(dir))?;
    std::fs::remove_file(link).ok();
    // snapshots/{commit}/{file} -> ../../blobs/{blob} (deeper files climb more).
    let depth = link
        .strip_prefix(
            blob.parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("")),
        )
        .map_or(2, |rel| rel.components().count() - 1);
    let target = Path::new(&"../".repeat(depth))
        .join("blobs")
        .join(blob.file_name().unwrap_or_default());
    #[cfg(unix)]
    if std::os::unix::fs::symlink(&target, link).is_ok() {
        return Ok(());
    }
    std::fs::copy(blob, link).map_err(FetchError::io(link))?;
    Ok(())
}
