//! `bit train` end to end on the real Fashion-MNIST of Debian's `dataset-fashion-mnist`,
//! starting from the golden tiny checkpoint: a run killed with SIGKILL after a checkpoint
//! resumes at that step with the schedule's learning rate, finishes, and beats chance clearly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bit_hyperrule::HyperRule;

fn golden_tiny() -> PathBuf {
    bit_testkit::golden_file("tiny.weights.npz")
}

const STEPS: usize = 40;
const K: usize = 10;
const BASE_LR: f64 = 0.003;

fn bit_train(logdir: &Path) -> Command {
    assert!(
        Path::new(bit_data::DEBIAN_FASHION_MNIST_DIR).is_dir(),
        "apt-get install dataset-fashion-mnist"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bit"));
    cmd.args(["train", "--name", "fm", "--model"])
        .arg(golden_tiny())
        .arg("--logdir")
        .arg(logdir)
        .args([
            "--dataset",
            "fashion_mnist",
            "--examples_per_class",
            &K.to_string(),
            "--batch",
            "32",
        ])
        .args([
            "--steps",
            &STEPS.to_string(),
            "--resolution",
            "40,32",
            "--eval_every",
            "5",
        ])
        .args([
            "--max_eval_examples",
            "1000",
            "--workers",
            "2",
            "--base_lr",
            &BASE_LR.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// The step of the run's checkpoint, read as a resuming run reads it.
fn checkpoint_step(run: &Path) -> Option<usize> {
    let saved = bit_train::checkpoint::find(run).ok()??;
    Some(saved.state.step)
}

/// A child process killed on every way out of the test, a failing assertion included.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn killed_run_resumes_from_its_checkpoint_and_beats_chance() {
    let logdir = bit_testkit::scratch_root("bit-cli-e2e");
    std::fs::remove_dir_all(&logdir).ok();
    let run = logdir.join("fm");

    // First run: SIGKILL once a checkpoint past step 5 exists. Progress, not a clock, decides:
    // however slow the machine, the run either checkpoints or ends.
    let mut child = KillOnDrop(bit_train(&logdir).spawn().unwrap());
    while checkpoint_step(&run).is_none_or(|s| s < 10) {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(child); // SIGKILL: no chance to clean up
    let saved = checkpoint_step(&run).unwrap();
    assert!(
        saved < STEPS && saved.is_multiple_of(5),
        "checkpoint at step {saved}"
    );
    let log_before = std::fs::read_to_string(run.join("train.log")).unwrap();

    // Second run, same command: resumes and finishes.
    let output = bit_train(&logdir).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    let resumed = &log[log_before.len()..];
    assert!(
        resumed.contains(&format!("Resumed at step {saved}")),
        "{resumed}"
    );
    let rule = HyperRule::new((28, 28), K * 10)
        .with_batch(32)
        .with_base_lr(BASE_LR)
        .with_total_steps(STEPS);
    let lr = bit_train::python_exp(rule.lr(saved).unwrap());
    let first_step = resumed.lines().find(|l| l.contains("]: loss=")).unwrap();
    assert!(
        first_step.contains(&format!("[step {saved}]: loss="))
            && first_step.ends_with(&format!("(lr={lr})")),
        "{first_step}"
    );
    assert!(
        !resumed.contains(&format!("[step {}]", saved - 1)),
        "steps before the checkpoint were redone"
    );
    assert!(resumed.contains(&format!("[step {}]: loss=", STEPS - 1)));

    // The documented log lines and files.
    for line in [
        "bit_common: TrainConfig {",
        "Using a training set with 100 images.",
        "Using a validation set with 1000 images.",
        "Fine-tuning from BiT",
        "Starting training!",
        "Validation@5 loss",
        "Validation@end loss",
        "Timings:",
        "Throughput:",
    ] {
        assert!(log.contains(line), "train.log lacks `{line}`");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        metrics
            .lines()
            .all(|l| l.starts_with('{') && l.ends_with('}'))
    );
    assert!(run.join("model.safetensors").is_file());
    assert_eq!(checkpoint_step(&run), Some(STEPS));

    // Ten balanced classes: chance is 10%; the stdout summary carries the final top-1.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let top1: f64 = stdout
        .split("top-1 ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(top1 > 25.0, "top-1 {top1}% is not clearly above chance");

    // The same command never interrupted ends with the same model: the kill cost nothing.
    let straight = logdir.join("straight");
    let uninterrupted = bit_train(&straight).output().unwrap();
    assert!(uninterrupted.status.success());
    let final_line = |run: &Path| {
        let log = std::fs::read_to_string(run.join("train.log")).unwrap();
        log.lines()
            .find_map(|l| l.split_once("Validation@end ").map(|(_, v)| v.to_string()))
            .expect("a final validation line")
    };
    assert_eq!(final_line(&straight.join("fm")), final_line(&run));
    std::fs::remove_dir_all(&logdir).ok();
}

#[test]
fn an_unavailable_release_names_its_url_and_the_manual_route() {
    let logdir = bit_testkit::scratch_root("bit-cli-missing");
    let output = Command::new(env!("CARGO_BIN_EXE_bit"))
        .args([
            "train",
            "--name",
            "x",
            "--model",
            "BiT-M-R50x1",
            "--bit_pretrained_dir",
            "/nonexistent",
            "--dataset",
            "fashion_mnist",
        ])
        .arg("--logdir")
        .arg(&logdir)
        // Offline: nothing listens on port 9.
        .env("BIT_MODELS_URL", "http://127.0.0.1:9/bit_models")
        .env("BIT_HOME", logdir.join("cache"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for part in [
        "http://127.0.0.1:9/bit_models/BiT-M-R50x1.npz",
        "--bit_pretrained_dir (/nonexistent)",
    ] {
        assert!(stderr.contains(part), "`{part}` not in {stderr}");
    }
    std::fs::remove_dir_all(&logdir).ok();
}

#[test]
fn a_signal_stops_the_run_with_its_conventional_code_and_a_rerun_resumes() {
    let logdir = bit_testkit::ScratchDir::new("train-signal");
    let mut child = KillOnDrop(bit_train(&logdir).spawn().unwrap());
    let log = logdir.join("fm").join("train.log");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("[step 2")
    {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no step 2 in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.0.wait().unwrap();
    // 128 + SIGTERM, as a shell reports a process that SIGTERM ended; the run saved first.
    assert_eq!(status.code(), Some(143));
    let stopped = checkpoint_step(&logdir.join("fm")).expect("a checkpoint of the stopped run");
    assert!(stopped < STEPS, "stopped at {stopped}");
    let out = bit_train(&logdir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("done after {STEPS} steps")),
        "{stdout}"
    );
}

#[test]
fn a_step_count_beyond_any_schedule_is_refused() {
    let logdir = bit_testkit::ScratchDir::new("train-steps");
    let out = Command::new(env!("CARGO_BIN_EXE_bit"))
        .args(["train", "--name", "long", "--model"])
        .arg(golden_tiny())
        .arg("--logdir")
        .arg(&*logdir)
        .args([
            "--dataset",
            "fashion_mnist",
            "--steps",
            "18446744073709551615",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--steps 18446744073709551615: at most"),
        "{stderr}"
    );
}
