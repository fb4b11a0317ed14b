//! The bookkeeping of an optimizer step on the golden tiny model: micro-batching and data
//! parallelism give the update of one big batch, and a checkpoint continues training exactly.

use std::path::PathBuf;

use bit_device::devices_from_spec;
use bit_model::{ResNetV2, ResNetV2Config};
use bit_train::checkpoint::{self, TrainState};
use bit_train::{DataParallel, Devices, Targets, bit_optimizer};
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

fn tiny_weights() -> PathBuf {
    bit_testkit::golden_file("tiny.weights.npz")
}

fn batch(device: &Device, n: usize) -> (Tensor<4>, Tensor<1, Int>) {
    device.seed(5);
    let x = Tensor::<4>::random([n, 3, 64, 64], Distribution::Uniform(-1.0, 1.0), device);
    let y = Tensor::<1, Int>::from_data(
        TensorData::new((0..n as i64).map(|i| i % 10).collect(), [n]),
        device,
    );
    (x, y)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

/// The root kernel, one 3x3 kernel of block 4 and the head: every depth of the model.
fn params(model: &ResNetV2) -> Vec<f32> {
    let mut all = values(model.root.conv.weight.val());
    all.extend(values(model.body[3].units[0].conv2.weight.val()));
    all.extend(values(model.head.fc.weight.val()));
    all
}

/// Two trained weights agree to 1e-5 relative, and their gap is float32 summation noise next
/// to the update itself (1e-4 of it: a wrong weighting or a lost shard is ~1e-1).
fn assert_same_update(what: &str, a: &[f32], b: &[f32], before: &[f32]) {
    let (weights, step) = (
        bit_testkit::max_relative_gap(a, b),
        relative_gap(a, b, before),
    );
    assert!(
        weights <= 1e-5 && step < 1e-4,
        "{what}: {weights} of the weights, {step} of the step"
    );
}

/// Max |a - b| relative to max |b - before|: how far apart two updates are, compared to the
/// update itself.
fn relative_gap(a: &[f32], b: &[f32], before: &[f32]) -> f32 {
    let gap = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let step = b
        .iter()
        .zip(before)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(step > 0.0, "the step changed nothing");
    gap / step
}

/// `steps` SGD steps, each over its own batch of 8 split into `split` micro-batches, on
/// `devices`; the main model's parameters after them. Every replica must hold exactly the
/// main model's weights after every step.
fn train(devices: &str, split: usize, lambda: Option<f32>, steps: u64) -> Vec<f32> {
    train_on(
        Devices::new(devices_from_spec(devices).unwrap()).unwrap(),
        split,
        lambda,
        steps,
    )
}

fn train_on(devices: Devices, split: usize, lambda: Option<f32>, steps: u64) -> Vec<f32> {
    let main = devices.main().clone();
    let model = ResNetV2::from_npz(tiny_weights(), &main).unwrap();
    let mut parallel = DataParallel::new(devices, model, bit_optimizer());
    for s in 0..steps {
        let (x, y) = batch(&main, 8);
        let x = x * (1.0 + s as f32);
        let partners = y.clone().flip([0]);
        let micro = 8 / split;
        for m in 0..split {
            let at = m * micro;
            let targets = Targets {
                labels: y.clone().narrow(0, at, micro),
                mixed: lambda.map(|l| (partners.clone().narrow(0, at, micro), l)),
            };
            let x = x.clone().narrow(0, at, micro);
            let loss = parallel.backward(x, &targets, 1.0 / split as f32);
            assert!(loss.is_finite());
        }
        let grads = parallel.all_reduce();
        parallel.step(0.003, grads);
        for r in 1..parallel.len() {
            let replica = parallel.replica(r).expect("one replica per device");
            assert_eq!(
                params(replica),
                params(parallel.model()),
                "replica {r} after step {s}"
            );
        }
    }
    params(parallel.model())
}

fn before() -> Vec<f32> {
    params(&ResNetV2::from_npz(tiny_weights(), &Device::flex()).unwrap())
}

#[test]
fn batch_split_gives_the_update_of_one_big_batch() {
    let whole = train("cpu", 1, None, 1);
    let before = before();
    for split in [2, 4, 8] {
        let split_run = train("cpu", split, None, 1);
        assert_same_update(&format!("batch_split {split}"), &split_run, &whole, &before);
    }
    let mixed = train("cpu", 1, Some(0.7), 1);
    assert_same_update("mixup", &train("cpu", 4, Some(0.7), 1), &mixed, &before);
    assert!(
        relative_gap(&mixed, &whole, &before) > 1e-2,
        "mixup changes the update"
    );
}

#[test]
fn replicas_that_stay_put_give_the_update_of_one_device() {
    let before = before();
    // Two steps: the second runs on the weights the first copied to every replica, and the
    // main device's momentum.
    let one = train("cpu", 1, None, 2);
    for devices in ["cpu,cpu", "cpu,cpu,cpu"] {
        // 8 examples over 3 devices: shards of 2, 3 and 3, weighted by size.
        assert_same_update(devices, &train(devices, 1, None, 2), &one, &before);
    }
    let one = train("cpu", 2, Some(0.3), 2);
    let three = train("cpu,cpu,cpu", 2, Some(0.3), 2);
    assert_same_update("3 devices, split 2, mixup", &three, &one, &before);
}

#[test]
fn gradient_checkpointing_gives_the_same_update() {
    let before = before();
    let plain = train("cpu,cpu", 2, Some(0.3), 2);
    let devices = devices_from_spec("cpu,cpu").unwrap();
    let devices = Devices::new(devices).unwrap().with_gradient_checkpointing();
    // The recomputed GroupNorm+ReLU outputs are the very values the forward made.
    let recomputed = train_on(devices, 2, Some(0.3), 2);
    assert_same_update("gradient checkpointing", &recomputed, &plain, &before);
}

/// SGD steps `steps` from `model` and `optim` on one CPU: the model and optimizer after them.
fn sgd_steps(
    model: ResNetV2,
    optim: ModuleOptimizer,
    steps: std::ops::Range<u64>,
) -> (ResNetV2, ModuleOptimizer) {
    let devices = Devices::new(devices_from_spec("cpu").unwrap()).unwrap();
    let main = devices.main().clone();
    let mut parallel = DataParallel::new(devices, model, optim);
    for s in steps {
        let (x, y) = batch(&main, 4);
        let x = x * (1.0 + s as f32);
        let targets = Targets {
            labels: y,
            mixed: None,
        };
        parallel.backward(x, &targets, 1.0);
        let grads = parallel.all_reduce();
        parallel.step(0.003, grads);
    }
    let (_, model, optim) = parallel.into_parts();
    (model, optim)
}

#[test]
fn a_checkpoint_continues_training_exactly_momentum_included() {
    let main = Device::flex().autodiff();
    let start = || ResNetV2::from_npz_with_zero_head(tiny_weights(), 10, &main).unwrap();

    let straight = params(&sgd_steps(start(), bit_optimizer(), 0..3).0);

    let (half, optim) = sgd_steps(start(), bit_optimizer(), 0..1);
    let run = bit_testkit::scratch_root("bit-train-ckpt");
    let state = TrainState {
        step: 1,
        next_batch: 1,
        seed: 0,
        model: half.config(),
        classes: (0..10).map(|c| c.to_string()).collect(),
        train_examples: 4,
        batch: 4,
        batch_split: Some(1),
        loss_scale: None,
    };
    checkpoint::save(&run, &half, &optim, &state).unwrap();
    drop((half, optim));

    let saved = checkpoint::find(&run).unwrap().expect("checkpoint written");
    assert_eq!(saved.state, state);
    let resumed = saved.model(&main).unwrap();
    let optim = saved.optimizer(bit_optimizer()).unwrap();
    let resumed = params(&sgd_steps(resumed, optim, 1..3).0);
    assert_eq!(
        resumed, straight,
        "momentum buffers must survive the checkpoint"
    );

    // Without the optimizer state the trajectory differs: the test can tell.
    let saved = checkpoint::find(&run).unwrap().unwrap();
    let amnesiac = params(&sgd_steps(saved.model(&main).unwrap(), bit_optimizer(), 1..3).0);
    assert_ne!(amnesiac, straight);
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn zero_head_model_has_the_dataset_classes() {
    let model = ResNetV2::from_npz_with_zero_head(tiny_weights(), 37, &Device::flex()).unwrap();
    assert_eq!(model.config(), ResNetV2Config::new([1, 1, 1, 1], 1, 37));
}
