//! # bit-train
//!
//! BiT fine-tuning as the official `bit_pytorch/train.py` does it: a BiT checkpoint with a
//! zero-initialised head sized to the dataset, SGD with momentum 0.9 and no weight decay, the
//! BiT-HyperRule learning rate every step (linear warmup, ÷10 decays, stop after the last
//! step), mixup from 20k examples, `--batch_split` micro-batching (by default sized to the free
//! memory: [`BatchSplit`]), data parallelism over several devices with replicas that stay on
//! them ([`DataParallel`]; devices of other processes and machines through Burn Remote),
//! evaluation (loss, top-1, top-5), the reference's log lines plus JSON
//! metrics, and atomic, resumable checkpoints. [`distill`] trains a student to match a
//! teacher's function (Beyer et al. 2022) on the same loop, checkpoints and logs.
//!
//! Both are one [`Objective`] and one [`Schedule`] on a [`Run`], which owns everything else
//! (run directory, devices, data, split, loop, checkpoints, logs, export): another objective
//! (a linear probe, a VTAB task) is a type implementing the trait (`examples/linear_probe.rs`).
//!
//! ```no_run
//! use bit_train::{TrainConfig, TrainOptions, train};
//!
//! let mut config = TrainConfig::new("cifar10_run", "BiT-M-R50x1", "cifar10", "/data/cifar", "/tmp/bit_logs");
//! config.run.models.bit_pretrained_dir = "/models".into();
//! config.examples_per_class = Some(5);
//! let outcome = train(&config, &TrainOptions::default())?;
//! println!("top-1 {:.2}% after {} steps", 100.0 * outcome.eval.top1, outcome.steps);
//! # Ok::<(), bit_train::TrainError>(())
//! ```
#![warn(missing_docs)]

mod cgroup;
pub mod checkpoint;
mod config;
mod data;
mod distill;
mod error;
mod failure;
mod finetune;
mod gradients;
mod log;
mod loss;
mod loss_scale;
pub mod memory;
mod objective;
mod parallel;
mod plot;
mod probe;
mod run;
mod schedule;
pub mod throughput;
mod timings;
mod views;
mod vtab;
mod watchdog;

pub use bit_infer::{EvalResult, evaluate};
pub use config::{DistillConfig, MAX_BATCH, MAX_STEPS, RunSettings, TrainConfig};
pub use data::TrainingData;
pub use distill::{DistillEval, DistillOutcome, distill};
pub use error::{Result, TrainError};
pub use finetune::{FineTune, TrainOutcome, bit_optimizer, train};
pub use log::{RunLog, python_exp};
pub use loss::{ShardLoss, Targets, TeacherTargets, distillation_loss};
pub use loss_scale::LossScale;
pub use memory::{BatchSplit, MicroBatchMemory};
pub use objective::{EvalData, Export, Objective};
pub use parallel::{DataParallel, Devices};
pub use plot::{CURVES_FILE, Curves, plot};
pub use run::{Outcome, Run, Start, TrainOptions};
pub use schedule::{Schedule, WarmupCosine};
pub use views::Views;
pub use vtab::{ReleasedModel, VtabFewShot, VtabRow, VtabTable, vtab, vtab_fewshot, vtab_released};
