//! `bit predict`, `bit embed`, `bit eval`, `bit fewshot` and `bit export`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bit_data::{
    DatasetName, FolderDataset, ImageDataset, ImageFiles, LoaderConfig, NonImagePolicy, Subset,
    load_train_valid,
};
use bit_device::Compute;
use bit_infer::{
    EvalResult, ExportFormat, Feed, FewShotConfig, InferenceModel, LoadOptions, Relabelled,
};
use bit_model::{Stage, WeightDType};
use bit_zoo::PretrainedDir;
use burn::tensor::Device;
use clap::{Args, ValueEnum};

use crate::{CliResult, printable};

/// Which model, where, and how to feed it.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A released model name (`bit models` lists them), an official-format .npz, a
    /// .safetensors written by `bit train`/`bit export`, a timm or Hugging Face checkpoint (a
    /// directory, model.safetensors, pytorch_model.bin) or `hf:ORG/NAME[@REVISION]`.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    models: PretrainedDir,
    /// Input resolution (default: the model's own, from its file or the catalog).
    #[arg(long)]
    resolution: Option<usize>,
    /// A label file, one class name per line in head order (default: the model's own names or
    /// the release's ImageNet label files).
    #[arg(long)]
    labels: Option<PathBuf>,
    #[command(flatten)]
    compute: Compute,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Threads decoding and resizing images.
    #[arg(long, default_value_t = 4)]
    workers: usize,
}

impl ModelArgs {
    /// The model, its device, and how to feed it (with a progress bar when `progress`).
    fn load(
        &self,
        progress: bool,
    ) -> Result<(InferenceModel, Device, Feed), Box<dyn std::error::Error>> {
        let device = self.compute.device()?;
        let options = LoadOptions {
            resolution: self.resolution,
            labels: self.labels.clone(),
            precision: self.compute.precision,
        };
        let hub = self.models.hub()?;
        let model = InferenceModel::load(&hub, &self.model, &options, &device)?;
        let feed = model
            .feed()
            .with_loader(LoaderConfig::new(self.batch).with_workers(self.workers))
            .with_progress(progress);
        Ok((model, device, feed))
    }
}

