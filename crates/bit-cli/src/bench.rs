//! `bit bench` (speed and memory of a model on a device) and `bit selftest` (this build's
//! numerics on a device against reference vectors): what a user runs first on a new GPU.

use std::path::{Path, PathBuf};

use bit_model::backend::{device_from_name, devices_from_spec};
use bit_model::{Precision, ResNetV2};
use bit_train::DataParallel;
use bit_train::throughput::{Measurement, Workload, measure_inference, measure_training};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Args, ValueEnum};
use npyz::npz::NpzArchive;

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// What `bit bench` times.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The forward pass.
    Infer,
    /// A whole SGD step: forward, cross-entropy, backward, update.
    Train,
}

/// Arguments of `bit bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// `tiny` or a BiT architecture (R50x1 ... R152x4); weights are random.
    #[arg(long, default_value = "R50x1")]
    arch: String,
    /// Square input resolution.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// What to time.
    #[arg(long, value_enum, default_value_t = Mode::Train)]
    mode: Mode,
    /// Timed iterations (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed iterations first (GPU kernels are compiled there).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Device(s), as for `bit train --device` (several: data-parallel training).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Training: micro-batches per step.
    #[arg(long = "batch_split", default_value_t = 1)]
    batch_split: usize,
    /// What the network computes in: f32, or on a GPU device bf16 / f16 (mixed precision).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

pub fn bench(args: &BenchArgs) -> CliResult {
    let work = Workload {
        model: crate::architecture(&args.arch, 10)?,
        size: args.size,
        batch: args.batch,
        iters: args.iters.max(1),
        warmup: args.warmup,
        batch_split: args.batch_split,
        precision: args.precision,
    };
    if args.batch_split == 0 || !args.batch.is_multiple_of(args.batch_split) {
        return Err("--batch must be a multiple of --batch_split (at least 1)".into());
    }
    let devices = devices_from_spec(&args.device)?;
    for device in &devices {
        args.precision.check(device)?;
    }
    let m = match args.mode {
        Mode::Infer => measure_inference(&work, &devices[0]),
        Mode::Train => measure_training(&work, DataParallel::new(devices)?),
    };
    println!("{}", line(args, &m));
    Ok(())
}

/// One line a script can grep: what ran, img/s, and memory.
fn line(args: &BenchArgs, m: &Measurement) -> String {
    let mib = |b: Option<u64>| b.map_or("n/a".to_string(), |b| format!("{} MiB", b >> 20));
    let s = &m.seconds;
    format!(
        "{} @{} {} {} batch {} on {}: {:.2} img/s (median {:.4} s/step of {}, min {:.4}, max {:.4}); \
         device memory reserved {}; host peak RSS {}",
        args.arch,
        args.size,
        args.precision,
        match args.mode {
            Mode::Infer => "infer",
            Mode::Train => "train",
        },
        args.batch,
        args.device,
        m.images_per_second,
        s[s.len() / 2],
        s.len(),
        s[0],
        s[s.len() - 1],
        mib(m.device_reserved_bytes),
        mib(m.host_peak_bytes),
    )
}

/// Arguments of `bit selftest`.
#[derive(Args)]
pub struct SelftestArgs {
    /// Directory of reference vectors: `{case}.weights.npz` (BiT checkpoint layout) and
    /// `{case}.case.npz` (input, labels, logits, features, loss before and after one SGD step,
    /// head and root kernels after it), as the reference PyTorch code wrote them
    /// (`scripts/make_golden.py` makes them).
    #[arg(long)]
    golden: PathBuf,
    /// Cases to check.
    #[arg(long, value_delimiter = ',', default_value = "tiny")]
    cases: Vec<String>,
    /// The device to check.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// `|got - want| <= atol + rtol |want|` everywhere, or the worst element.
fn within(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) -> Check {
    if got.len() != want.len() {
        return Err(format!(
            "{what}: {} values, the reference has {}",
            got.len(),
            want.len()
        ));
    }
    let mut worst = (0, f32::NEG_INFINITY);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = if g.is_finite() {
            (g - w).abs() - (atol + rtol * w.abs())
        } else {
            f32::INFINITY
        };
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let (i, excess) = worst;
    let report = format!(
        "{what}: worst element {i}: {} vs reference {} (atol {atol}, rtol {rtol})",
        got[i], want[i]
    );
    if excess <= 0.0 {
        Ok(report)
    } else {
        Err(report)
    }
}

struct Case {
    arrays: NpzArchive<std::io::BufReader<std::fs::File>>,
    path: PathBuf,
}

impl Case {
    fn array<T: npyz::Deserialize>(&mut self, key: &str) -> Result<(Vec<usize>, Vec<T>), String> {
        let npy = self
            .arrays
            .by_name(key)
            .map_err(|e| format!("{}: {e}", self.path.display()))?
            .ok_or_else(|| format!("{} has no `{key}`", self.path.display()))?;
        let shape = npy.shape().iter().map(|&d| d as usize).collect();
        let values = npy
            .into_vec()
            .map_err(|e| format!("{}: `{key}`: {e}", self.path.display()))?;
        Ok((shape, values))
    }

