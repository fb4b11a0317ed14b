//! `bit`: the command-line face of big-transfer-rs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use bit_model::NpzCheckpoint;
use bit_train::{TrainConfig, TrainOptions};
use clap::{Args, Parser, Subcommand};

mod infer;

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
    Train(Box<TrainArgs>),
    /// Distill a teacher into a student by function matching (Beyer et al. 2022): both see the
    /// same inception-crop + mixup view, the student matches the teacher's softmax (KL at
    /// --temperature) with Adam, global-norm clipping and warmup + cosine; resumable like train.
    Distill(Box<bit_train::DistillConfig>),
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
}

/// The reference's flags, spelled as in `bit_pytorch/train.py`, plus a few explicit extras.
#[derive(Args)]
struct TrainArgs {
    /// Name of this run: logs and checkpoints go to {logdir}/{name}/; running the same name
    /// again resumes it.
    #[arg(long)]
    name: String,
    /// A BiT model name (BiT-M-R50x1, BiT-S-R101x3, BiT-M-R152x2-ILSVRC2012, ...), read from
    /// {bit_pretrained_dir}/{model}.npz if it is there, else downloaded into the cache
    /// ($BIT_HOME); or a path to any BiT-format .npz.
    #[arg(long)]
    model: String,
    /// Where to write the run's logs, metrics and checkpoints.
    #[arg(long)]
    logdir: PathBuf,
    /// Where the pre-trained {model}.npz files are.
    #[arg(long = "bit_pretrained_dir", default_value = ".")]
    bit_pretrained_dir: PathBuf,
    /// cifar10, cifar100, imagenet2012 ({datadir}/train, {datadir}/val), folder ({datadir}/train
    /// and {datadir}/val|validation|test, one sub-directory per class), fashion_mnist, mnist.
    #[arg(long)]
    dataset: String,
    /// Where the dataset is: CIFAR is downloaded there if absent; fashion_mnist defaults to
    /// Debian's /usr/share/datasets/fashion-mnist.
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// Few-shot: train on this many examples per class.
    #[arg(long = "examples_per_class")]
    examples_per_class: Option<usize>,
    /// Seed of the few-shot draw (same seed, same examples, on any machine).
    #[arg(long = "examples_per_class_seed", default_value_t = 0)]
    examples_per_class_seed: u64,
    /// Global batch size.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Split each batch into this many micro-batches (gradients accumulated), to fit memory.
    #[arg(long = "batch_split", default_value_t = 1)]
    batch_split: usize,
    /// Peak learning rate (for the global batch; not rescaled when --batch changes).
    #[arg(long = "base_lr", default_value_t = 0.003)]
    base_lr: f64,
    /// Evaluate and checkpoint every this many steps (always at the end).
    #[arg(long = "eval_every")]
    eval_every: Option<usize>,
    /// Threads decoding and augmenting images.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Do not write checkpoints or the final model.
    #[arg(long = "no-save")]
    no_save: bool,
    /// Devices: cpu, or with a GPU build cuda / wgpu / vulkan (every GPU of that backend) or a
    /// list such as cuda:0,cuda:1.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Seed of shuffling, augmentation and mixup.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train for this many steps instead of the HyperRule's (same warmup/decay proportions).
    #[arg(long)]
    steps: Option<usize>,
    /// Resolution instead of the HyperRule's, as PRECROP,CROP (e.g. 40,32).
    #[arg(long, value_parser = parse_resolution)]
    resolution: Option<(usize, usize)>,
    /// Evaluate on only the first N validation examples.
    #[arg(long = "max_eval_examples")]
    max_eval_examples: Option<usize>,
    /// Skip (with a warning) files in class folders that are not images, instead of failing.
    #[arg(long = "skip_non_images")]
    skip_non_images: bool,
}

fn parse_resolution(s: &str) -> Result<(usize, usize), String> {
    let (pre, crop) = s.split_once(',').ok_or("expected PRECROP,CROP")?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("`{v}`: {e}"));
    Ok((parse(pre)?, parse(crop)?))
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
        Command::Train(args) => train(*args),
        Command::Distill(config) => distill(&config),
        Command::Models { filter, urls } => infer::models(&filter, urls),
        Command::Download { models } => infer::download(&models),
        Command::Predict(args) => infer::predict(args),
        Command::Embed(args) => infer::embed(*args),
        Command::Eval(args) => infer::eval(*args),
        Command::Export(args) => infer::export(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`bit models | head`): nothing left to say.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--datadir`, which only Fashion-MNIST may leave out (Debian installs it in a known place).
fn datadir_for(dataset: &str, datadir: Option<PathBuf>) -> Result<PathBuf, &'static str> {
    match (datadir, dataset) {
        (Some(dir), _) => Ok(dir),
        (None, "fashion_mnist") => Ok(PathBuf::from(bit_data::DEBIAN_FASHION_MNIST_DIR)),
        (None, _) => Err("--datadir is required for this dataset"),
    }
}

fn train(args: TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    let datadir = datadir_for(&args.dataset, args.datadir)?;
    let mut config = TrainConfig::new(args.name, args.model, args.dataset, datadir, args.logdir);
    config.bit_pretrained_dir = args.bit_pretrained_dir;
    config.examples_per_class = args.examples_per_class;
    config.examples_per_class_seed = args.examples_per_class_seed;
    config.batch = args.batch;
    config.batch_split = args.batch_split;
    config.base_lr = args.base_lr;
    config.eval_every = args.eval_every;
    config.workers = args.workers;
    config.save = !args.no_save;
    config.device = args.device;
    config.seed = args.seed;
    config.steps = args.steps;
    config.resolution = args.resolution;
    config.max_eval_examples = args.max_eval_examples;
    config.skip_non_images = args.skip_non_images;

    let outcome = bit_train::train(&config, &stop_on_ctrl_c()?)?;
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
    Ok(())
}

/// Run options whose stop flag the first Ctrl-C sets (the run then evaluates, checkpoints and
/// ends); a second Ctrl-C exits at once.
fn stop_on_ctrl_c() -> Result<TrainOptions, ctrlc::Error> {
    let options = TrainOptions::default();
    let stop = options.stop.clone();
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("stopping after this step (Ctrl-C again to abort)");
    })?;
    Ok(options)
}

fn distill(config: &bit_train::DistillConfig) -> Result<(), Box<dyn std::error::Error>> {
    let outcome = bit_train::distill(config, &stop_on_ctrl_c()?)?;
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
