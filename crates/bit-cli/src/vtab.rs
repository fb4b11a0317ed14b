//! `bit vtab`: VTAB-1k, every task fine-tuned (BiT's protocol), probed linearly, or evaluated
//! with BiT's released fine-tunes, then one table.

use std::str::FromStr;

use bit_data::{VtabGroup, VtabTask};
use bit_infer::{FewShotConfig, InferenceModel, LoadOptions};
use bit_train::{TrainConfig, VtabFewShot, VtabTable};
use clap::{Args, ValueEnum};

use crate::{CliResult, finished, stop_on_signals};

/// How each task is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Fine-tune with the BiT-HyperRule on the 1000 examples (500 steps of 512), score the
    /// test split: BiT's VTAB-1k protocol. Each task is a resumable run `{logdir}/{task}`.
    Finetune,
    /// Few-shot linear probes on frozen pooled features (`bit fewshot` per task).
    Fewshot,
    /// Score BiT's released fine-tune of each task (`vtab/{model}-run{N}-{task}`, downloaded
    /// into the cache) on the task's test split.
    Released,
}

/// Arguments of `bit vtab`: the tasks, the mode, and every flag of `bit train` (the run
/// name and dataset are each task's own).
#[derive(Args)]
#[command(
    mut_arg("name", |a| a.required(false).hide(true).default_value("vtab")),
    mut_arg("dataset", |a| a.required(false).hide(true).default_value("vtab"))
)]
pub struct VtabArgs {
    /// Tasks or groups, comma-separated: `all`, `natural`, `specialized`, `structured`, or task
    /// names (caltech101, ..., clevr-count, ..., smallnorb-elevation).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    tasks: Vec<String>,
    /// How each task is evaluated.
    #[arg(long, value_enum, default_value = "finetune")]
    mode: Mode,
    /// `--mode released`: which of the three released runs per task.
    #[arg(long = "released_run", default_value_t = 0)]
    released_run: usize,
    #[command(flatten)]
    probes: FewShotConfig,
    #[command(flatten)]
    train: TrainConfig,
}

/// The tasks a `--tasks` list names, in VTAB's order, each once.
fn tasks(names: &[String]) -> Result<Vec<VtabTask>, bit_data::DataError> {
    let mut chosen = Vec::new();
    for name in names {
        let group = VtabGroup::ALL.into_iter().find(|g| g.to_string() == *name);
        match (name.as_str(), group) {
            ("all", _) => chosen.extend(VtabTask::ALL),
            (_, Some(g)) => chosen.extend(VtabTask::ALL.into_iter().filter(|t| t.group() == g)),
            (task, None) => chosen.push(VtabTask::from_str(task)?),
        }
    }
    chosen.sort();
    chosen.dedup();
    Ok(chosen)
}

pub fn vtab(args: VtabArgs) -> CliResult {
    let tasks = tasks(&args.tasks)?;
    let config = &args.train;
    let datadir = config
        .run
        .datadir
        .clone()
        .ok_or("--datadir is required: the directory of the tasks' TFDS datasets or bundles")?;
    let (options, received) = stop_on_signals()?;
    let table = match args.mode {
        Mode::Finetune => bit_train::vtab(config, &tasks, &options)?,
        Mode::Fewshot | Mode::Released => {
            let device = config.run.compute.device()?;
            let hub = config.run.models.hub()?;
            let load = |model: &str| {
                // `--resolution PRECROP,CROP`: the probes and the released models see crops.
                let options = LoadOptions {
                    precision: config.run.compute.precision,
                    resolution: config.resolution.map(|(_, crop)| crop),
                    ..LoadOptions::default()
                };
                InferenceModel::load(&hub, model, &options, &device)
            };
            let loader = bit_data::LoaderConfig::new(32).with_workers(config.run.workers);
            if args.mode == Mode::Fewshot {
                let m = load(&config.model)?;
                let feed = m.feed().with_loader(loader).with_progress(true);
                let probe = VtabFewShot {
                    model: &config.model,
                    network: &m.model,
                    feed: &feed,
                    device: &device,
                    probes: &args.probes,
                };
                bit_train::vtab_fewshot(
                    &probe,
                    &datadir,
                    &tasks,
                    &config.run.logdir,
                    &options.stop,
                )?
            } else {
                let released = |task: VtabTask| {
                    format!("vtab/{}-run{}-{task}", config.model, args.released_run)
                };
                bit_train::vtab_released(
                    &|task| {
                        let m = load(&released(task))?;
                        let feed = m.feed().with_loader(loader).with_progress(true);
                        Ok((m.model, feed))
                    },
                    &config.model,
                    &datadir,
                    &tasks,
                    &config.run.logdir,
                    &device,
                    &options.stop,
                )?
            }
        }
    };
    print(&table, &config.run.logdir);
    finished(table.rows.len() < tasks.len(), &received)
}

fn print(table: &VtabTable, logdir: &std::path::Path) {
    println!("{}", table.to_markdown().trim_end());
    println!(
        "wrote {} and {}",
        logdir.join("vtab.md").display(),
        logdir.join("vtab.json").display()
    );
}