/// Arguments of `bit predict`.
#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print one JSON object per image instead of a table.
    #[arg(long)]
    json: bool,
    /// The images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn predict(args: PredictArgs) -> CliResult {
    let mut out = std::io::stdout().lock();
    // A bar only when there is more than one batch to wait for.
    let (m, device, feed) = args.model.load(args.images.len() > args.model.batch)?;
    let images = ImageFiles::new(args.images.clone())?;
    let top = bit_infer::predict(&m.model, Arc::new(images), args.top, &feed, &device)?;
    for (path, top) in args.images.iter().zip(top) {
        if args.json {
            let classes: Vec<_> = top
                .iter()
                .map(|&(c, p)| serde_json::json!({"class": c, "name": m.class_name(c), "probability": p}))
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({"image": path.display().to_string(), "top": classes})
            )?;
        } else {
            writeln!(out, "{}", printable(&path.display().to_string(), &[]))?;
            for (class, p) in top {
                let name = printable(&m.class_name(class), &[]).into_owned();
                if name == class.to_string() {
                    writeln!(out, "  {:7.3}%  {class:>5}", 100.0 * p)?;
                } else {
                    writeln!(out, "  {:7.3}%  {class:>5}  {name}", 100.0 * p)?;
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Valid,
}

/// A labelled dataset on disk.
#[derive(Args)]
pub struct DataArgs {
    /// `folder` ({datadir} holds one sub-directory per class), or a dataset `bit train` knows
    /// (cifar10, cifar100, imagenet2012, fashion_mnist, mnist; with --split).
    #[arg(long)]
    dataset: Option<String>,
    /// Where the dataset is.
    #[arg(long)]
    datadir: Option<PathBuf>,
    /// Which split of a named dataset.
    #[arg(long, value_enum)]
    split: Option<SplitArg>,
    /// Skip (with a warning) files in class folders that are not images, instead of failing.
    #[arg(long = "skip_non_images")]
    skip_non_images: bool,
}

impl DataArgs {
    fn open(
        &self,
        default_split: SplitArg,
    ) -> Result<Arc<dyn ImageDataset>, Box<dyn std::error::Error>> {
        let name = self.dataset.as_deref().ok_or("--dataset is required")?;
        let policy = NonImagePolicy::from_skip_flag(self.skip_non_images);
        let dataset = name.parse::<DatasetName>()?;
        let datadir = self
            .datadir
            .clone()
            .or_else(|| dataset.default_dir())
            .ok_or("--datadir is required for this dataset")?;
        if dataset == DatasetName::Folder {
            return Ok(Arc::new(FolderDataset::open(&datadir, policy)?));
        }
        let data = load_train_valid(dataset, &datadir, policy)?;
        Ok(match self.split.unwrap_or(default_split) {
            SplitArg::Train => data.train,
            SplitArg::Valid => data.valid,
        })
    }
}

/// Arguments of `bit embed`.
#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Image files to embed instead of a dataset.
    #[arg(long, num_args = 1.., conflicts_with = "dataset")]
    images: Vec<PathBuf>,
    /// Where to write the float32 features, shape [images, 2048 * width]; with several
    /// --layer, one file each, the layer's name before the extension (out.stage3.npy).
    #[arg(long)]
    out: PathBuf,
    /// Where to write the int64 labels of a dataset (default: beside --out, `.labels.npy`).
    #[arg(long = "labels_out")]
    labels_out: Option<PathBuf>,
    /// The representations to write, comma-separated: stem, stage1 ... stage4 (the blocks'
    /// outputs, strides 4, 4, 8, 16, 32), final (the pre-logits after the last GroupNorm+ReLU,
    /// the default). Each is globally averaged unless --maps.
    #[arg(long = "layer", value_delimiter = ',')]
    layers: Vec<Stage>,
    /// Write whole activation maps, [images, channels, height, width] (NCHW), instead of their
    /// global average: backbone features for detection or segmentation heads.
    #[arg(long)]
    maps: bool,
}

impl EmbedArgs {
    /// The file of `stage`'s features: --out itself for a single layer.
    fn out_of(&self, stage: Stage) -> PathBuf {
        if self.layers.len() <= 1 {
            return self.out.clone();
        }
        let stem = self.out.file_stem().unwrap_or_default().to_string_lossy();
        self.out.with_file_name(format!("{stem}.{stage}.npy"))
    }
}

pub fn embed(args: EmbedArgs) -> CliResult {
    let mut out = std::io::stdout().lock();
    let (m, device, feed) = args.model.load(true)?;
    let dataset: Arc<dyn ImageDataset> = if args.images.is_empty() {
        args.data.open(SplitArg::Train)?
    } else {
        Arc::new(ImageFiles::new(args.images.clone())?)
    };
    let labels = if args.layers.is_empty() && !args.maps {
        let emb = bit_infer::embed(&m.model, dataset, &feed, &device)?;
        emb.save_features(&args.out)?;
        writeln!(
            out,
            "wrote {} features of {} dims to {}",
            emb.len(),
            emb.dim,
            args.out.display()
        )?;
        emb.labels
    } else {
        let stages = match args.layers.is_empty() {
            true => vec![Stage::Final],
            false => args.layers.clone(),
        };
        let (layers, labels) =
            bit_infer::embed_stages(&m.model, dataset, &stages, args.maps, &feed, &device)?;
        for layer in &layers {
            let path = args.out_of(layer.stage);
            layer.save(&path)?;
            writeln!(
                out,
                "wrote {} {} {} of shape {:?} to {}",
                layer.len(),
                layer.stage,
                if args.maps { "maps" } else { "features" },
                layer.shape,
                path.display()
            )?;
        }
        labels
    };
    if args.images.is_empty() {
        let path = args
            .labels_out
            .unwrap_or_else(|| args.out.with_extension("labels.npy"));
        bit_infer::save_labels(&path, &labels)?;
        writeln!(out, "wrote their labels to {}", path.display())?;
    }
    Ok(())
}

/// Arguments of `bit eval`.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// A class map, `<dataset class> <head index>` per line, instead of matching the dataset's
    /// class names to the model's.
    #[arg(long = "class_map")]
    class_map: Option<PathBuf>,
    /// Evaluate only the first N images of the split.
    #[arg(long = "max_examples")]
    max_examples: Option<usize>,
    /// Also write what the network was fed and what it answered, to check another runtime
    /// (the ONNX export in onnxruntime or tract) on exactly the same tensors: DIR/inputs.npy
    /// (float32 [N, 3, R, R], NCHW, RGB in [-1, 1]), DIR/logits.npy (float32 [N, classes]),
    /// DIR/labels.npy (int64 [N], head indices).
    #[arg(long)]
    record: Option<PathBuf>,
}

