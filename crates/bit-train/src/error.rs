//! The one error type of `bit-train`.

use std::path::PathBuf;

/// Why a fine-tuning run could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The pre-trained checkpoint is not where it was looked for.
    #[error(
        "no checkpoint at {path}, and `{model}` is not a released BiT model (`bit models` lists \
         them); pass --model a released name or a path to any BiT-format .npz"
    )]
    MissingCheckpoint {
        /// Where it was looked for.
        path: PathBuf,
        /// The `--model` given.
        model: String,
    },

    /// A released checkpoint could not be downloaded into the cache.
    #[error("{source}; or place {model}.npz in --bit_pretrained_dir ({dir}) by hand")]
    Download {
        /// The model name.
        model: String,
        /// The `--bit_pretrained_dir` searched first.
        dir: PathBuf,
        /// Why the download failed.
        source: Box<bit_zoo::Error>,
    },

    /// The model or a checkpoint could not be loaded or saved.
    #[error(transparent)]
    Model(#[from] bit_model::Error),

    /// A released model could not be found or fetched.
    #[error(transparent)]
    Zoo(#[from] bit_zoo::Error),

    /// A device could not be named or connected.
    #[error(transparent)]
    Device(#[from] bit_device::Error),

    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] bit_infer::InferError),

    /// The dataset could not be read or sampled.
    #[error(transparent)]
    Data(#[from] bit_data::DataError),

    /// A run directory, log or checkpoint could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed: the file system, the checkpoint store, or the JSON codec.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The saved run in the log directory belongs to a different setup.
    #[error(
        "{path} holds a run with {detail}; use another --name to start a new run, or delete the \
         directory"
    )]
    ResumeMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// What differs.
        detail: String,
    },

    /// The loss became NaN or infinite.
    #[error(
        "the loss became {loss} at step {step}: training diverged; lower --base_lr or check the \
         data (the last checkpoint is kept)"
    )]
    NonFiniteLoss {
        /// The optimizer step.
        step: usize,
        /// The value.
        loss: f32,
    },

    /// Another process is running the same run (same `--logdir` and `--name`).
    #[error(
        "{dir} is in use by {}: wait for that run to finish, or use another --name",
        pid.map_or("another process".to_string(), |p| format!("PID {p}"))
    )]
    RunInUse {
        /// The run directory.
        dir: PathBuf,
        /// The process holding it, when it could be read.
        pid: Option<u32>,
    },

    /// The model in a checkpoint has non-finite weights.
    #[error(
        "{path} holds non-finite (NaN or infinite) weights: the run diverged before it was \
         saved; delete {run} (or use another --name) and start again with a lower --base_lr"
    )]
    NonFiniteCheckpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// The run directory.
        run: PathBuf,
    },

    /// The run's checkpoint pointer names something other than one of its own checkpoint
    /// directories (a path outside the run, an absolute path, a symbolic link): nothing is
    /// read from there.
    #[error(
        "{pointer} names `{dir}`, which is not a checkpoint directory of this run (only \
         checkpoints/NAME, a directory, is accepted); restore it or delete the run to start over"
    )]
    ForeignCheckpoint {
        /// The pointer file, `{run}/checkpoint.json`.
        pointer: PathBuf,
        /// What it names.
        dir: String,
    },

    /// A device failed mid-run (a `bit serve` worker died or its connection broke, a GPU
    /// failed): the run stops at once; the checkpoints written before are intact.
    #[error(
        "a device failed at step {step}: {reason}; the last checkpoint is intact: rerun the same \
         command once every device is back to resume from it"
    )]
    DeviceFailed {
        /// The optimizer step that was under way.
        step: usize,
        /// What the backend reported.
        reason: String,
    },

    /// A panic after which every device still answers (see
    /// [`DeviceFailed`](Self::DeviceFailed)): a bug, in this project or a library it uses. The
    /// checkpoints written before are intact.
    #[error(
        "internal error at step {step}: {reason}; the last checkpoint is intact. Every device \
         still answers, so this is a bug, not a device failure: please report it with the \
         panic's location printed above and the run's train.log at \
         https://github.com/big-transfer-rs/big-transfer-rs/issues"
    )]
    Internal {
        /// The optimizer step that was under way.
        step: usize,
        /// The panic's message.
        reason: String,
    },

    /// The training stream ran dry although the schedule has steps left (a loader bug: the
    /// stream is endless).
    #[error("the training data stream ended at step {step}")]
    StreamEnded {
        /// The step that found no batch.
        step: usize,
    },

    /// The distillation teacher did not load.
    #[error("teacher `{teacher}`: {source}")]
    Teacher {
        /// The `--teacher` given.
        teacher: String,
        /// Why.
        #[source]
        source: Box<bit_infer::InferError>,
    },

    /// The distillation student did not load.
    #[error("student `{student}`: {source}")]
    Student {
        /// The `--student` given.
        student: String,
        /// Why.
        #[source]
        source: Box<bit_infer::InferError>,
    },

    /// A student whose own head is kept must have the teacher's classes.
    #[error(
        "student `{student}` has a {student_head}-way head and the teacher a {teacher_head}-way \
         one: drop --keep_student_head to start it with a new head of the teacher's size"
    )]
    HeadMismatch {
        /// The `--student` given.
        student: String,
        /// Its head size.
        student_head: usize,
        /// The teacher's.
        teacher_head: usize,
    },

    /// A checkpoint file no longer has the SHA-256 recorded when it was written.
    #[error(
        "{path} was damaged after it was written (SHA-256 {found}, the checkpoint recorded \
         {recorded}); the run cannot resume from it: restore the file, or start a new run with \
         another --name"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The digest recorded in `state.json`.
        recorded: String,
        /// The digest of the file as it is now.
        found: String,
    },

    /// A setting out of range.
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |e| Self::Io {
            path,
            source: Box::new(e),
        }
    }
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
