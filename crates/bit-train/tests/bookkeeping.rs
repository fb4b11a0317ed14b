//! Step and learning-rate bookkeeping of `train()` with micro-batching, on real Fashion-MNIST
//! (Debian's `dataset-fashion-mnist`) from the golden tiny checkpoint.

use std::sync::atomic::Ordering;

use bit_data::{Batch, Preprocess};
use bit_hyperrule::HyperRule;
use bit_model::ResNetV2;
use bit_train::{
    DataParallel, EvalData, EvalResult, Export, FineTune, Objective, Run, RunLog, TrainConfig,
    TrainError, TrainOptions, TrainOutcome, bit_optimizer, checkpoint, python_exp, train,
};
use burn::module::Param;

fn config(name: &str) -> TrainConfig {
    let logdir = bit_testkit::scratch_root("bit-train-bookkeeping");
    let mut c = TrainConfig::new(
        name,
        bit_testkit::golden_file("tiny.weights.npz").to_string_lossy(),
        "fashion_mnist",
        bit_data::DEBIAN_FASHION_MNIST_DIR,
        logdir,
    );
    c.examples_per_class = Some(2);
    c.run.batch = 8;
    c.run.batch_split = 2.into();
    c.steps = Some(10);
    c.resolution = Some((36, 32));
    c.run.max_eval_examples = Some(64);
    c.run.workers = 1;
    c
}

