//! `distill()` on real Fashion-MNIST (Debian's `dataset-fashion-mnist`): exact resume, the
//! exported student, and the errors a user meets first.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use bit_model::{ResNetV2, ResNetV2Config};
use bit_testkit::parameter_values;
use bit_train::{DistillConfig, TrainError, TrainOptions, distill};
use burn::tensor::Device;

fn scratch(name: &str) -> PathBuf {
    let dir = bit_testkit::scratch_root("bit-train-distill").join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tiny 10-way teacher with random weights (its head too), stored like `bit train`'s output
/// at 32 px; one per directory, so every run of a test distills the same teacher.
fn teacher(dir: &Path) -> PathBuf {
    let path = dir.join("teacher.safetensors");
    if path.is_file() {
        return path;
    }
    ResNetV2Config::new([1, 1, 1, 1], 1, 10)
        .init(&Device::flex())
        .save_safetensors_with_metadata(&path, &bit_infer::metadata(32, None))
        .unwrap();
    path
}

fn config(dir: &Path, name: &str) -> DistillConfig {
    let mut c = DistillConfig::new(
        name,
        teacher(dir).to_string_lossy(),
        bit_testkit::golden_file("tiny.weights.npz").to_string_lossy(),
        "fashion_mnist",
        bit_data::DEBIAN_FASHION_MNIST_DIR,
        dir.join("logs"),
    );
    c.run.batch = 8;
    c.run.batch_split = 2.into();
    c.steps = 8;
    c.run.eval_every = Some(2);
    c.run.max_eval_examples = Some(32);
    c.run.workers = 1;
    c
}

fn quiet() -> TrainOptions {
    TrainOptions {
        quiet: true,
        ..Default::default()
    }
}

#[test]
fn a_stopped_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = scratch("resume");
    let straight = config(&dir, "straight");
    let outcome = distill(&straight, &quiet()).unwrap();
    assert_eq!((outcome.steps, outcome.interrupted), (8, false));
    assert_eq!(outcome.eval.examples, 32);
    assert!(outcome.eval.kl.is_finite() && outcome.eval.student_top.is_some());
    assert_eq!(outcome.model.config().head_size, 10);

    // Stop the second run once it has a checkpoint (wherever the loop then is), and resume.
    let resumed = config(&dir, "resumed");
    let options = quiet();
    let (stop, pointer) = (
        options.stop.clone(),
        resumed.run_dir().join("checkpoint.json"),
    );
    let watcher = std::thread::spawn(move || {
        while !pointer.is_file() {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let first = distill(&resumed, &options).unwrap();
    watcher.join().unwrap();
    assert!(
        first.interrupted && first.steps < 8,
        "{} steps",
        first.steps
    );
    let second = distill(&resumed, &quiet()).unwrap();
    assert_eq!((second.steps, second.interrupted), (8, false));
    let log = std::fs::read_to_string(resumed.run_dir().join("train.log")).unwrap();
    assert!(
        log.contains(&format!("Resumed at step {}", first.steps)),
        "{log}"
    );

    // The same student, to the bit (in memory and as exported), and the same evaluation.
    assert!(
        parameter_values(&second.model) == parameter_values(&outcome.model),
        "students differ"
    );
    let exported = |c: &DistillConfig| {
        let path = c.run_dir().join("model.safetensors");
        parameter_values(
            &ResNetV2::from_safetensors_with_metadata(&path, &Device::flex())
                .unwrap()
                .0,
        )
    };
    assert!(
        exported(&straight) == exported(&resumed),
        "exported students differ"
    );
    assert!(exported(&straight) == parameter_values(&outcome.model));
    assert_eq!(second.eval, outcome.eval);
    // The metrics carry the agreement of every evaluation.
    let metrics = std::fs::read_to_string(straight.run_dir().join("metrics.jsonl")).unwrap();
    let evals = metrics
        .lines()
        .filter(|l| l.contains("\"agree_top1\""))
        .count();
    assert_eq!(evals, 4, "steps 2, 4, 6 and the end");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unlabelled_images_distill_and_report_agreement_only() {
    let dir = scratch("unlabelled");
    let data = dir.join("data");
    for (split, n) in [("train/any/depth", 12), ("val", 4)] {
        std::fs::create_dir_all(data.join(split)).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(30, 26, |x, y| {
                image::Rgb([(x * 8) as u8, (y * 9) as u8, (i * 20) as u8])
            });
            img.save(data.join(split).join(format!("{i}.png"))).unwrap();
        }
    }
    let mut c = config(&dir, "unlabelled");
    c.run.dataset = "images".into();
    c.run.datadir = Some(data.clone());
    c.steps = 2;
    c.run.eval_every = None;
    let outcome = distill(&c, &quiet()).unwrap();
    assert_eq!((outcome.steps, outcome.eval.examples), (2, 4));
    assert!(outcome.eval.kl.is_finite());
    assert_eq!(
        (outcome.eval.student_top, outcome.eval.teacher_top),
        (None, None)
    );
    // Fine-tuning needs labels: `bit train` refuses the same data up front.
    let train = bit_train::TrainConfig::new("t", "x.npz", "images", data, dir.join("logs"));
    assert!(matches!(
        train.validate(),
        Err(TrainError::InvalidConfig(m)) if m.contains("bit distill")
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_student_with_another_head_is_refused_when_its_head_is_kept() {
    let dir = scratch("heads");
    let student = dir.join("student7.npz");
    ResNetV2Config::new([1, 1, 1, 1], 1, 7)
        .init(&Device::flex())
        .save_npz(&student)
        .unwrap();
    let mut c = config(&dir, "heads");
    c.student = student.to_string_lossy().into();
    c.keep_student_head = true;
    match distill(&c, &quiet()).unwrap_err() {
        err @ TrainError::HeadMismatch {
            student_head: 7,
            teacher_head: 10,
            ..
        } => assert!(err.to_string().contains("--keep_student_head"), "{err}"),
        other => panic!("expected HeadMismatch, got {other:?}"),
    }
    // Without keeping it, the student starts with a new 10-way head.
    c.keep_student_head = false;
    c.steps = 1;
    c.run.eval_every = None;
    assert_eq!(distill(&c, &quiet()).unwrap().model.config().head_size, 10);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_teacher_that_does_not_load_and_data_without_images_are_clear_errors() {
    let dir = scratch("errors");
    let mut c = config(&dir, "no-teacher");
    let broken = dir.join("teacher.npz");
    std::fs::write(&broken, b"not a zip archive").unwrap();
    c.teacher = broken.to_string_lossy().into();
    match distill(&c, &quiet()).unwrap_err() {
        err @ TrainError::Teacher { .. } => {
            let text = err.to_string();
            assert!(
                text.starts_with("teacher `") && text.contains("teacher.npz"),
                "{text}"
            );
        }
        other => panic!("expected Teacher, got {other:?}"),
    }
    // A folder dataset whose class folders hold no images.
    let data = dir.join("data");
    for split in ["train/a", "train/b", "val/a", "val/b"] {
        std::fs::create_dir_all(data.join(split)).unwrap();
    }
    let mut c = config(&dir, "no-images");
    c.run.dataset = "folder".into();
    c.run.datadir = Some(data);
    let err = distill(&c, &quiet()).unwrap_err();
    assert!(matches!(err, TrainError::Data(_)), "{err:?}");
    // Settings are checked before anything is read.
    let mut c = config(&dir, "bad");
    c.temperature = 0.0;
    assert!(matches!(
        distill(&c, &quiet()).unwrap_err(),
        TrainError::InvalidConfig(m) if m.contains("--temperature")
    ));
    std::fs::remove_dir_all(&dir).ok();
}
