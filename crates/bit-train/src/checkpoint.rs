//! Resumable checkpoints: model and optimizer state (burnpack, which keeps parameter ids, so
//! the momentum buffers find their parameters again) and the loop's state. Each checkpoint is
//! written to a temporary directory, renamed to a name no other checkpoint has (saving the same
//! step twice makes two directories), and only then is `checkpoint.json` replaced atomically to
//! point at it; older directories are removed after that. So at every moment, a crash or a full
//! disk included, the pointer names a complete checkpoint. `state.json` also records the
//! SHA-256 of both tensor files, checked before they are loaded: a bit flipped on disk is an
//! error naming the file, not a resumed run with silently different weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bit_data::ImageDataset;
use bit_model::{ResNetV2, ResNetV2Config};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::config::{MAX_STEPS, RunSettings};
use crate::error::{Result, TrainError};
use crate::log::RunLog;
use crate::loss_scale::LossScale;
use crate::memory::BatchSplit;
use crate::run::{Position, Start};

const POINTER: &str = "checkpoint.json";
const MODEL: &str = "model.bpk";
const OPTIMIZER: &str = "optim.bpk";
const STATE: &str = "state.json";
/// Suffix of a checkpoint directory being written.
const TMP: &str = ".tmp";

/// What `state.json` holds: the state, and the SHA-256 of each tensor file by name (absent in
/// checkpoints written before digests were recorded, which load unchecked).
#[derive(Serialize, Deserialize)]
struct StateFile<S> {
    #[serde(flatten)]
    state: S,
    #[serde(default)]
    sha256: BTreeMap<String, String>,
}

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    /// The next micro-batch of the training stream.
    pub next_batch: u64,
    /// Seed of shuffling, augmentation and mixup.
    pub seed: u64,
    /// The model's architecture.
    pub model: ResNetV2Config,
    /// Class names of the training set.
    pub classes: Vec<String>,
    /// Size of the training set (after few-shot sampling).
    pub train_examples: usize,
    /// Global batch size.
    pub batch: usize,
    /// Micro-batches per step (the data stream depends on it); absent in checkpoints written
    /// before it was recorded.
    #[serde(default)]
    pub batch_split: Option<usize>,
    /// The loss scale of an f16 run (absent otherwise, and in older checkpoints).
    #[serde(default)]
    pub loss_scale: Option<LossScale>,
}

/// What a checkpoint records of a run's data and settings besides its position, and what a
/// resumed run must match.
pub(crate) struct Bookmark {
    /// Seed of shuffling, augmentation and mixup.
    pub seed: u64,
    /// Class names of the training set.
    pub classes: Vec<String>,
    /// Size of the training set.
    pub train_examples: usize,
    /// Global batch size.
    pub batch: usize,
    /// The `--batch_split` asked for.
    pub split: BatchSplit,
}

impl Bookmark {
    /// The bookmark of a run with `settings` training on `train`.
    pub fn of(settings: &RunSettings, train: &dyn ImageDataset) -> Self {
        Self {
            seed: settings.seed,
            classes: train.classes().to_vec(),
            train_examples: train.len(),
            batch: settings.batch,
            split: settings.batch_split,
        }
    }

    /// The checkpoint state of `model` at position `at` with `batch_split` micro-batches per
    /// step.
    pub fn state(&self, at: &Position, model: &ResNetV2, batch_split: usize) -> TrainState {
        TrainState {
            step: at.step,
            next_batch: at.next_batch,
            seed: self.seed,
            model: model.config(),
            classes: self.classes.clone(),
            train_examples: self.train_examples,
            batch: self.batch,
            batch_split: Some(batch_split),
            loss_scale: at.loss_scale,
        }
    }

    /// Resumes `saved` (its optimizer state loaded into `optim`), refusing a checkpoint of
    /// other data or settings, and non-finite weights.
    pub fn resume(
        self,
        saved: &Saved,
        optim: ModuleOptimizer,
        device: &Device,
        log: &mut RunLog,
    ) -> Result<Start> {
        self.check(saved)?;
        let batch_split = self.split_of(&saved.state)?;
        log.info(&format!(
            "Found saved model to resume from at '{}'",
            saved.dir.display()
        ));
        let model = saved.model(device)?;
        if !model.non_finite_parameters().is_empty() {
            let run = saved
                .dir
                .parent()
                .and_then(Path::parent)
                .unwrap_or(&saved.dir);
            return Err(TrainError::NonFiniteCheckpoint {
                path: saved.dir.clone(),
                run: run.to_path_buf(),
            });
        }
        let optim = saved.optimizer(optim)?;
        log.info(&format!("Resumed at step {}", saved.state.step));
        Ok(Start {
            model,
            optim,
            position: Position {
                step: saved.state.step,
                next_batch: saved.state.next_batch,
                loss_scale: saved.state.loss_scale,
            },
            batch_split,
            bookmark: self,
        })
    }

