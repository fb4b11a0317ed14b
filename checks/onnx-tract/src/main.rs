//! `onnx-tract-check MODEL.onnx INPUTS.npy LOGITS.npy [--labels LABELS.npy] [--tolerance T]
//! [--batch B]`: runs the ONNX graph in tract on `INPUTS` (float32 `[N, 3, R, R]`, what `bit
//! eval --record DIR` wrote as `DIR/inputs.npy`, or a golden case's input) with a symbolic
//! batch, and fails unless every logit is within `T` (default 1e-4) of `LOGITS` (float32
//! `[N, classes]`) and the top-1 class of every image is the same (up to ties within `T`).
//! The first image runs alone and the rest in batches of `B` (default 16): one graph, two batch
//! sizes. With `--labels` (int64 `[N]`), prints both top-1 accuracies.

use std::path::PathBuf;
use std::process::ExitCode;

use tract_onnx::prelude::*;

struct Args {
    model: PathBuf,
    inputs: PathBuf,
    logits: PathBuf,
    labels: Option<PathBuf>,
    tolerance: f32,
    batch: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let (mut labels, mut tolerance, mut batch) = (None, 1e-4, 16);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--labels" => labels = Some(PathBuf::from(value("--labels")?)),
            "--tolerance" => {
                tolerance = value("--tolerance")?
                    .parse()
                    .map_err(|e| format!("--tolerance: {e}"))?
            }
            "--batch" => {
                batch = value("--batch")?
                    .parse()
                    .map_err(|e| format!("--batch: {e}"))?
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [model, inputs, logits]: [PathBuf; 3] = positional
        .try_into()
        .map_err(|_| "usage: onnx-tract-check MODEL.onnx INPUTS.npy LOGITS.npy [--labels LABELS.npy] [--tolerance T] [--batch B]".to_string())?;
    Ok(Args {
        model,
        inputs,
        logits,
        labels,
        tolerance,
        batch: batch.max(1),
    })
}

/// The shape and values of a `.npy` file of `T`.
fn read_npy<T: npyz::Deserialize>(path: &PathBuf) -> Result<(Vec<usize>, Vec<T>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| format!("{}: {e}", path.display()))?;
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let values = npy
        .into_vec()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((shape, values))
}

/// Index of the largest value (the first of equals).
fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

fn run(args: &Args) -> Result<bool, String> {
    let (shape, inputs) = read_npy::<f32>(&args.inputs)?;
    let (logit_shape, expected) = read_npy::<f32>(&args.logits)?;
    let [n, channels, height, width]: [usize; 4] = shape
        .clone()
        .try_into()
        .map_err(|_| format!("inputs of shape {shape:?}: expected [N, 3, R, R]"))?;
    let [rows, classes]: [usize; 2] = logit_shape
        .clone()
        .try_into()
        .map_err(|_| format!("logits of shape {logit_shape:?}: expected [N, classes]"))?;
    if rows != n || n == 0 {
        return Err(format!("{n} inputs and {rows} rows of logits"));
    }
    let model = tract_onnx::onnx()
        .model_for_path(&args.model)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| format!("{}: {e:?}", args.model.display()))?;
    let image = channels * height * width;
    let mut got = Vec::with_capacity(n * classes);
    let mut start = 0;
    while start < n {
        let end = if start == 0 {
            1
        } else {
            (start + args.batch).min(n)
        };
        let x = tract_ndarray::ArrayD::from_shape_vec(
            vec![end - start, channels, height, width],
            inputs[start * image..end * image].to_vec(),
        )
        .map_err(|e| e.to_string())?;
        let out = model
            .run(tvec!(Tensor::from(x).into_tvalue()))
            .map_err(|e| format!("tract: {e:?}"))?;
        let logits = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| format!("tract output: {e:?}"))?;
        if logits.len() != (end - start) * classes {
            return Err(format!(
                "tract gave {} logits for {} images of {classes} classes",
                logits.len(),
                end - start
            ));
        }
        got.extend(logits.iter().copied());
        start = end;
    }
    let gap = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| {
            if a.is_nan() || b.is_nan() {
                f32::INFINITY
            } else {
                (a - b).abs()
            }
        })
        .fold(0.0f32, f32::max);
    // The same top-1, unless bit's two best logits are closer than the tolerance.
    let mut differ = 0;
    let mut top1 = Vec::with_capacity(n);
    for (ours, theirs) in got
        .chunks_exact(classes)
        .zip(expected.chunks_exact(classes))
    {
        let (a, b) = (argmax(ours), argmax(theirs));
        if a != b && (theirs[a] - theirs[b]).abs() > args.tolerance {
            differ += 1;
        }
        top1.push((a, b));
    }
    println!(
        "{}: {n} images in tract, logits within {gap:.2e} of {}'s (tolerance {:e}), top-1 \
         differs for {differ}",
        args.model.display(),
        args.logits.display(),
        args.tolerance
    );
    if let Some(path) = &args.labels {
        let (_, labels) = read_npy::<i64>(path)?;
        if labels.len() != n {
            return Err(format!("{} labels for {n} images", labels.len()));
        }
        let correct = |pick: fn(&(usize, usize)) -> usize| {
            top1.iter()
                .zip(&labels)
                .filter(|(p, l)| pick(p) as i64 == **l)
                .count() as f64
                * 100.0
                / n as f64
        };
        println!(
            "top-1: {:.2}% in tract, {:.2}% by the expected logits",
            correct(|p| p.0),
            correct(|p| p.1)
        );
    }
    Ok(gap <= args.tolerance && differ == 0)
}

fn main() -> ExitCode {
    match parse_args().and_then(|args| run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: the ONNX graph does not compute what bit computes");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
