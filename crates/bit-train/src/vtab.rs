//! VTAB-1k as BiT reports it: every task fine-tuned with the HyperRule on its 1000 examples
//! (one resumable run per task, the same loop as `bit train`) or probed linearly on frozen
//! features, then one table: per-task accuracy, the natural / specialized / structured means
//! and the overall mean.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bit_data::{DatasetName, NonImagePolicy, TrainValid, VtabGroup, VtabTask, load_train_valid};
use bit_infer::{Feed, FewShotConfig, InferError, evaluate_dataset};
use bit_model::ResNetV2;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{read_json, write_json};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::finetune::train;
use crate::run::TrainOptions;

/// The results of a VTAB evaluation: one row per task, one column per measure (`top1` for
/// fine-tuning, `{k}-shot` for linear probes), all accuracies in `[0, 1]`.
///
/// ```
/// use bit_data::VtabTask;
/// use bit_train::{VtabRow, VtabTable};
///
/// let row = |task, acc| VtabRow { task, values: vec![acc] };
/// let table = VtabTable {
///     model: "BiT-M-R50x1".into(),
///     columns: vec!["top1".into()],
///     rows: vec![row(VtabTask::Dtd, 0.5), row(VtabTask::Eurosat, 0.9), row(VtabTask::Cifar100, 0.7)],
/// };
/// assert_eq!(table.group_means()[0].1, vec![0.6]); // natural: dtd and cifar100
/// assert!((table.mean()[0] - 0.7).abs() < 1e-12);
/// assert!(table.to_markdown().contains("| eurosat | specialized | 90.00 |"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VtabTable {
    /// The model evaluated (as given).
    pub model: String,
    /// What each value is.
    pub columns: Vec<String>,
    /// One row per task, in the order run.
    pub rows: Vec<VtabRow>,
}

/// One task's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VtabRow {
    /// The task.
    #[serde(with = "task_name")]
    pub task: VtabTask,
    /// One accuracy per column of the table.
    pub values: Vec<f64>,
}

impl VtabTable {
    /// Mean of each column over the tasks of each group that has any, in VTAB's group order.
    pub fn group_means(&self) -> Vec<(VtabGroup, Vec<f64>)> {
        VtabGroup::ALL
            .into_iter()
            .filter_map(|g| {
                let rows: Vec<&VtabRow> =
                    self.rows.iter().filter(|r| r.task.group() == g).collect();
                (!rows.is_empty()).then(|| (g, self.column_means(&rows)))
            })
            .collect()
    }

    /// Mean of each column over all tasks (VTAB's headline number when all 19 ran).
    pub fn mean(&self) -> Vec<f64> {
        self.column_means(&self.rows.iter().collect::<Vec<_>>())
    }

    fn column_means(&self, rows: &[&VtabRow]) -> Vec<f64> {
        (0..self.columns.len())
            .map(|c| rows.iter().map(|r| r.values[c]).sum::<f64>() / rows.len() as f64)
            .collect()
    }

    /// The table in Markdown: tasks, then group means, then the mean, in percent.
    pub fn to_markdown(&self) -> String {
        let percent = |values: &[f64]| -> String {
            values
                .iter()
                .map(|v| format!(" {:.2} |", 100.0 * v))
                .collect()
        };
        let mut out = format!("| task | group |{}\n", {
            let names: String = self.columns.iter().map(|c| format!(" {c} |")).collect();
            names
        });
        out += &format!("|---|---|{}\n", "---:|".repeat(self.columns.len()));
        for row in &self.rows {
            let (task, group) = (row.task, row.task.group());
            let _ = writeln!(out, "| {task} | {group} |{}", percent(&row.values));
        }
        for (group, means) in self.group_means() {
            let _ = writeln!(out, "| **{group} mean** | |{}", percent(&means));
        }
        if !self.rows.is_empty() {
            let n = self.rows.len();
            let _ = writeln!(out, "| **mean ({n} tasks)** | |{}", percent(&self.mean()));
        }
        out
    }

    /// The table as JSON: the rows plus the group and overall means.
    pub fn to_json(&self) -> serde_json::Value {
        let means: serde_json::Map<String, serde_json::Value> = self
            .group_means()
            .into_iter()
            .map(|(g, m)| (g.to_string(), serde_json::json!(m)))
            .collect();
        serde_json::json!({
            "model": self.model,
            "columns": self.columns,
            "tasks": self.rows,
            "group_means": means,
            "mean": self.mean(),
        })
    }

