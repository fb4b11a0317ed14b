//! Getting catalog files onto the machine and loaded: the verified cache, the pre-trained
//! directory, and the one resolver of `--model`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bit_hub::{Cache, HfFile, HfHub, HfRepo, RemoteFile, verify_lines, verify_npz};
use burn::tensor::Device;

use bit_model::{CheckpointFormat, NpzCheckpoint, ResNetV2};

use crate::catalog::{
    BIT_MODELS_URL, BIT_MODELS_URL_ENV, LabelSet, PretrainedModel, find, find_hub_alias,
};
use crate::error::{Error, Result};

/// A model as [`ModelHub::load_with_metadata`] found it.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The network, with the head stored in the file.
    pub model: ResNetV2,
    /// The file's metadata (see [`RESOLUTION_METADATA_KEY`](bit_model::RESOLUTION_METADATA_KEY)
    /// and [`CLASSES_METADATA_KEY`](bit_model::CLASSES_METADATA_KEY)); empty for an `.npz`.
    pub metadata: HashMap<String, String>,
    /// The file.
    pub path: PathBuf,
    /// Its catalog entry, when the name or the file's stem is a released model.
    pub entry: Option<PretrainedModel>,
}

/// Where hand-placed release files are: the `--bit_pretrained_dir` flag, defined here once for
/// every `bit` command that loads a model by name, and the [`ModelHub`] it gives.
///
/// ```
/// let dir = bit_zoo::PretrainedDir::default();
/// assert_eq!(dir.bit_pretrained_dir, std::path::PathBuf::from("."));
/// let hub = dir.hub()?; // $BIT_HOME's cache, after ./{name}.npz
/// # Ok::<(), bit_zoo::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct PretrainedDir {
    /// Where hand-placed release files are: {bit_pretrained_dir}/{model}.npz is used before the
    /// cache ($BIT_HOME), as the reference's flag of that name.
    #[cfg_attr(feature = "cli", arg(long = "bit_pretrained_dir", default_value = "."))]
    pub bit_pretrained_dir: PathBuf,
}

impl Default for PretrainedDir {
    /// The working directory.
    fn default() -> Self {
        Self {
            bit_pretrained_dir: PathBuf::from("."),
        }
    }
}

impl PretrainedDir {
    /// The hub of `$BIT_HOME` and `$BIT_MODELS_URL` ([`ModelHub::from_env`]) looking in this
    /// directory first.
    pub fn hub(&self) -> Result<ModelHub> {
        Ok(ModelHub::from_env()?.with_pretrained_dir(&self.bit_pretrained_dir))
    }
}

/// Where models come from and where they are kept: a base URL (the official bucket, a mirror)
/// and a [`Cache`] directory. Files are kept at their bucket path (`models/vtab/…npz`), and
/// only used once they passed a full CRC read; a damaged cached file is downloaded again.
/// Every command resolves `--model` through [`locate`](Self::locate), in one documented order.
///
/// ```no_run
/// use bit_zoo::ModelHub;
/// use burn::tensor::Device;
///
/// let hub = ModelHub::from_env()?; // $BIT_HOME and $BIT_MODELS_URL, else the defaults
/// let path = hub.fetch(&bit_zoo::find("BiT-S-R50x1")?)?;
/// let model = hub.load("BiT-S-R50x1", &Device::flex())?;
/// # Ok::<(), bit_zoo::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelHub {
    cache: Cache,
    base_url: String,
    pretrained_dir: Option<PathBuf>,
}

impl ModelHub {
    /// A hub downloading from `base_url` into `cache`.
    pub fn new(cache: Cache, base_url: impl Into<String>) -> Self {
        Self {
            cache,
            base_url: base_url.into(),
            pretrained_dir: None,
        }
    }

