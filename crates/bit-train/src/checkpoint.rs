//! Resumable checkpoints: model and optimizer state (burnpack, which keeps parameter ids, so
//! the momentum buffers find their parameters again) and the loop's state. Each checkpoint is
//! written to a new directory, then `checkpoint.json` is replaced atomically to point at it, so
//! a crash or a full disk at any moment leaves the previous checkpoint usable.

use std::path::{Path, PathBuf};

use bit_model::{ResNetV2, ResNetV2Config};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

const POINTER: &str = "checkpoint.json";
const MODEL: &str = "model.bpk";
const OPTIMIZER: &str = "optim.bpk";
const STATE: &str = "state.json";

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
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    dir: String,
}

/// Writes a checkpoint of step `state.step` under `run_dir` and removes older ones.
pub fn save(
    run_dir: &Path,
    model: &ResNetV2,
    optim: &ModuleOptimizer,
    state: &TrainState,
) -> Result<PathBuf> {
    let name = format!("step-{:06}", state.step);
    let root = run_dir.join("checkpoints");
    let tmp = root.join(format!("{name}.tmp-{}", std::process::id()));
    let dir = root.join(&name);
    let written = (|| {
        std::fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
        let failed = |path: PathBuf| {
            move |e: burn::store::RecordError| TrainError::Io {
                path,
                reason: e.to_string(),
            }
        };
        model
            .clone()
            .save_file(tmp.join(MODEL))
            .map_err(failed(tmp.join(MODEL)))?;
        optim
            .save(tmp.join(OPTIMIZER))
            .map_err(failed(tmp.join(OPTIMIZER)))?;
        write_json(&tmp.join(STATE), state)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(TrainError::io(&dir))?;
        }
        std::fs::rename(&tmp, &dir).map_err(TrainError::io(&dir))?;
        let pointer = run_dir.join(POINTER);
        let pointer_tmp = run_dir.join(format!("{POINTER}.tmp"));
        write_json(
            &pointer_tmp,
            &Pointer {
                dir: format!("checkpoints/{name}"),
            },
        )?;
        std::fs::rename(&pointer_tmp, &pointer).map_err(TrainError::io(&pointer))
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
}

impl Saved {
    /// The model, on `device`.
    pub fn model(&self, device: &Device) -> Result<ResNetV2> {
        let path = self.dir.join(MODEL);
        self.state
            .model
            .try_init(device)?
            .try_load_file(&path)
            .map_err(|e| TrainError::Io {
                path,
                reason: e.to_string(),
            })
    }

    /// The optimizer state, loaded into `optim`.
    pub fn optimizer(&self, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
        let path = self.dir.join(OPTIMIZER);
        optim.load(&path).map_err(|e| TrainError::Io {
            path,
            reason: e.to_string(),
        })
    }
}

/// The run's latest checkpoint, if it has one.
pub fn find(run_dir: &Path) -> Result<Option<Saved>> {
    let pointer = run_dir.join(POINTER);
    if !pointer.is_file() {
        return Ok(None);
    }
    let Pointer { dir } = read_json(&pointer)?;
    let dir = run_dir.join(dir);
    let state = read_json(&dir.join(STATE))?;
    Ok(Some(Saved { dir, state }))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut file = std::fs::File::create(path).map_err(TrainError::io(path))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(TrainError::io(path))?;
    file.sync_all().map_err(TrainError::io(path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        reason: format!("unreadable checkpoint: {e}"),
    })
}