    /// The micro-batches per step `state` was trained with: recorded, or for a checkpoint
    /// written before splits were recorded, the `--batch_split` given if the stream position
    /// agrees with it (every step reads `split` micro-batches). `auto` is refused there: a
    /// probe could choose another split and the data stream would no longer line up.
    fn split_of(&self, state: &TrainState) -> Result<Option<usize>> {
        if state.batch_split.is_some() || state.step == 0 {
            return Ok(state.batch_split);
        }
        let steps = state.step as u64;
        let implied = (state.next_batch.is_multiple_of(steps))
            .then(|| state.next_batch / steps)
            .and_then(|k| usize::try_from(k).ok())
            .filter(|&k| k >= 1 && self.batch.is_multiple_of(k));
        match (self.split, implied) {
            (BatchSplit::Fixed(n), Some(k)) if n == k => Ok(Some(n)),
            (setting, Some(k)) => Err(TrainError::InvalidConfig(format!(
                "--batch_split {setting}: the checkpoint being resumed does not record its \
                 split, and its stream position (micro-batch {} after {} steps) implies {k}; \
                 pass --batch_split {k}",
                state.next_batch, state.step
            ))),
            (_, None) => Err(TrainError::InvalidConfig(format!(
                "the checkpoint being resumed does not record its --batch_split, and its \
                 stream position (micro-batch {} after {} steps) fits none of batch {}",
                state.next_batch, state.step, self.batch
            ))),
        }
    }

