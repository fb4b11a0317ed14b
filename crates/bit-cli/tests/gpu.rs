//! The `bit` command on the GPU backend (`--device wgpu`: the best adapter there is; in CI Mesa's
//! software Vulkan driver lavapipe), on real Fashion-MNIST images from Debian's
//! `dataset-fashion-mnist`, starting from the golden tiny checkpoint:
//!
//! - a training run killed with SIGKILL after a checkpoint and resumed ends with the weights of
//!   an uninterrupted GPU run, and near those of the same run on the CPU;
//! - the same run in mixed precision (`--precision f16`, loss scaling) ends near the f32 one,
//!   and precisions a device cannot compute in are refused with the reason;
//! - `bit eval --device wgpu` of that trained model gives the CPU's top-1 and top-5;
//! - `bit distill --device wgpu` runs, evaluates and exports.
//!
//! Sizes are small (lavapipe runs compute shaders on the CPU, ~100x slower than `flex`) but
//! every GPU code path of a run is taken: our CubeCL kernels forward and backward, Burn's
//! convolutions, the optimizer, checkpoints, evaluation and export. A machine without an
//! adapter fails here, naming what it found: the GPU path is never skipped silently.
#![cfg(feature = "wgpu")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bit_data::{DatasetName, NonImagePolicy, load_train_valid};
use bit_model::ResNetV2;
use bit_testkit::{KillOnDrop, ScratchDir, max_relative_gap, success_stdout};
use burn::tensor::Device;

const STEPS: usize = 6;

fn bit() -> Command {
    assert!(
        Path::new(bit_data::DEBIAN_FASHION_MNIST_DIR).is_dir(),
        "apt-get install dataset-fashion-mnist"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bit"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

fn bit_train(logdir: &Path, device: &str) -> Command {
    let mut cmd = bit();
    cmd.args(["train", "--name", "fm", "--model"])
        .arg(bit_testkit::golden_file("tiny.weights.npz"))
        .arg("--logdir")
        .arg(logdir)
        .args(["--dataset", "fashion_mnist", "--examples_per_class", "2"])
        .args(["--batch", "8", "--steps", &STEPS.to_string()])
        .args(["--resolution", "40,32", "--eval_every", "2"])
        .args(["--max_eval_examples", "64", "--workers", "2"])
        .args(["--device", device]);
    cmd
}

/// Every parameter of a saved model, in visiting order.
fn parameters(path: &Path) -> Vec<f32> {
    bit_testkit::parameter_values(&ResNetV2::from_safetensors(path, &Device::flex()).unwrap())
}

fn checkpoint_step(run: &Path) -> Option<usize> {
    Some(bit_train::checkpoint::find(run).ok()??.state.step)
}

/// 10 test images of each Fashion-MNIST class as PNGs in folders `c0`..`c9`, and a class map
/// giving each folder its head index (the class names hold a `/`).
fn test_folders(dir: &Path) -> PathBuf {
    let data = load_train_valid(
        DatasetName::FashionMnist,
        Path::new(bit_data::DEBIAN_FASHION_MNIST_DIR),
        NonImagePolicy::Error,
    )
    .unwrap();
    let mut written = [0usize; 10];
    for i in 0..data.valid.len() {
        let label = data.valid.label(i);
        if written[label] == 10 {
            continue;
        }
        let folder = dir.join("images").join(format!("c{label}"));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join(format!("{i}.png"));
        data.valid.image(i).unwrap().save(&path).unwrap();
        written[label] += 1;
    }
    let map: String = (0..10).map(|c| format!("c{c} {c}\n")).collect();
    std::fs::write(dir.join("classes.txt"), map).unwrap();
    dir.join("images")
}

#[test]
fn training_on_the_gpu_resumes_after_a_kill_and_matches_the_cpu() {
    let dir = ScratchDir::new("gpu-train");
    let (killed, straight, cpu) = (dir.join("killed"), dir.join("straight"), dir.join("cpu"));

    // Killed once its first checkpoint exists (progress decides, not a clock), then resumed.
    let run = killed.join("fm");
    // Its stderr is not read while it runs: discarded, so a full pipe cannot stall it.
    let mut child = KillOnDrop(
        bit_train(&killed, "wgpu")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while checkpoint_step(&run).is_none() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the GPU run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
    let saved = checkpoint_step(&run).unwrap();
    assert!(saved < STEPS, "checkpoint at step {saved}");
    success_stdout(
        "resumed GPU run",
        bit_train(&killed, "wgpu").output().unwrap(),
    );
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains(&format!("Resumed at step {saved}")), "{log}");
    assert_eq!(checkpoint_step(&run), Some(STEPS));

    success_stdout("GPU run", bit_train(&straight, "wgpu").output().unwrap());
    success_stdout("CPU run", bit_train(&cpu, "cpu").output().unwrap());
    let weights = |logdir: &Path| parameters(&logdir.join("fm").join("model.safetensors"));
    let (resumed, uninterrupted, on_cpu) = (weights(&killed), weights(&straight), weights(&cpu));
    // The same kernels on the same device: the kill cost nothing (float32 rounding at most).
    let gap = max_relative_gap(&resumed, &uninterrupted);
    assert!(gap <= 1e-6, "resumed vs uninterrupted GPU run: {gap:e}");
    // Another backend sums in other orders; six SGD steps keep that at float32 noise.
    let gap = max_relative_gap(&uninterrupted, &on_cpu);
    assert!(gap <= 1e-4, "GPU vs CPU run: {gap:e}");

    // Mixed precision (f16 activations, f32 weights, loss scaling) trains the same model.
    let half = dir.join("half");
    let mut f16 = bit_train(&half, "wgpu");
    success_stdout(
        "f16 GPU run",
        f16.args(["--precision", "f16"]).output().unwrap(),
    );
    let log = std::fs::read_to_string(half.join("fm").join("train.log")).unwrap();
    assert!(!log.contains("update skipped"), "{log}");
    // Measured on lavapipe: 6e-5 (the f32 runs above agree to 1e-6).
    let gap = max_relative_gap(&weights(&half), &uninterrupted);
    assert!(gap <= 1e-3, "f16 vs f32 GPU run: {gap:e}");

    // The trained model evaluated on real images: the GPU gives the CPU's answers.
    let images = test_folders(&dir);
    let eval = |device: &str| {
        let output = bit()
            .args(["eval", "--model"])
            .arg(straight.join("fm").join("model.safetensors"))
            .args(["--dataset", "folder", "--datadir"])
            .arg(&images)
            .arg("--class_map")
            .arg(dir.join("classes.txt"))
            .args(["--device", device, "--batch", "25"])
            .output()
            .unwrap();
        let stdout = success_stdout(&format!("bit eval --device {device}"), output);
        let (_, result) = stdout.split_once(": top-1 ").expect("a result line");
        let (accuracy, loss) = result.split_once(", loss ").unwrap();
        let loss: f64 = loss.split(' ').next().unwrap().parse().unwrap();
        (accuracy.to_string(), loss)
    };
    let (gpu_accuracy, gpu_loss) = eval("wgpu");
    let (cpu_accuracy, cpu_loss) = eval("cpu");
    assert_eq!(gpu_accuracy, cpu_accuracy);
    assert!(
        (gpu_loss - cpu_loss).abs() <= 1e-4 * cpu_loss.abs().max(1.0),
        "loss {gpu_loss} on the GPU, {cpu_loss} on the CPU"
    );
}

/// Half precision where the device cannot compute in it, and int8 for training, are refused
/// before anything runs, saying why.
#[test]
fn unsupported_precisions_are_refused_with_the_reason() {
    let dir = ScratchDir::new("gpu-precision");
    let mut cases = vec![
        ("cpu", "f16", "the CPU backend computes in f32"),
        ("wgpu", "int8", "int8 is for inference"),
    ];
    let gpu = bit_device::device_from_name("wgpu").unwrap_or_else(|e| panic!("{e}"));
    if !gpu.supports_dtype(burn::tensor::DType::BF16) {
        cases.push(("wgpu", "bf16", "no kernels for this type"));
    }
    for (device, precision, reason) in cases {
        let output = bit_train(&dir, device)
            .args(["--precision", precision])
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("cannot compute in {precision}")) && stderr.contains(reason),
            "{stderr}"
        );
    }
}