#[test]
fn batch_split_logs_every_micro_batch_with_the_step_learning_rate() {
    let config = config("split");
    std::fs::remove_dir_all(config.run_dir()).ok();
    let outcome = train(
        &config,
        &TrainOptions {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((outcome.steps, outcome.interrupted), (10, false));
    let log = std::fs::read_to_string(config.run_dir().join("train.log")).unwrap();
    let rule = HyperRule::new((28, 28), 20)
        .with_batch(8)
        .with_total_steps(10);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("]: loss=")).collect();
    assert_eq!(lines.len(), 20, "two micro-batches for each of 10 steps");
    for (i, line) in lines.iter().enumerate() {
        let (step, accum) = (i / 2, i % 2 + 1);
        let want = format!("[step {step} ({accum}/2)]: loss=");
        assert!(line.contains(&want), "line {i}: {line}");
        assert!(
            line.ends_with(&format!("(lr={})", python_exp(rule.lr(step).unwrap()))),
            "{line}"
        );
    }
    // The schedule: warmup from 0, then the rule's decays.
    assert!(lines[0].ends_with("(lr=0.0e+00)"));
    assert!(log.contains("Validation@end"));

    // Running the finished run again resumes at its end: nothing more to train.
    let again = train(
        &config,
        &TrainOptions {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(again.steps, 10);
    let log = std::fs::read_to_string(config.run_dir().join("train.log")).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("]: loss=")).count(), 20);
    assert!(log.contains("Resumed at step 10"));

    // Resuming with other data is refused, not silently mixed.
    let mut other = config.clone();
    other.examples_per_class = Some(3);
    assert!(matches!(
        train(
            &other,
            &TrainOptions {
                quiet: true,
                ..Default::default()
            }
        ),
        Err(TrainError::ResumeMismatch { .. })
    ));
    std::fs::remove_dir_all(config.run_dir()).ok();
}

#[test]
fn a_stop_request_ends_with_evaluation_and_checkpoint() {
    let mut config = config("stopped");
    config.run.batch_split = 1.into();
    std::fs::remove_dir_all(config.run_dir()).ok();
    let options = TrainOptions {
        quiet: true,
        ..Default::default()
    };
    options.stop.store(true, Ordering::SeqCst);
    let outcome = train(&config, &options).unwrap();
    assert!(outcome.interrupted);
    assert_eq!(outcome.steps, 0);
    assert!(config.run_dir().join("checkpoint.json").is_file());
    std::fs::remove_dir_all(config.run_dir()).ok();
}

#[test]
fn bad_settings_are_refused_before_any_work() {
    let mut c = config("bad");
    c.run.batch = 10;
    c.run.batch_split = 4.into();
    assert!(matches!(
        train(&c, &TrainOptions::default()),
        Err(TrainError::InvalidConfig(_))
    ));
    let mut c = config("bad");
    c.run.batch = 99_999_999_999;
    c.run.batch_split = bit_train::BatchSplit::Auto;
    assert!(matches!(
        train(&c, &TrainOptions::default()),
        Err(TrainError::InvalidConfig(m)) if m.contains("at most 65536")
    ));
    let mut c = config("bad");
    c.resolution = Some((8, 7));
    assert!(matches!(
        train(&c, &TrainOptions::default()),
        Err(TrainError::InvalidConfig(m)) if m.contains("between 8")
    ));
    // Refused when the data is read (its classes are counted), before anything is sized by K.
    let mut c = config("bad-k");
    c.examples_per_class = Some(999_999_999);
    assert!(matches!(
        train(
            &c,
            &TrainOptions {
                quiet: true,
                ..Default::default()
            }
        ),
        Err(TrainError::Data(
            bit_data::DataError::NotEnoughExamples { .. }
        ))
    ));
    std::fs::remove_dir_all(c.run_dir()).ok();
    let mut c = config("bad");
    c.run.max_eval_examples = Some(0);
    assert!(matches!(
        train(&c, &TrainOptions::default()),
        Err(TrainError::InvalidConfig(_))
    ));
    let mut c = config("bad");
    c.run.workers = 100_000;
    assert!(matches!(
        train(&c, &TrainOptions::default()),
        Err(TrainError::InvalidConfig(_))
    ));
    let mut c = config("bad");
    c.resolution = Some((100_000, 100_000));
    assert!(matches!(
        train(&c, &TrainOptions::default()),
        Err(TrainError::InvalidConfig(_))
    ));
    let mut c = config("bad");
    c.run.dataset = "svhn".into();
    assert!(matches!(
        train(&c, &TrainOptions::default()),
        Err(TrainError::Data(bit_data::DataError::UnknownDataset(_)))
    ));
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoint() {
    let mut config = config("diverging");
    config.run.batch_split = 1.into();
    config.run.eval_every = Some(1);
    // Step 0 trains at lr 0 (warmup) and is checkpointed; then the update overflows float32
    // and the weights become infinite. (At lr 1e30 the loss only grows to ~1e29: the
    // normalisation statistics are accumulated in f64 and stay finite.)
    config.base_lr = 1e38;
    std::fs::remove_dir_all(config.run_dir()).ok();
    let err = train(
        &config,
        &TrainOptions {
            quiet: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    match &err {
        TrainError::NonFiniteLoss { step, loss } => {
            assert!(*step >= 1 && !loss.is_finite(), "{err}")
        }
        other => panic!("expected NonFiniteLoss, got {other:?}"),
    }
    assert!(err.to_string().contains("--base_lr"), "{err}");
    assert!(
        config.run_dir().join("checkpoint.json").is_file(),
        "the last good checkpoint stays"
    );
    // The diverged weights were never checkpointed: what a rerun resumes is finite.
    let saved = checkpoint::find(&config.run_dir()).unwrap().unwrap();
    let model = saved.model(&burn::tensor::Device::flex()).unwrap();
    assert!(model.non_finite_parameters().is_empty());
    std::fs::remove_dir_all(config.run_dir()).ok();
}

#[test]
fn a_checkpoint_with_non_finite_weights_is_refused_on_resume() {
    let config = config("poisoned");
    std::fs::remove_dir_all(config.run_dir()).ok();
    let quiet = TrainOptions {
        quiet: true,
        ..Default::default()
    };
    let mut short = config.clone();
    short.steps = Some(1);
    let outcome = train(&short, &quiet).unwrap();
    // Overwrite the run's checkpoint with NaN weights, as an earlier version could leave it.
    let saved = checkpoint::find(&config.run_dir()).unwrap().unwrap();
    let mut model = outcome.model;
    let bias = model.head.fc.bias.take().unwrap().val();
    model.head.fc.bias = Some(Param::from_tensor(bias.full_like(f32::NAN)));
    checkpoint::save(&config.run_dir(), &model, &bit_optimizer(), &saved.state).unwrap();
    match train(&short, &quiet) {
        Err(TrainError::NonFiniteCheckpoint { path, .. }) => {
            assert!(path.starts_with(config.run_dir()), "{}", path.display())
        }
        other => panic!("expected NonFiniteCheckpoint, got {other:?}"),
    }
    std::fs::remove_dir_all(config.run_dir()).ok();
}

/// A fresh one-step run called `name`: its settings, quiet options and outcome.
fn one_step(name: &str) -> (TrainConfig, TrainOptions, TrainOutcome) {
    let mut short = config(name);
    std::fs::remove_dir_all(short.run_dir()).ok();
    short.steps = Some(1);
    let quiet = TrainOptions {
        quiet: true,
        ..Default::default()
    };
    let outcome = train(&short, &quiet).unwrap();
    (short, quiet, outcome)
}

#[test]
fn resaving_a_step_never_leaves_the_pointer_without_a_checkpoint() {
    let (short, quiet, outcome) = one_step("resave");
    let run = short.run_dir();
    let first = checkpoint::find(&run).unwrap().unwrap();
    // Saving the same step again (a rerun of a finished run, Ctrl-C during an evaluation) goes
    // to a directory of its own; the pointer moves only once it is complete.
    let optim = bit_optimizer();
    let second_dir = checkpoint::save(&run, &outcome.model, &optim, &first.state).unwrap();
    assert_ne!(first.dir, second_dir);
    assert!(!first.dir.exists(), "the replaced checkpoint is removed");
    let second = checkpoint::find(&run).unwrap().unwrap();
    assert_eq!((second.dir.clone(), second.state.step), (second_dir, 1));

    assert_eq!(train(&short, &quiet).unwrap().steps, 1);
    std::fs::remove_dir_all(&run).ok();
}

/// A checkpoint state no run writes (a damaged or edited `state.json`) is refused, naming the
/// field, before anything resumes from it; so is a checkpoint past the end of the schedule.
#[test]
fn impossible_checkpoint_states_are_refused_by_field() {
    let (short, quiet, outcome) = one_step("impossible-state");
    let run = short.run_dir();
    let saved = checkpoint::find(&run).unwrap().unwrap();
    let optim = bit_optimizer();
    let mut cases: Vec<(checkpoint::TrainState, &str)> = Vec::new();
    let mut state = saved.state.clone();
    state.batch_split = Some(0);
    cases.push((state, "`batch_split` Some(0)"));
    let mut state = saved.state.clone();
    state.batch_split = Some(3); // does not divide the batch of 8
    cases.push((state, "`batch_split` Some(3)"));
    let mut state = saved.state.clone();
    state.next_batch = 1 << 63;
    cases.push((state, "`next_batch` 9223372036854775808"));
    let mut state = saved.state.clone();
    state.step = 1_000_000_000_000;
    cases.push((state, "`step` 1000000000000"));
    let mut state = saved.state.clone();
    (state.step, state.next_batch) = (5, 10);
    cases.push((state, "5 steps done, past this schedule's 1"));
    for (state, named) in cases {
        checkpoint::save(&run, &outcome.model, &optim, &state).unwrap();
        match train(&short, &quiet) {
            Err(e @ TrainError::ResumeMismatch { .. }) => {
                assert!(e.to_string().contains(named), "{e}")
            }
            other => panic!(
                "{named}: expected ResumeMismatch, got {:?}",
                other.map(|o| o.steps)
            ),
        }
    }
    std::fs::remove_dir_all(&run).ok();
}

/// A checkpoint written before the split was recorded resumes only on the split its stream
/// position implies, named; `auto` could probe another one and misalign the data stream.
#[test]
fn a_checkpoint_without_its_split_resumes_only_on_the_split_it_implies() {
    let (mut short, quiet, outcome) = one_step("legacy-split");
    let run = short.run_dir();
    let saved = checkpoint::find(&run).unwrap().unwrap();
    assert_eq!(
        (
            saved.state.step,
            saved.state.next_batch,
            saved.state.batch_split
        ),
        (1, 2, Some(2))
    );
    let mut legacy = saved.state.clone();
    legacy.batch_split = None;
    checkpoint::save(&run, &outcome.model, &bit_optimizer(), &legacy).unwrap();
    for (setting, says) in [
        (bit_train::BatchSplit::Auto, "--batch_split auto:"),
        (4.into(), "--batch_split 4:"),
    ] {
        short.run.batch_split = setting;
        match train(&short, &quiet) {
            Err(TrainError::InvalidConfig(m)) => {
                assert!(
                    m.contains(says) && m.contains("pass --batch_split 2"),
                    "{m}"
                )
            }
            other => panic!(
                "{setting}: expected a refusal, got {:?}",
                other.map(|o| o.steps)
            ),
        }
    }
    short.run.batch_split = 2.into();
    assert_eq!(train(&short, &quiet).unwrap().steps, 1);
    std::fs::remove_dir_all(&run).ok();
}

/// Fine-tuning with a bug: its backward panics at step 2, in this file.
struct Buggy(FineTune);

impl Objective for Buggy {
    type Eval = EvalResult;

    fn preprocess(&self) -> Preprocess {
        self.0.preprocess()
    }

    fn backward(
        &mut self,
        parallel: &mut DataParallel,
        batch: &Batch,
        step: usize,
        scale: f32,
    ) -> bit_train::Result<f32> {
        assert!(step < 2, "a bug in this objective at step {step}");
        self.0.backward(parallel, batch, step, scale)
    }

    fn evaluate(&mut self, model: &ResNetV2, valid: &EvalData) -> bit_train::Result<EvalResult> {
        self.0.evaluate(model, valid)
    }

    fn eval_loss(eval: &EvalResult) -> f64 {
        FineTune::eval_loss(eval)
    }

    fn log_eval(eval: &EvalResult, at: &str, log: &mut RunLog) {
        FineTune::log_eval(eval, at, log)
    }

    fn export(&self) -> Export {
        self.0.export()
    }
}

/// Only a panic after which a device no longer answers is a device failure ("rerun once the
/// device is back"); a bug is reported as one, with its message, after the last checkpoint.
#[test]
fn a_panic_outside_the_backends_is_an_internal_error_not_a_device_failure() {
    let mut config = config("buggy");
    std::fs::remove_dir_all(config.run_dir()).ok();
    config.run.eval_every = Some(1);
    let options = TrainOptions {
        quiet: true,
        ..Default::default()
    };
    let mut run = Run::open(&config.run, &options, &config).unwrap();
    let data = run.load_data(Some((2, 0))).unwrap();
    let classes = data.classes().to_vec();
    let golden = bit_testkit::golden_file("tiny.weights.npz");
    let start = run
        .start(&data, bit_optimizer(), |device, _| {
            Ok(ResNetV2::from_npz_with_zero_head(
                &golden,
                classes.len(),
                device,
            )?)
        })
        .unwrap();
    let mut rule = HyperRule::new((28, 28), data.train.len())
        .with_batch(config.run.batch)
        .with_total_steps(10);
    (rule.precrop, rule.crop) = (36, 32);
    let mut buggy = Buggy(FineTune::new(rule.clone(), 0, run.main_device(), classes).unwrap());
    match run.fit(start, &mut buggy, data, &rule, None) {
        Err(e @ TrainError::Internal { step: 2, .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("a bug in this objective at step 2")
                    && message.contains("not a device failure"),
                "{message}"
            );
        }
        other => panic!(
            "expected Internal at step 2, got {:?}",
            other.map(|o| o.steps)
        ),
    }
    let saved = checkpoint::find(&config.run_dir()).unwrap().unwrap();
    assert_eq!(
        saved.state.step, 2,
        "the checkpoint written just before the panic is intact"
    );
    std::fs::remove_dir_all(config.run_dir()).ok();
}

/// A bit flipped in either tensor file of a checkpoint is an error naming the file, not a
/// resume with silently different weights or momentum; the intact checkpoint resumes.
#[test]
fn a_damaged_checkpoint_file_is_refused_naming_it() {
    let (short, quiet, _) = one_step("damaged");
    let run = short.run_dir();
    let saved = checkpoint::find(&run).unwrap().unwrap();
    for file in ["model.bpk", "optim.bpk"] {
        let path = saved.dir.join(file);
        let intact = std::fs::read(&path).unwrap();
        let mut flipped = intact.clone();
        let last = flipped.len() - 3; // in the tensor data, which every reader takes as is
        flipped[last] ^= 0x10;
        std::fs::write(&path, flipped).unwrap();
        match train(&short, &quiet) {
            Err(e @ TrainError::Damaged { .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}")
            }
            other => panic!("{file}: expected Damaged, got {:?}", other.map(|o| o.steps)),
        }
        std::fs::write(&path, intact).unwrap();
    }
    assert_eq!(train(&short, &quiet).unwrap().steps, 1);
    std::fs::remove_dir_all(&run).ok();
}

/// A pointer that leads outside the run's own checkpoints is refused before anything is read.
#[test]
fn a_checkpoint_pointer_cannot_lead_outside_the_run() {
    let run = one_step("confined").0.run_dir();
    let saved = checkpoint::find(&run).unwrap().unwrap();
    // A copy of the real checkpoint outside the run, and a link to it inside.
    let outside = run.parent().unwrap().join("confined-outside");
    std::fs::remove_dir_all(&outside).ok();
    std::fs::create_dir_all(&outside).unwrap();
    for entry in std::fs::read_dir(&saved.dir).unwrap().flatten() {
        std::fs::copy(entry.path(), outside.join(entry.file_name())).unwrap();
    }
    std::os::unix::fs::symlink(&outside, run.join("checkpoints/linked")).unwrap();
    let escapes = [
        "../confined-outside".to_string(),
        outside.display().to_string(),
        "checkpoints/../../confined-outside".to_string(),
        "checkpoints/linked".to_string(),
        "checkpoints/".to_string(),
    ];
    for dir in escapes {
        std::fs::write(
            run.join("checkpoint.json"),
            serde_json::json!({ "dir": dir }).to_string(),
        )
        .unwrap();
        match checkpoint::find(&run) {
            Err(TrainError::ForeignCheckpoint { dir: named, .. }) => assert_eq!(named, dir),
            other => panic!(
                "`{dir}` was followed: {:?}",
                other.map(|s| s.map(|s| s.dir))
            ),
        }
    }
    std::fs::remove_dir_all(&run).ok();
    std::fs::remove_dir_all(&outside).ok();
}

#[test]
fn a_second_process_on_the_same_run_is_turned_away() {
    let config = config("locked");
    std::fs::remove_dir_all(config.run_dir()).ok();
    // What another `bit train` on this --logdir/--name holds while it runs.
    let held = checkpoint::lock(&config.run_dir()).unwrap();
    let err = train(&config, &TrainOptions::default()).unwrap_err();
    match &err {
        TrainError::RunInUse { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
        other => panic!("expected RunInUse, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains(&format!("PID {}", std::process::id())),
        "{err}"
    );
    drop(held);
    std::fs::remove_dir_all(config.run_dir()).ok();
}

/// `root/{train,val}/<class>/<i>.png` of solid colours, and the config to train on them.
fn folder_run(name: &str) -> (TrainConfig, std::path::PathBuf) {
    let root = bit_testkit::scratch_root("bit-train-folder").join(name);
    std::fs::remove_dir_all(&root).ok();
    for split in ["train", "val"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..2 {
                image::RgbImage::from_pixel(20, 20, image::Rgb([c as u8 * 200, i * 50, 9]))
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
    let mut c = config(name);
    c.run.dataset = "folder".into();
    c.run.datadir = Some(root.clone());
    c.examples_per_class = None;
    c.steps = Some(1);
    c.run.batch = 4;
    c.run.batch_split = 1.into();
    c.resolution = Some((24, 16));
    (c, root)
}

#[test]
fn skipped_files_are_logged_and_a_broken_validation_image_fails_before_training() {
    let (mut config, root) = folder_run("skips");
    std::fs::write(root.join("train/a/README.txt"), "not an image").unwrap();
    config.run.skip_non_images = true;
    std::fs::remove_dir_all(config.run_dir()).ok();
    let quiet = TrainOptions {
        quiet: true,
        ..Default::default()
    };
    train(&config, &quiet).unwrap();
    let log = std::fs::read_to_string(config.run_dir().join("train.log")).unwrap();
    assert!(log.contains("README.txt (not an image)"), "{log}");

    // A zero-byte validation image: found before the first step, not after the last.
    std::fs::write(root.join("val/b/1.png"), b"").unwrap();
    let mut broken = config.clone();
    broken.run.name = "broken-val".into();
    std::fs::remove_dir_all(broken.run_dir()).ok();
    let err = train(&broken, &quiet).unwrap_err();
    assert!(
        matches!(&err, TrainError::Data(bit_data::DataError::Decode { path, .. }) if path.ends_with("val/b/1.png")),
        "{err:?}"
    );
    let log = std::fs::read_to_string(broken.run_dir().join("train.log")).unwrap();
    assert!(!log.contains("]: loss="), "no step was trained");
    std::fs::remove_dir_all(&root).ok();
    std::fs::remove_dir_all(config.run_dir()).ok();
    std::fs::remove_dir_all(broken.run_dir()).ok();
}