    fn floats(&mut self, key: &str) -> Result<Vec<f32>, String> {
        Ok(self.array::<f32>(key)?.1)
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap_or_default()
}

/// One comparison: what it found, `Err` when out of tolerance.
type Check = Result<String, String>;

/// Forward (logits, features) and one SGD step of one case: every comparison. Tolerances are those of the project's own parity tests
/// (`crates/bit-model/tests/golden.rs` says why).
fn check_case(
    dir: &Path,
    name: &str,
    device: &Device,
) -> Result<Vec<Check>, Box<dyn std::error::Error>> {
    let weights = dir.join(format!("{name}.weights.npz"));
    let path = dir.join(format!("{name}.case.npz"));
    let arrays = NpzArchive::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut case = Case { arrays, path };
    let (shape, input) = case.array::<f32>("input")?;
    let (label_shape, labels) = case.array::<i64>("labels")?;
    let (loss_after_tol, root_tol) = if name == "tiny" {
        (1e-5, 1e-6)
    } else {
        (2e-3, 3e-4)
    };

    let model = ResNetV2::from_npz(&weights, device)?;
    let x = Tensor::<4>::from_data(TensorData::new(input.clone(), shape.clone()), device);
    let mut lines = vec![
        within(
            "logits",
            &values(model.forward(x.clone())),
            &case.floats("logits")?,
            1e-4,
            1e-4,
        ),
        within(
            "features",
            &values(model.features(x)),
            &case.floats("features")?,
            1e-4,
            1e-4,
        ),
    ];

    let ad = device.clone().autodiff();
    let model = ResNetV2::from_npz(&weights, &ad)?;
    let x = Tensor::<4>::from_data(TensorData::new(input, shape), &ad);
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, label_shape), &ad);
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let loss = ce.forward(model.forward(x.clone()), y.clone());
    lines.push(within(
        "loss before the step",
        &values(loss.clone()),
        &case.floats("loss_before")?,
        1e-4,
        1e-4,
    ));
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = bit_train::bit_optimizer().step(0.003, model, grads);
    let loss_after = values(ce.forward(model.valid().forward(x), y));
    lines.push(within(
        "loss after one SGD step",
        &loss_after,
        &case.floats("loss_after")?,
        loss_after_tol,
        0.0,
    ));
    let root = values(model.root.conv.weight.val().permute([2, 3, 1, 0]));
    lines.push(within(
        "root kernel after the step",
        &root,
        &case.floats("root_kernel_after")?,
        root_tol,
        0.0,
    ));
    Ok(lines)
}

pub fn selftest(args: &SelftestArgs) -> CliResult {
    let device = device_from_name(&args.device)?;
    let mut failed = Vec::new();
    for name in &args.cases {
        let lines = check_case(&args.golden, name, &device)?;
        let passed = lines.iter().all(Result::is_ok);
        for line in lines {
            match line {
                Ok(l) => println!("ok    {name} on {}: {l}", args.device),
                Err(l) => println!("FAIL  {name} on {}: {l}", args.device),
            }
        }
        if !passed {
            failed.push(name.clone());
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "{} differ from the reference on {}",
            failed.join(", "),
            args.device
        )
        .into()),
    }
}