pub fn eval(args: EvalArgs) -> CliResult {
    let mut out = std::io::stdout().lock();
    let (m, device, feed) = args.model.load(true)?;
    let dataset = matched_dataset(&m, &args.data, args.class_map.as_deref(), args.max_examples)?;
    let result = match &args.record {
        None => bit_infer::evaluate_dataset(&m.model, dataset, &feed, &device)?,
        Some(dir) => {
            let (result, record) =
                bit_infer::evaluate_dataset_recorded(&m.model, dataset, &feed, &device)?;
            record.save(dir)?;
            writeln!(
                out,
                "wrote the inputs, logits and labels of {} images to {}",
                record.len(),
                dir.display()
            )?;
            result
        }
    };
    writeln!(
        out,
        "{}: top-1 {:.2}%, top-5 {:.2}%, loss {:.5} on {} images at {} px",
        m.path.display(),
        100.0 * result.top1,
        100.0 * result.top5,
        result.loss,
        result.examples,
        m.resolution
    )?;
    Ok(())
}

/// `m` evaluated on the validation split of `data`, its classes matched to the model's by
/// name or by `class_map`.
fn evaluate_on(
    m: &InferenceModel,
    device: &Device,
    feed: &Feed,
    data: &DataArgs,
    class_map: Option<&Path>,
) -> Result<EvalResult, Box<dyn std::error::Error>> {
    let dataset = matched_dataset(m, data, class_map, None)?;
    Ok(bit_infer::evaluate_dataset(
        &m.model, dataset, feed, device,
    )?)
}

/// The validation split of `data` (its first `max_examples` images, if given), labelled with
/// `m`'s head indices: classes matched by name or by `class_map`.
fn matched_dataset(
    m: &InferenceModel,
    data: &DataArgs,
    class_map: Option<&Path>,
    max_examples: Option<usize>,
) -> Result<Arc<dyn ImageDataset>, Box<dyn std::error::Error>> {
    let mut dataset = data.open(SplitArg::Valid)?;
    if let Some(n) = max_examples {
        let first = (0..n.min(dataset.len())).collect();
        dataset = Arc::new(bit_data::Subset::new(dataset, first));
    }
    let head = m.model.config().head_size;
    let class_map = class_map.map(bit_infer::read_class_map).transpose()?;
    let map = bit_infer::map_classes(
        dataset.classes(),
        head,
        m.class_names.as_deref(),
        class_map.as_ref(),
    )?;
    let names = (0..head).map(|c| m.class_name(c)).collect();
    Ok(Arc::new(Relabelled::new(dataset, map, names)))
}

/// Arguments of `bit fewshot`.
#[derive(Args)]
pub struct FewshotArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A dataset `bit train` knows (cifar10, cifar100, imagenet2012, fashion_mnist, mnist,
    /// folder: {datadir}/train and {datadir}/val|validation|test, or vtab/<task>): probes are
    /// fitted on draws from its training split and scored on its validation/test split.
    #[arg(long)]
    dataset: String,
    /// Where the dataset is.
    #[arg(long)]
    datadir: Option<PathBuf>,
    #[command(flatten)]
    probes: FewShotConfig,
    /// Score on only the first N test examples.
    #[arg(long = "max_eval_examples")]
    max_eval_examples: Option<usize>,
    /// Also write the scores as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip (with a warning) files in class folders that are not images, instead of failing.
    #[arg(long = "skip_non_images")]
    skip_non_images: bool,
}