    /// Writes `vtab.json` and `vtab.md` into `dir`, atomically; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<[PathBuf; 2]> {
        let (json, md) = (dir.join("vtab.json"), dir.join("vtab.md"));
        write_json(&json, &self.to_json())?;
        let text = self.to_markdown();
        bit_hub::write_atomically(&md, |f| std::io::Write::write_all(f, text.as_bytes()))
            .map_err(TrainError::io(&md))?;
        Ok([json, md])
    }
}

mod task_name {
    use bit_data::VtabTask;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(task: &VtabTask, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(task.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VtabTask, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A task's finished result, `{logdir}/{task}/vtab_result.json`: what a rerun reuses instead of
/// redoing the task, if it was made the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TaskResult {
    /// `finetune` or `fewshot`, with what identifies the setup (model, shots, ...).
    setup: serde_json::Value,
    columns: Vec<String>,
    row: VtabRow,
}

fn result_path(logdir: &Path, task: VtabTask) -> PathBuf {
    logdir.join(task.name()).join("vtab_result.json")
}

/// The saved result of `task`, which must have been made with `setup`: another setup's
/// results (and runs) in the same directory are refused, not mixed into the table.
fn saved(logdir: &Path, task: VtabTask, setup: &serde_json::Value) -> Result<Option<TaskResult>> {
    let path = result_path(logdir, task);
    if !path.is_file() {
        return Ok(None);
    }
    let saved: TaskResult = read_json(&path)?;
    if saved.setup != *setup {
        return Err(TrainError::ResumeMismatch {
            path,
            detail: format!(
                "the result of {} (not {setup}); use another --logdir",
                saved.setup
            ),
        });
    }
    Ok(Some(saved))
}

fn save(logdir: &Path, result: &TaskResult) -> Result<()> {
    let path = result_path(logdir, result.row.task);
    std::fs::create_dir_all(path.parent().expect("a task directory"))
        .map_err(TrainError::io(&path))?;
    write_json(&path, result)
}

/// Runs `score` on each task without a saved result (saving it), until `stop`; writes the
/// table of every finished task into `logdir`. `score` returns `None` for a task it was
/// stopped in. Every task's data is located first: a missing dataset is an error before
/// hours of work on the others, not after.
fn each_task(
    (model, columns, setup): (&str, Vec<String>, serde_json::Value),
    (tasks, datadir): (&[VtabTask], &Path),
    logdir: &Path,
    stop: &AtomicBool,
    mut score: impl FnMut(VtabTask) -> Result<Option<Vec<f64>>>,
) -> Result<VtabTable> {
    for task in tasks {
        task.source(datadir)?;
    }
    let mut table = VtabTable {
        model: model.to_string(),
        columns,
        rows: Vec::new(),
    };
    for &task in tasks {
        if let Some(done) = saved(logdir, task, &setup)? {
            table.rows.push(done.row);
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(values) = score(task)? else {
            break;
        };
        let row = VtabRow { task, values };
        save(
            logdir,
            &TaskResult {
                setup: setup.clone(),
                columns: table.columns.clone(),
                row: row.clone(),
            },
        )?;
        table.rows.push(row);
    }
    std::fs::create_dir_all(logdir).map_err(TrainError::io(logdir))?;
    table.write(logdir)?;
    Ok(table)
}

/// The 1000 training examples and the test split of `task`.
fn task_data(task: VtabTask, datadir: &Path) -> Result<TrainValid> {
    Ok(load_train_valid(
        DatasetName::Vtab(task),
        datadir,
        NonImagePolicy::Error,
    )?)
}

/// Fine-tunes `config`'s model on each of `tasks` (the run `{logdir}/{task}`, on the dataset
/// `vtab/{task}` of `config`'s data directory, with every other setting of `config`: the
/// HyperRule at 1000 examples gives 500 steps of batch 512 at lr 0.003 without mixup), then
/// writes and returns the table of test top-1 accuracies. A task whose result is saved is not
/// run again; an interrupted task resumes from its checkpoint. Stopped through `options`, it
/// returns the tasks finished so far.
pub fn vtab(config: &TrainConfig, tasks: &[VtabTask], options: &TrainOptions) -> Result<VtabTable> {
    let setup = serde_json::json!({
        "mode": "finetune",
        "model": config.model,
        "steps": config.steps,
        "batch": config.run.batch,
        "base_lr": config.base_lr,
        "resolution": config.resolution,
        "examples_per_class": config.examples_per_class,
        "seed": config.run.seed,
    });
    let columns = vec!["top1".to_string()];
    let head = (config.model.as_str(), columns, setup);
    let datadir = config.run.datadir.as_deref().ok_or_else(|| {
        TrainError::InvalidConfig("--datadir is required: where the tasks' data is".into())
    })?;
    let data = (tasks, datadir);
    each_task(head, data, &config.run.logdir, &options.stop, |task| {
        let mut task_config = config.clone();
        task_config.run.name = task.name().into();
        task_config.run.dataset = format!("vtab/{task}");
        let outcome = train(&task_config, options)?;
        Ok((!outcome.interrupted).then(|| vec![outcome.eval.top1]))
    })
}

/// How [`vtab_fewshot`] probes.
#[derive(Debug, Clone)]
pub struct VtabFewShot<'a> {
    /// The model's name or file, as the table names it.
    pub model: &'a str,
    /// The frozen network.
    pub network: &'a ResNetV2,
    /// How images reach it (its resolution).
    pub feed: &'a Feed,
    /// Where it runs.
    pub device: &'a Device,
    /// Shots, seeds and L2 of the probes.
    pub probes: &'a FewShotConfig,
}

/// Few-shot linear probes ([`bit_infer::fewshot`]) on each of `tasks`: draws from the task's
/// 1000 training examples, scored on its test split (as `bit fewshot --dataset vtab/{task}`
/// does), one column per number of shots (the mean over seeds). Results are saved per task
/// under `logdir` and reused; the table is written there too.
pub fn vtab_fewshot(
    probe: &VtabFewShot,
    datadir: &Path,
    tasks: &[VtabTask],
    logdir: &Path,
    stop: &AtomicBool,
) -> Result<VtabTable> {
    let setup = serde_json::json!({
        "mode": "fewshot",
        "model": probe.model,
        "resolution": probe.feed.resolution,
        "shots": probe.probes.shots,
        "seeds": probe.probes.seeds,
        "l2": probe.probes.l2,
        "representation": probe.probes.representation.to_string(),
    });
    let columns = probe
        .probes
        .shots
        .iter()
        .map(|k| format!("{k}-shot"))
        .collect();
    let head = (probe.model, columns, setup);
    each_task(head, (tasks, datadir), logdir, stop, |task| {
        let data = task_data(task, datadir)?;
        let scores = bit_infer::fewshot(
            probe.network,
            data.train,
            data.valid,
            probe.probes,
            probe.feed,
            probe.device,
        )?;
        Ok(Some(scores.iter().map(|s| s.mean()).collect()))
    })
}

/// A task's released fine-tune, and how to feed it.
pub type ReleasedModel<'a> =
    dyn Fn(VtabTask) -> std::result::Result<(ResNetV2, Feed), InferError> + 'a;

/// Scores BiT's released fine-tune of each of `tasks` (`load` gives it, e.g. from the model
/// cache as `vtab/{model}-run{N}-{task}`) on the task's test split: the top-1 to compare a
/// `vtab` run with. Results are saved per task under `logdir` and reused.
pub fn vtab_released(
    load: &ReleasedModel,
    model: &str,
    datadir: &Path,
    tasks: &[VtabTask],
    logdir: &Path,
    device: &Device,
    stop: &AtomicBool,
) -> Result<VtabTable> {
    let setup = serde_json::json!({"mode": "released", "model": model});
    let columns = vec!["top1".to_string()];
    each_task(
        (model, columns, setup),
        (tasks, datadir),
        logdir,
        stop,
        |task| {
            let (network, feed) = load(task)?;
            let test = task_data(task, datadir)?.valid;
            let result = evaluate_dataset(&network, test, &feed, device)?;
            Ok(Some(vec![result.top1]))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry's class counts (the heads `bit vtab` fine-tunes) and the catalog's (the
    /// heads of BiT's released VTAB fine-tunes, `--mode released`) are written in two crates:
    /// they must agree for every task, or a released model would be scored against the wrong
    /// number of classes.
    #[test]
    fn every_task_has_the_class_count_of_its_released_fine_tunes() {
        for task in VtabTask::ALL {
            for arch in ["R50x1", "R101x3"] {
                let name = format!("vtab/BiT-M-{arch}-run0-{task}");
                let released = bit_zoo::find(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(released.head_size, task.classes(), "{name}");
            }
        }
    }
}