    /// Refuses to continue a saved run with different data or batch settings, or from a state
    /// no run writes (a damaged or edited `state.json`): every position field is checked
    /// against the run before anything is resumed.
    fn check(&self, saved: &Saved) -> Result<()> {
        let s = &saved.state;
        let splits_the_batch = |k: usize| k >= 1 && s.batch.is_multiple_of(k);
        // Each step reads between 1 and `batch` micro-batches of the stream.
        let stream_bound = (s.step as u64).saturating_mul(s.batch as u64);
        let detail = if s.step > MAX_STEPS {
            format!("an impossible `step` {} (at most {MAX_STEPS})", s.step)
        } else if s.batch_split.is_some_and(|k| !splits_the_batch(k)) {
            format!(
                "an impossible `batch_split` {:?} for its batch of {}",
                s.batch_split, s.batch
            )
        } else if s.next_batch < s.step as u64 || s.next_batch > stream_bound {
            format!(
                "an impossible `next_batch` {} after {} steps of batch {}",
                s.next_batch, s.step, s.batch
            )
        } else if s.classes != self.classes {
            format!("classes {:?}, this one {:?}", s.classes, self.classes)
        } else if s.train_examples != self.train_examples {
            format!(
                "{} training examples, this one {}",
                s.train_examples, self.train_examples
            )
        } else if s.batch != self.batch || s.seed != self.seed {
            format!(
                "batch {} and seed {}, this one batch {} and seed {}",
                s.batch, s.seed, self.batch, self.seed
            )
        } else {
            return Ok(());
        };
        Err(TrainError::ResumeMismatch {
            path: saved.dir.clone(),
            detail,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    dir: String,
}

/// A directory name no earlier checkpoint of this run has: the step, then the time and process.
fn unique_name(step: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("step-{step:06}-{nanos}-{}", std::process::id())
}

/// Writes a checkpoint of step `state.step` under `run_dir` and removes older ones.
pub fn save(
    run_dir: &Path,
    model: &ResNetV2,
    optim: &ModuleOptimizer,
    state: &TrainState,
) -> Result<PathBuf> {
    let name = unique_name(state.step);
    let root = run_dir.join("checkpoints");
    let tmp = root.join(format!("{name}{TMP}"));
    let dir = root.join(&name);
    let written = (|| {
        std::fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
        let failed = |path: PathBuf| {
            move |e: burn::store::RecordError| TrainError::Io {
                path,
                source: Box::new(e),
            }
        };
        model
            .clone()
            .save_file(tmp.join(MODEL))
            .map_err(failed(tmp.join(MODEL)))?;
        optim
            .save(tmp.join(OPTIMIZER))
            .map_err(failed(tmp.join(OPTIMIZER)))?;
        let mut sha256 = BTreeMap::new();
        for file in [MODEL, OPTIMIZER] {
            let path = tmp.join(file);
            let digest = bit_hub::sha256_file(&path).map_err(TrainError::io(&path))?;
            sha256.insert(file.to_string(), digest);
        }
        // Last: a directory with a state file is complete.
        write_json(&tmp.join(STATE), &StateFile { state, sha256 })?;
        std::fs::rename(&tmp, &dir).map_err(TrainError::io(&dir))?;
        write_json(
            &run_dir.join(POINTER),
            &Pointer {
                dir: format!("checkpoints/{name}"),
            },
        )
    })();
    if let Err(e) = written {
        std::fs::remove_dir_all(&tmp).ok();
        return Err(e);
    }
    // Older checkpoints are only removed once the pointer names the new one.
    for entry in std::fs::read_dir(&root)
        .map_err(TrainError::io(&root))?
        .flatten()
    {
        if entry.file_name().to_string_lossy() != name {
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
    Ok(dir)
}

/// A checkpoint found in a run directory.
pub struct Saved {
    /// Its directory.
    pub dir: PathBuf,
    /// The loop's state.
    pub state: TrainState,
    /// The SHA-256 of each tensor file, by name, as written.
    sha256: BTreeMap<String, String>,
}

impl Saved {
    /// `{dir}/{file}`, after checking it still has the digest recorded when it was written.
    fn intact(&self, file: &str) -> Result<PathBuf> {
        let path = self.dir.join(file);
        if let Some(recorded) = self.sha256.get(file) {
            let found = bit_hub::sha256_file(&path).map_err(TrainError::io(&path))?;
            if found != *recorded {
                return Err(TrainError::Damaged {
                    path,
                    recorded: recorded.clone(),
                    found,
                });
            }
        }
        Ok(path)
    }

    /// The model, on `device`.
    pub fn model(&self, device: &Device) -> Result<ResNetV2> {
        let path = self.intact(MODEL)?;
        self.state
            .model
            .try_init(device)?
            .try_load_file(&path)
            .map_err(|e| TrainError::Io {
                path,
                source: Box::new(e),
            })
    }

    /// The optimizer state, loaded into `optim`.
    pub fn optimizer(&self, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
        let path = self.intact(OPTIMIZER)?;
        optim.load(&path).map_err(|e| TrainError::Io {
            path,
            source: Box::new(e),
        })
    }
}

/// The run's latest checkpoint, if it has one.
pub fn find(run_dir: &Path) -> Result<Option<Saved>> {
    let pointer = run_dir.join(POINTER);
    if !pointer.is_file() {
        return Ok(None);
    }
    let Pointer { dir: named } = read_json(&pointer)?;
    let dir = confined(run_dir, &named).ok_or_else(|| TrainError::ForeignCheckpoint {
        pointer: pointer.clone(),
        dir: named,
    })?;
    let StateFile { state, sha256 } = read_json(&dir.join(STATE))?;
    Ok(Some(Saved { dir, state, sha256 }))
}

/// `{run_dir}/checkpoints/NAME` for a pointer's `checkpoints/NAME`, where NAME is a plain
/// name and neither it nor `checkpoints` is a symbolic link; `None` for anything else, which
/// could lead a resume outside the run.
fn confined(run_dir: &Path, named: &str) -> Option<PathBuf> {
    let name = named.strip_prefix("checkpoints/")?;
    let plain =
        !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0']);
    let is_link = |p: &Path| {
        p.symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
    };
    let root = run_dir.join("checkpoints");
    let dir = root.join(name);
    (plain && !is_link(&root) && !is_link(&dir)).then_some(dir)
}

/// Writes `value` as JSON, atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    bit_hub::write_atomically(path, |file| {
        std::io::Write::write_all(file, text.as_bytes())
    })
    .map_err(TrainError::io(path))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// The lock file in a run directory, holding the PID of the run that owns the directory.
pub const LOCK: &str = "run.lock";

/// An exclusive lock on a run directory, held for as long as this value lives. The operating
/// system releases it when the process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// Takes the exclusive lock of `run_dir` (created if needed), or reports who holds it.
pub fn lock(run_dir: &Path) -> Result<RunLock> {
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(run_dir).map_err(TrainError::io(run_dir))?;
    let path = run_dir.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(TrainError::io(&path))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(TrainError::io(&path))?;
            file.write_all(std::process::id().to_string().as_bytes())
                .map_err(TrainError::io(&path))?;
            Ok(RunLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            file.rewind().ok();
            file.read_to_string(&mut text).ok();
            Err(TrainError::RunInUse {
                dir: run_dir.to_path_buf(),
                pid: text.trim().parse().ok(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(TrainError::io(&path)(e)),
    }
}