pub fn fewshot(args: FewshotArgs) -> CliResult {
    let mut out = std::io::stdout().lock();
    let name = args.dataset.parse::<DatasetName>()?;
    let datadir = args
        .datadir
        .clone()
        .or_else(|| name.default_dir())
        .ok_or("--datadir is required for this dataset")?;
    let policy = NonImagePolicy::from_skip_flag(args.skip_non_images);
    let data = load_train_valid(name, &datadir, policy)?;
    let test: Arc<dyn ImageDataset> = match args.max_eval_examples {
        Some(0) => return Err("--max_eval_examples must be at least 1".into()),
        Some(n) if n < data.valid.len() => Arc::new(Subset::new(data.valid, (0..n).collect())),
        _ => data.valid,
    };
    let (m, device, feed) = args.model.load(true)?;
    let config = &args.probes;
    let examples = test.len();
    let scores = bit_infer::fewshot(&m.model, data.train, test, config, &feed, &device)?;
    writeln!(
        out,
        "{}: few-shot linear probes on {} ({examples} test images at {} px, l2 {}, {} features)",
        m.path.display(),
        args.dataset,
        m.resolution,
        config.l2,
        config.representation
    )?;
    for s in &scores {
        let each: Vec<String> = s
            .accuracies
            .iter()
            .map(|a| format!("{:.2}", 100.0 * a))
            .collect();
        writeln!(
            out,
            "{:>3}-shot: {:6.2}% ± {:.2} ({} seeds: {})",
            s.shots,
            100.0 * s.mean(),
            100.0 * s.std(),
            s.accuracies.len(),
            each.join(", ")
        )?;
    }
    if let Some(path) = &args.out {
        let json = serde_json::json!({
            "model": m.path,
            "dataset": args.dataset,
            "test_examples": examples,
            "resolution": m.resolution,
            "l2": config.l2,
            "representation": config.representation.to_string(),
            "scores": scores.iter().map(|s| serde_json::json!({
                "shots": s.shots,
                "accuracies": s.accuracies,
                "mean": s.mean(),
                "std": s.std(),
            })).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&json)? + "\n";
        bit_hub::write_atomically(path, |file| file.write_all(text.as_bytes()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

/// Arguments of `bit export`.
#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The output: `.npz` (the official layout) or `.safetensors` (with resolution and class
    /// names in its metadata); a directory for `--format timm|hf`.
    #[arg(long)]
    out: PathBuf,
    /// npz, safetensors, onnx (opset 17, dynamic batch, class names and resolution in its
    /// metadata), timm (a directory timm's `create_model` loads: model.safetensors and
    /// config.json) or hf (a directory transformers' `from_pretrained` loads). Default: from
    /// the extension of --out.
    #[arg(long)]
    format: Option<ExportFormat>,
    /// What the weights are stored as: f32, f16 / bf16 (half the size; every loader here
    /// reads them back as f32, timm and transformers as their own model's type) or int8
    /// (`--quantize int8`: a quarter, per-channel scales; .safetensors only).
    #[arg(long, alias = "quantize", default_value_t = WeightDType::F32)]
    dtype: WeightDType,
    /// Evaluate the exported file against the original on this dataset's validation split and
    /// print the top-1 change (`folder` or a named dataset, with --datadir and --class_map as
    /// `bit eval` takes them).
    #[arg(long = "check_on", alias = "check-on")]
    check_on: Option<String>,
    /// Where the --check_on dataset is.
    #[arg(long, requires = "check_on")]
    datadir: Option<PathBuf>,
    /// A class map for --check_on, as `bit eval --class_map`.
    #[arg(long = "class_map", requires = "check_on")]
    class_map: Option<PathBuf>,
}

pub fn export(args: ExportArgs) -> CliResult {
    let mut out = std::io::stdout().lock();
    let (m, device, feed) = args.model.load(false)?;
    m.export(&args.out, args.format, args.dtype)?;
    writeln!(out, "wrote {}", args.out.display())?;
    let Some(dataset) = &args.check_on else {
        return Ok(());
    };
    // The exported file, loaded as any user would load it (its own resolution and names).
    let exported = ModelArgs {
        model: args.out.to_string_lossy().into_owned(),
        labels: None,
        ..args.model.clone()
    };
    let (again, _, _) = exported.load(false)?;
    let data = DataArgs {
        dataset: Some(dataset.clone()),
        datadir: args.datadir.clone(),
        split: None,
        skip_non_images: false,
    };
    let class_map = args.class_map.as_deref();
    let before = evaluate_on(&m, &device, &feed, &data, class_map)?;
    let after = evaluate_on(&again, &device, &feed, &data, class_map)?;
    writeln!(
        out,
        "top-1 on {} images: {:.2}% as f32, {:.2}% as exported ({}, {:+.2} points); loss {:.5} \
         -> {:.5}",
        before.examples,
        100.0 * before.top1,
        100.0 * after.top1,
        args.dtype,
        100.0 * (after.top1 - before.top1),
        before.loss,
        after.loss
    )?;
    Ok(())
}
