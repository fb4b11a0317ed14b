//! `bit`: the command-line face of big-transfer-rs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bit_model::{NpzCheckpoint, ResNetV2Config};
use bit_train::{TrainConfig, TrainOptions};
use burn::tensor::Device;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;

mod bench;
mod infer;
#[cfg(feature = "remote")]
mod serve;
mod vtab;
mod zoo;

/// What a command returns: nothing, or the error `main` prints.
type CliResult = Result<(), Box<dyn std::error::Error>>;

/// `text` with its control characters escaped (`\u{1b}`, `\n`), except those in `keep`: class
/// and file names come from files (label files, model metadata, folders), and printed raw
/// their escape sequences would drive the terminal.
fn printable<'a>(text: &'a str, keep: &[char]) -> std::borrow::Cow<'a, str> {
    let escaped = |c: &char| c.is_control() && !keep.contains(c);
    match text.chars().any(|c| escaped(&c)) {
        false => text.into(),
        true => text
            .chars()
            .map(|c| match escaped(&c) {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect::<String>()
            .into(),
    }
}

/// Big Transfer (BiT) in pure Rust.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune a BiT model on a dataset with the BiT-HyperRule (the reference `train.py`).
    Train(Box<TrainConfig>),
    /// Distill a teacher into a student by function matching (Beyer et al. 2022): both see the
    /// same inception-crop + mixup view, the student matches the teacher's softmax (KL at
    /// --temperature) with Adam, global-norm clipping and warmup + cosine; resumable like train.
    Distill(Box<bit_train::DistillConfig>),
    /// Write a BiT-format .npz with random (seeded) weights: a checkpoint the project makes
    /// itself, for trying `bit train` and the library without any download.
    Init {
        /// `tiny` (one unit per block, width 1: 8M parameters) or a BiT architecture (R50x1 ...
        /// R152x4).
        #[arg(long)]
        arch: String,
        /// Classes of the head.
        #[arg(long, default_value_t = 10)]
        head: usize,
        /// The .npz to write.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the weights (the same seed gives the same file).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Draw runs' training loss, learning rate and validation top-1 over the steps into one SVG
    /// (each run also keeps its own, refreshed at every evaluation, as {run}/curves.svg).
    Plot {
        /// Run directories ({logdir}/{name}).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The SVG to write.
        #[arg(long, default_value = "runs.svg")]
        out: PathBuf,
    },
    /// Show the architecture stored in a BiT `.npz` checkpoint (read from its keys and shapes).
    Inspect {
        /// The checkpoint, e.g. `BiT-M-R50x1.npz`.
        checkpoint: PathBuf,
    },
    /// List the released models (filter: words that must all appear, e.g. `vtab R50x1 dtd`).
    Models {
        /// Filter words.
        filter: Vec<String>,
        /// Also print each model's URL.
        #[arg(long)]
        urls: bool,
    },
    /// Download released models into the cache ($BIT_HOME) and verify them.
    Download {
        /// Model names, e.g. BiT-M-R50x1 vtab/BiT-M-R50x1-run0-dtd distill/R50x1_224.
        #[arg(required = true)]
        models: Vec<String>,
    },
    /// Top-k classes of images, with probabilities and class names.
    Predict(infer::PredictArgs),
    /// Pooled pre-logit features of images or a dataset, to a .npy file.
    Embed(Box<infer::EmbedArgs>),
    /// Top-1/top-5 of a model on a labelled dataset (classes matched to the head by name).
    Eval(Box<infer::EvalArgs>),
    /// Convert a model between .npz (official layout) and .safetensors.
    Export(infer::ExportArgs),
    /// BiT's few-shot linear evaluation: ridge-regression probes on the frozen pooled features
    /// of K training images per class (big_vision's evaluator), scored on the test split, for
    /// each K and seed.
    Fewshot(Box<infer::FewshotArgs>),
    /// VTAB-1k: each of the 19 tasks (or those of --tasks) fine-tuned as BiT does it (a
    /// resumable run per task), probed linearly (--mode fewshot), or scored with BiT's released
    /// fine-tunes (--mode released); then a table (per task, group means, mean) printed and
    /// written as {logdir}/vtab.md and vtab.json. See docs/vtab.md for the data.
    Vtab(Box<vtab::VtabArgs>),
    /// Images per second and memory of a model (random weights) on a device: inference or a
    /// whole training step, timed after warm-up with the device synchronized.
    Bench(bit_train::throughput::Bench),
    /// Check this build on a device against reference vectors of the official PyTorch code
    /// (logits, features, one SGD step): exits non-zero if any value is out of tolerance.
    Selftest(bench::SelftestArgs),
    /// Serve this machine's devices to `bit train`/`bit distill --device ws://HOST:PORT` (or
    /// iroh://ID@HOST:PORT) run elsewhere, through Burn Remote: the trainer keeps a model replica
    /// on each served device and exchanges gradients once per step. WebSocket (default) is not
    /// encrypted and authenticates clients only by $BIT_REMOTE_TOKEN, sent in clear; Iroh
    /// (--transport iroh) is encrypted and authenticates the server by its key, clients by the
    /// token. Listens on 127.0.0.1 unless --bind says otherwise. See docs/distributed.md.
    #[cfg(feature = "remote")]
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result: Result<(), Box<dyn std::error::Error>> = match Cli::parse().command {
        Command::Inspect { checkpoint } => inspect(&checkpoint).map_err(Into::into),
        Command::Plot { runs, out } => plot(&runs, &out),
        Command::Init {
            arch,
            head,
            out,
            seed,
        } => init(&arch, head, &out, seed),
        Command::Train(config) => train(&config),
        Command::Distill(config) => distill(&config),
        Command::Models { filter, urls } => zoo::models(&filter, urls),
        Command::Download { models } => zoo::download(&models),
        Command::Predict(args) => infer::predict(args),
        Command::Embed(args) => infer::embed(*args),
        Command::Eval(args) => infer::eval(*args),
        Command::Export(args) => infer::export(args),
        Command::Fewshot(args) => infer::fewshot(*args),
        Command::Vtab(args) => vtab::vtab(*args),
        Command::Bench(args) => bench::bench(&args),
        Command::Selftest(args) => bench::selftest(&args),
        #[cfg(feature = "remote")]
        Command::Serve(args) => serve::serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(stopped) => {
                eprintln!("{stopped}");
                ExitCode::from(u8::try_from(128 + stopped.signal).unwrap_or(u8::MAX))
            }
            // The reader of our output went away (`bit models | head`): nothing left to say.
            None if e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
            {
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: {}", printable(&e.to_string(), &['\n', '\t']));
                ExitCode::FAILURE
            }
        },
    }
}