    /// Looks for `{dir}/{name}.npz` before the cache (the reference's `--bit_pretrained_dir`:
    /// hand-placed release files).
    pub fn with_pretrained_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pretrained_dir = Some(dir.into());
        self
    }

    /// The cache of `$BIT_HOME` (else the user cache directory) and the base URL of
    /// `$BIT_MODELS_URL` (else [`BIT_MODELS_URL`]).
    pub fn from_env() -> Result<Self> {
        let base = std::env::var(BIT_MODELS_URL_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| BIT_MODELS_URL.to_string());
        let cache = Cache::from_env().map_err(|source| Error::Fetch {
            what: "the cache directory".into(),
            source,
        })?;
        Ok(Self::new(cache, base))
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Where `model` is (or will be) cached.
    pub fn path(&self, model: &PretrainedModel) -> PathBuf {
        self.cache.path(&format!("models/{}", model.file()))
    }

    fn relative(model: &PretrainedModel) -> String {
        format!("models/{}", model.file())
    }

    /// Whether `model` is cached and verified.
    pub fn is_cached(&self, model: &PretrainedModel) -> bool {
        self.cache.is_verified(&Self::relative(model))
    }

    /// The verified local copy of `model`, downloading it if needed.
    pub fn fetch(&self, model: &PretrainedModel) -> Result<PathBuf> {
        let remote = RemoteFile::new(model.url(&self.base_url));
        self.cache
            .fetch(&remote, &Self::relative(model), &verify_npz)
            .map_err(|source| Error::Fetch {
                what: format!("BiT model `{}`", model.name),
                source,
            })
    }

    /// The checkpoint file `model` names: `hf:ORG/NAME[@REVISION]`, a model repository of the
    /// Hugging Face hub (timm's or transformers' layout) downloaded into its cache
    /// ([`HfHub::from_env`]: `HF_HOME`, `HF_ENDPOINT`, `HF_TOKEN`), with the catalog entry of
    /// the release it holds, if any ([`find_hub_alias`]); else the first of: `model` itself if it is a file or a
    /// directory (any [`CheckpointFormat`](bit_model::CheckpointFormat): `.npz`,
    /// `.safetensors`, a timm or transformers directory or state dict);
    /// `{pretrained_dir}/{model}.npz` if the hub has a pre-trained
    /// directory and the file is there; the released model of that name from the cache,
    /// downloaded and verified if needed. The catalog entry comes along when the name or the
    /// file's stem is a released model, so a hand-placed `BiT-M-R50x1.npz` keeps its metadata.
    pub fn locate(&self, model: &str) -> Result<(PathBuf, Option<PretrainedModel>)> {
        if let Some(repo) = model.strip_prefix(HF_PREFIX) {
            return Ok((fetch_hf(repo)?, find_hub_alias(repo)));
        }
        let placed = self
            .pretrained_dir
            .as_ref()
            .map(|dir| dir.join(format!("{model}.npz")));
        for path in [Some(PathBuf::from(model)), placed].into_iter().flatten() {
            if path.is_file() || path.is_dir() {
                let entry = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|stem| find(stem).ok());
                return Ok((path, entry));
            }
        }
        let entry = find(model)?;
        Ok((self.fetch(&entry)?, Some(entry)))
    }

    /// Loads `model` (see [`locate`](Self::locate)) with the head stored in the file.
    pub fn load(&self, model: &str, device: &Device) -> Result<ResNetV2> {
        self.load_with_metadata(model, device)
            .map(|loaded| loaded.model)
    }

    /// [`load`](Self::load), with where the file was found and what it says of itself (its
    /// metadata: none for a release `.npz`; see [`ResNetV2::open_any`] for the others). A
    /// release `.npz` goes through [`load_npz`](Self::load_npz), which downloads a damaged
    /// cached copy again.
    pub fn load_with_metadata(&self, model: &str, device: &Device) -> Result<LoadedModel> {
        let (path, entry) = self.locate(model)?;
        let (model, metadata) = match CheckpointFormat::of(&path)? {
            CheckpointFormat::Npz => (
                self.load_npz(&path, entry.as_ref(), device)?,
                HashMap::new(),
            ),
            _ => ResNetV2::open_any(&path, device)?,
        };
        Ok(LoadedModel {
            model,
            metadata,
            path,
            entry,
        })
    }

    /// Loads the `.npz` at `path`, the released `entry` if it is one. A cached release whose
    /// weights turn out damaged when read (its CRC fails although its length and time are
    /// those it was verified with) is downloaded again, once.
    pub fn load_npz(
        &self,
        path: &Path,
        entry: Option<&PretrainedModel>,
        device: &Device,
    ) -> Result<ResNetV2> {
        let cached = entry.filter(|e| self.path(e) == path);
        match (self.read_npz(path, entry, device), cached) {
            (Err(Error::Model(bit_model::Error::Corrupt { reason, .. })), Some(entry)) => {
                tracing::warn!("{}: {reason}; downloading it again", path.display());
                self.cache
                    .invalidate(&Self::relative(entry))
                    .map_err(|source| Error::Fetch {
                        what: format!("BiT model `{}`", entry.name),
                        source,
                    })?;
                let path = self.fetch(entry)?;
                self.read_npz(&path, Some(entry), device)
            }
            (result, _) => result,
        }
    }

    fn read_npz(
        &self,
        path: &Path,
        entry: Option<&PretrainedModel>,
        device: &Device,
    ) -> Result<ResNetV2> {
        let ckpt = NpzCheckpoint::open(path)?;
        if let Some(entry) = entry
            && ckpt.head_size().is_some_and(|n| n != entry.head_size)
        {
            tracing::warn!(
                "{} has a {}-way head; the catalog lists {} for {}",
                path.display(),
                ckpt.head_size().unwrap_or(0),
                entry.head_size,
                entry.name
            );
        }
        Ok(ckpt.load(device)?)
    }

    /// The class names of `labels`, one per head output: the lemma line for ILSVRC-2012,
    /// `"<wordnet id> <lemmas>"` for ImageNet-21k. The label files are fetched into the cache
    /// like weights and checked to have one line per class.
    pub fn class_names(&self, labels: LabelSet) -> Result<Vec<String>> {
        let mut columns = Vec::new();
        for file in labels.files() {
            let remote = RemoteFile::new(format!("{}/{file}", self.base_url.trim_end_matches('/')));
            let check = |p: &Path| verify_lines(p, labels.len());
            let path = self
                .cache
                .fetch(&remote, &format!("labels/{file}"), &check)
                .map_err(|source| Error::Fetch {
                    what: format!("the label file {file}"),
                    source,
                })?;
            let text = std::fs::read_to_string(&path).map_err(|source| bit_model::Error::Io {
                path: path.clone(),
                source,
            })?;
            columns.push(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>(),
            );
        }
        let mut names = columns.remove(0);
        for column in columns {
            for (name, more) in names.iter_mut().zip(column) {
                name.push(' ');
                name.push_str(&more);
            }
        }
        Ok(names)
    }
}

