//! `bit bench` (speed and memory of a model on a device) and `bit selftest` (this build's
//! numerics on a device against reference vectors): what a user runs first on a new GPU.

use std::path::{Path, PathBuf};

use bit_device::Compute;
use bit_model::{Precision, ResNetV2};
use bit_train::throughput::Bench;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Args;
use npyz::npz::NpzArchive;

use crate::CliResult;

/// `bit bench`: [`Bench::run`]'s line.
pub fn bench(args: &Bench) -> CliResult {
    println!("{}", args.run()?);
    Ok(())
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
    /// The device to check (the reference vectors are f32: `--precision` must be f32).
    #[command(flatten)]
    compute: Compute,
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
    if args.compute.precision() != Precision::F32 {
        return Err(format!(
            "bit selftest checks f32 computation against the reference's f32 vectors; \
             --precision {} is not checked here (the golden tests bound the half types)",
            args.compute.precision()
        )
        .into());
    }
    let device = args.compute.device()?;
    let mut failed = Vec::new();
    for name in &args.cases {
        let lines = check_case(&args.golden, name, &device)?;
        let passed = lines.iter().all(Result::is_ok);
        for line in lines {
            match line {
                Ok(l) => println!("ok    {name} on {}: {l}", args.compute.device),
                Err(l) => println!("FAIL  {name} on {}: {l}", args.compute.device),
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
            args.compute.device
        )
        .into()),
    }
}
