//! `bit fewshot` on the real Fashion-MNIST of Debian's `dataset-fashion-mnist`, with the
//! golden tiny network's random features: the probes learn far above chance, the draws are
//! seeded (a rerun writes the same scores), and impossible requests fail with a message.

use std::path::Path;
use std::process::{Command, Output};

use bit_testkit::{ScratchDir, golden_file, success_stdout};

fn fewshot(args: &[&str]) -> Output {
    assert!(
        Path::new(bit_data::DEBIAN_FASHION_MNIST_DIR).is_dir(),
        "apt-get install dataset-fashion-mnist"
    );
    let tiny = golden_file("tiny.weights.npz");
    Command::new(env!("CARGO_BIN_EXE_bit"))
        .args(["fewshot", "--model"])
        .arg(&tiny)
        .args(["--dataset", "fashion_mnist", "--resolution", "32"])
        .args([
            "--max_eval_examples",
            "400",
            "--batch",
            "50",
            "--workers",
            "2",
        ])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn probes_on_real_images_learn_and_are_seeded() {
    let dir = ScratchDir::new("fewshot-cli");
    let json = dir.join("scores.json");
    let out = success_stdout(
        "bit fewshot",
        fewshot(&[
            "--shots",
            "1,5",
            "--seeds",
            "2",
            "--out",
            json.to_str().unwrap(),
        ]),
    );
    assert!(out.contains("400 test images at 32 px, l2 1024"), "{out}");
    assert!(
        out.contains("  1-shot:") && out.contains("  5-shot:"),
        "{out}"
    );
    let scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = scores["scores"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let accuracies = row["accuracies"].as_array().unwrap();
        assert_eq!(accuracies.len(), 2, "{row}");
        // Ten classes: chance is 10 %. Linear probes on a random network's features of 5
        // images per class measured 50-60 % here; 25 % leaves room for other draws.
        let mean = row["mean"].as_f64().unwrap();
        let floor = if row["shots"] == 5 { 0.25 } else { 0.15 };
        assert!(mean > floor, "{row}");
    }
    // The same draws and the same numbers on a rerun.
    let again = dir.join("again.json");
    success_stdout(
        "bit fewshot",
        fewshot(&[
            "--shots",
            "1,5",
            "--seeds",
            "2",
            "--out",
            again.to_str().unwrap(),
        ]),
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(again["scores"], scores["scores"]);
}

#[test]
fn impossible_draws_and_settings_are_refused_with_a_reason() {
    let cases: [(&[&str], &str); 3] = [
        (&["--shots", "0"], "at least 1"),
        // Fashion-MNIST has 6000 training images per class.
        (&["--shots", "6001"], "6001"),
        (&["--l2", "-1"], "non-negative"),
    ];
    for (args, reason) in cases {
        let output = fewshot(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_training_run_probes_its_features_every_n_steps() {
    let logdir = ScratchDir::new("fewshot-train");
    let output = Command::new(env!("CARGO_BIN_EXE_bit"))
        .args(["train", "--name", "probed", "--model"])
        .arg(golden_file("tiny.weights.npz"))
        .arg("--logdir")
        .arg(&*logdir)
        .args(["--dataset", "fashion_mnist", "--examples_per_class", "8"])
        .args(["--batch", "16", "--steps", "4", "--resolution", "40,32"])
        .args([
            "--eval_every",
            "4",
            "--max_eval_examples",
            "200",
            "--workers",
            "2",
        ])
        .args(["--fewshot_every", "2", "--fewshot_shots", "1,3"])
        .output()
        .unwrap();
    let log = success_stdout("bit train", &output);
    assert!(log.contains("done after 4 steps"), "{log}");
    let run = logdir.join("probed");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let probes: Vec<serde_json::Value> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == "fewshot")
        .collect();
    // After step 2 and at the end (step 4 is the end: the loop does not probe it twice).
    let steps: Vec<&str> = probes.iter().map(|r| r["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["2", "end"], "{metrics}");
    for probe in &probes {
        for shots in ["1", "3"] {
            let accuracy = probe["shots"][shots].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&accuracy), "{probe}");
        }
    }
    let curves = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(curves.contains("few-shot linear probe top-1 (3-shot)"));
    let train_log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(
        train_log.contains("Few-shot linear probes@2: 1-shot"),
        "{train_log}"
    );
}

#[test]
fn a_training_run_refuses_probes_larger_than_its_classes_before_training() {
    let logdir = ScratchDir::new("fewshot-train-too-many");
    let output = Command::new(env!("CARGO_BIN_EXE_bit"))
        .args(["train", "--name", "probed", "--model"])
        .arg(golden_file("tiny.weights.npz"))
        .arg("--logdir")
        .arg(&*logdir)
        .args(["--dataset", "fashion_mnist", "--examples_per_class", "4"])
        .args(["--batch", "16", "--steps", "4", "--resolution", "40,32"])
        .args(["--fewshot_every", "2", "--fewshot_shots", "5"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("5") && stderr.contains("4"), "{stderr}");
    let log = std::fs::read_to_string(logdir.join("probed").join("train.log")).unwrap_or_default();
    assert!(!log.contains("[step 0"), "trained before refusing: {log}");
}