fn train(config: &TrainConfig) -> CliResult {
    let (options, received) = stop_on_signals()?;
    let outcome = bit_train::train(config, &options)?;
    println!(
        "{} after {} steps: validation loss {:.5}, top-1 {:.2}%, top-5 {:.2}% ({} examples); run in {}",
        if outcome.interrupted {
            "stopped"
        } else {
            "done"
        },
        outcome.steps,
        outcome.eval.loss,
        100.0 * outcome.eval.top1,
        100.0 * outcome.eval.top5,
        outcome.eval.examples,
        outcome.run_dir.display()
    );
    finished(outcome.interrupted, &received)
}

/// Run options whose stop flag the first SIGINT (Ctrl-C), SIGTERM or SIGHUP sets: the run then
/// evaluates, checkpoints and ends, and the command exits with the signal's conventional code
/// (see [`Interrupted`]). A second signal ends the process at once, with that code.
fn stop_on_signals() -> std::io::Result<(TrainOptions, Arc<AtomicUsize>)> {
    let options = TrainOptions::default();
    let received = Arc::new(AtomicUsize::new(0));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // Registered first, so it sees the flag as the previous signal left it.
        flag::register_conditional_shutdown(signal, 128 + signal, options.stop.clone())?;
        flag::register(signal, options.stop.clone())?;
        flag::register_usize(signal, received.clone(), signal as usize)?;
    }
    Ok((options, received))
}