#[test]
fn distillation_runs_on_the_gpu() {
    let dir = ScratchDir::new("gpu-distill");
    let teacher = dir.join("teacher.safetensors");
    ResNetV2::from_npz(
        bit_testkit::golden_file("tiny.weights.npz"),
        &Device::flex(),
    )
    .unwrap()
    .save_safetensors_with_metadata(&teacher, &bit_infer::metadata(32, None))
    .unwrap();
    let output = bit()
        .args(["distill", "--name", "student", "--teacher"])
        .arg(&teacher)
        .arg("--student")
        .arg(bit_testkit::golden_file("tiny.weights.npz"))
        .arg("--logdir")
        .arg(dir.join("logs"))
        .args(["--dataset", "fashion_mnist", "--batch", "8", "--steps", "4"])
        .args([
            "--eval_every",
            "2",
            "--max_eval_examples",
            "32",
            "--workers",
            "2",
        ])
        .args(["--resolution", "32", "--device", "wgpu"])
        .output()
        .unwrap();
    success_stdout("bit distill --device wgpu", output);
    let run = dir.join("logs").join("student");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("Validation@end KL"), "{log}");
    assert_eq!(checkpoint_step(&run), Some(4));
    let student = parameters(&run.join("model.safetensors"));
    assert!(student.iter().all(|v| v.is_finite()));
}

/// Replicas on devices that round differently (the CPU, the GPU with its fused multiply-adds)
/// hold the main device's weights bit for bit after every step: the updated weights are
/// copied to them, not recomputed by each device's own optimizer, so they cannot drift apart.
#[test]
fn replicas_on_other_kinds_of_device_hold_the_main_weights_exactly() {
    use bit_train::{DataParallel, Devices, Targets, bit_optimizer};
    use burn::tensor::{Distribution, Int, Tensor};

    let devices = Devices::new(bit_device::devices_from_spec("cpu,wgpu").unwrap()).unwrap();
    let main = devices.main().clone();
    let model = bit_model::ResNetV2Config::new([1, 1, 1, 1], 1, 4).init(&main);
    let mut parallel = DataParallel::new(devices, model, bit_optimizer());
    for step in 0..3 {
        let images = Tensor::<4>::random([4, 3, 32, 32], Distribution::Default, &main);
        let labels = Tensor::<1, Int>::from_ints([0, 1, 2, 3], &main);
        let loss = parallel.backward(
            images,
            &Targets {
                labels,
                mixed: None,
            },
            1.0,
        );
        assert!(loss.is_finite());
        let grads = parallel.all_reduce();
        parallel.step(0.1, grads);
        let on_gpu = parallel.replica(1).unwrap();
        assert!(
            bit_testkit::parameter_values(on_gpu)
                == bit_testkit::parameter_values(parallel.model()),
            "step {step}: the GPU replica drifted from the main weights"
        );
    }
}