/// Released models by name on [`ResNetV2`] itself: `ResNetV2::pretrained("BiT-M-R50x1", &device)`.
pub trait Pretrained: Sized {
    /// A released BiT model by name (see the [crate] docs), downloaded once into `$BIT_HOME`
    /// and verified, with its own head: 21843 classes for BiT-M, 1000 for BiT-S.
    ///
    /// ```no_run
    /// use bit_model::ResNetV2;
    /// use bit_zoo::Pretrained;
    /// use burn::tensor::Device;
    ///
    /// let model = ResNetV2::pretrained("BiT-M-R50x1", &Device::flex())?;
    /// // For fine-tuning, swap the head for a zero-initialised one:
    /// let model = model.with_zero_head(10);
    /// # Ok::<(), bit_zoo::Error>(())
    /// ```
    fn pretrained(name: &str, device: &Device) -> Result<Self>;
}

impl Pretrained for ResNetV2 {
    fn pretrained(name: &str, device: &Device) -> Result<Self> {
        let hub = ModelHub::from_env()?;
        let entry = find(name)?;
        let path = hub.fetch(&entry)?;
        hub.load_npz(&path, Some(&entry), device)
    }
}

/// The prefix of model names on the Hugging Face hub: `hf:timm/resnetv2_50x1_bit.goog_in21k`.
pub const HF_PREFIX: &str = "hf:";

/// The local directory of the hub repository `repo` (`ORG/NAME[@REVISION]`): its configuration
/// files and one weights file ([`bit_model::HUB_WEIGHT_FILES`], safetensors first).
fn fetch_hf(repo: &str) -> Result<PathBuf> {
    let what = format!("{HF_PREFIX}{repo}");
    let fetch_error = |source| Error::Fetch {
        what: what.clone(),
        source,
    };
    let parsed: HfRepo = repo.parse().map_err(fetch_error)?;
    let hub = HfHub::from_env().map_err(fetch_error)?;
    hub.snapshot(&parsed, &model_files).map_err(fetch_error)
}

/// What a model needs of a repository: `config.json` and `preprocessor_config.json` where
/// listed, and the first weights file listed (the missing `model.safetensors` is asked for,
/// and named in the error, when there is none).
fn model_files(files: &[HfFile]) -> Vec<String> {
    let listed = |name: &str| files.iter().any(|f| f.name == name);
    let mut wanted: Vec<String> = ["config.json", "preprocessor_config.json"]
        .into_iter()
        .filter(|name| listed(name))
        .map(String::from)
        .collect();
    let weights = bit_model::HUB_WEIGHT_FILES
        .into_iter()
        .find(|name| listed(name))
        .unwrap_or(bit_model::HUB_WEIGHT_FILES[0]);
    wanted.push(weights.to_string());
    wanted
}