/// A run that a signal stopped (after its evaluation and checkpoint): the command exits with
/// 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process
/// the signal ended, so that a script can tell it from a finished run. Rerunning resumes it.
#[derive(Debug)]
struct Interrupted {
    signal: usize,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by signal {}; rerun to resume", self.signal)
    }
}

impl std::error::Error for Interrupted {}

/// `Ok` for a finished run, [`Interrupted`] for a stopped one.
fn finished(interrupted: bool, received: &AtomicUsize) -> CliResult {
    match (interrupted, received.load(Ordering::SeqCst)) {
        (false, _) => Ok(()),
        // Stopped without a signal (the library's stop flag set otherwise): as Ctrl-C.
        (true, 0) => Err(Interrupted {
            signal: SIGINT as usize,
        }
        .into()),
        (true, signal) => Err(Interrupted { signal }.into()),
    }
}

fn distill(config: &bit_train::DistillConfig) -> CliResult {
    let (options, received) = stop_on_signals()?;
    let outcome = bit_train::distill(config, &options)?;
    let e = outcome.eval;
    let student = e.student_top.map_or(String::new(), |(top1, top5)| {
        format!(
            ", student top-1 {:.2}%, top-5 {:.2}%",
            100.0 * top1,
            100.0 * top5
        )
    });
    println!(
        "{} after {} steps: KL {:.5}, agreement top-1 {:.2}%{student} ({} examples); run in {}",
        if outcome.interrupted {
            "stopped"
        } else {
            "done"
        },
        outcome.steps,
        e.kl,
        100.0 * e.agree_top1,
        e.examples,
        outcome.run_dir.display()
    );
    finished(outcome.interrupted, &received)
}

fn plot(runs: &[PathBuf], out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let curves = runs
        .iter()
        .map(|run| bit_train::Curves::read(run))
        .collect::<Result<Vec<_>, _>>()?;
    bit_train::plot(&curves, out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn init(arch: &str, head: usize, out: &Path, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let config = ResNetV2Config::named(arch, head).map_err(|e| match e {
        bit_model::Error::UnknownArchitecture(what) => format!("--arch {what}"),
        e => e.to_string(),
    })?;
    config.validate()?;
    // The random weights and the array being written are in memory at once: a head this
    // machine cannot hold is an error here, not an abort on the allocation.
    let needed = config.parameter_count().saturating_mul(4 * 2);
    if let Some(available) = bit_train::memory::available_memory()
        && needed > available
    {
        return Err(format!(
            "{arch} with a {head}-way head needs about {:.1} GiB to initialize and write; \
             {:.1} GiB is available",
            needed as f64 / f64::from(1 << 30),
            available as f64 / f64::from(1 << 30)
        )
        .into());
    }
    let device = Device::flex();
    device.seed(seed);
    config.try_init(&device)?.save_npz(out)?;
    println!(
        "wrote {} ({arch}, {head}-way head, random weights of seed {seed})",
        out.display()
    );
    Ok(())
}

fn inspect(path: &Path) -> Result<(), bit_model::Error> {
    let ckpt = NpzCheckpoint::open(path)?;
    let arch = ckpt
        .architecture()
        .map_or_else(|| "custom".to_string(), |a| a.to_string());
    println!("checkpoint:    {}", ckpt.path().display());
    println!(
        "architecture:  {arch} (block units {:?}, width factor {})",
        ckpt.block_units(),
        ckpt.width_factor()
    );
    println!(
        "input:         {} channels, NCHW in [-1, 1]",
        ckpt.in_channels()
    );
    println!("features:      {}", 2048 * ckpt.width_factor());
    match ckpt.head_size() {
        Some(n) => println!("head:          {n} classes"),
        None => println!("head:          none (load with a new head)"),
    }
    println!("arrays:        {}", ckpt.array_names().count());
    Ok(())
}
