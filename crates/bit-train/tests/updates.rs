//! The bookkeeping of an optimizer step on the golden tiny model: micro-batching and data
//! parallelism give the update of one big batch, and a checkpoint continues training exactly.

use std::path::PathBuf;

use bit_model::backend::devices_from_spec;
use bit_model::{ResNetV2, ResNetV2Config};
use bit_train::checkpoint::{self, TrainState};
use bit_train::{DataParallel, Targets, bit_optimizer};
use burn::optim::{GradientsAccumulator, ModuleOptimizer};
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

/// One SGD step over `x` split into `split` micro-batches on `devices`.
fn one_step(devices: &DataParallel, split: usize, lambda: Option<f32>) -> Vec<f32> {
    let main = devices.main().clone();
    let model = ResNetV2::from_npz(tiny_weights(), &main).unwrap();
    let (x, y) = batch(&main, 8);
    let partners = y.clone().flip([0]);
    let mut acc = GradientsAccumulator::<ResNetV2>::new();
    let micro = 8 / split;
    for m in 0..split {
        let at = m * micro;
        let targets = Targets {
            labels: y.clone().narrow(0, at, micro),
            mixed: lambda.map(|l| (partners.clone().narrow(0, at, micro), l)),
        };
        let (grads, loss) = devices.gradients(
            &model,
            x.clone().narrow(0, at, micro),
            &targets,
            1.0 / split as f32,
        );
        assert!(loss.is_finite());
        acc.accumulate(&model, grads);
    }
    let mut sgd = bit_optimizer();
    params(&sgd.step(0.003, model, acc.grads()))
}

fn before() -> Vec<f32> {
    params(&ResNetV2::from_npz(tiny_weights(), &Device::flex()).unwrap())
}

#[test]
fn batch_split_gives_the_update_of_one_big_batch() {
    let cpu = DataParallel::new(devices_from_spec("cpu").unwrap()).unwrap();
    let whole = one_step(&cpu, 1, None);
    let before = before();
    for split in [2, 4, 8] {
        let gap = relative_gap(&one_step(&cpu, split, None), &whole, &before);
        // float32 sums in another order: ~1e-6 of the step.
        assert!(gap < 1e-3, "batch_split {split}: {gap}");
    }
    let mixed = one_step(&cpu, 1, Some(0.7));
    assert!(relative_gap(&one_step(&cpu, 4, Some(0.7)), &mixed, &before) < 1e-3);
    assert!(
        relative_gap(&mixed, &whole, &before) > 1e-2,
        "mixup changes the update"
    );
}

#[test]
fn several_devices_give_the_update_of_one() {
    let one = DataParallel::new(devices_from_spec("cpu").unwrap()).unwrap();
    let three = DataParallel::new(devices_from_spec("cpu,cpu,cpu").unwrap()).unwrap();
    assert_eq!(three.len(), 3);
    let before = before();
    // 8 examples over 3 devices: shards of 2, 3 and 3, weighted by size.
    let gap = relative_gap(
        &one_step(&three, 1, None),
        &one_step(&one, 1, None),
        &before,
    );
    assert!(gap < 1e-3, "{gap}");
    let gap = relative_gap(
        &one_step(&three, 2, Some(0.3)),
        &one_step(&one, 2, Some(0.3)),
        &before,
    );
    assert!(gap < 1e-3, "{gap}");
}

fn sgd_steps(
    mut model: ResNetV2,
    optim: &mut ModuleOptimizer,
    devices: &DataParallel,
    steps: std::ops::Range<u64>,
) -> ResNetV2 {
    for s in steps {
        let main = devices.main();
        let (x, y) = batch(main, 4);
        let x = x * (1.0 + s as f32);
        let (grads, _) = devices.gradients(
            &model,
            x,
            &Targets {
                labels: y,
                mixed: None,
            },
            1.0,
        );
        model = optim.step(0.003, model, grads);
    }
    model
}

#[test]
fn a_checkpoint_continues_training_exactly_momentum_included() {
    let devices = DataParallel::new(devices_from_spec("cpu").unwrap()).unwrap();
    let main = devices.main().clone();
    let start = || ResNetV2::from_npz_with_zero_head(tiny_weights(), 10, &main).unwrap();

    let mut optim = bit_optimizer();
    let straight = params(&sgd_steps(start(), &mut optim, &devices, 0..3));

    let mut optim = bit_optimizer();
    let half = sgd_steps(start(), &mut optim, &devices, 0..1);
    let run = std::env::temp_dir().join(format!("bit-train-ckpt-{}", std::process::id()));
    let state = TrainState {
        step: 1,
        next_batch: 1,
        seed: 0,
        model: half.config(),
        classes: (0..10).map(|c| c.to_string()).collect(),
        train_examples: 4,
        batch: 4,
    };
    checkpoint::save(&run, &half, &optim, &state).unwrap();
    drop((half, optim));

    let saved = checkpoint::find(&run).unwrap().expect("checkpoint written");
    assert_eq!(saved.state, state);
    let resumed = saved.model(&main).unwrap();
    let mut optim = saved.optimizer(bit_optimizer()).unwrap();
    let resumed = params(&sgd_steps(resumed, &mut optim, &devices, 1..3));
    assert_eq!(
        resumed, straight,
        "momentum buffers must survive the checkpoint"
    );

    // Without the optimizer state the trajectory differs: the test can tell.
    let saved = checkpoint::find(&run).unwrap().unwrap();
    let amnesiac = params(&sgd_steps(
        saved.model(&main).unwrap(),
        &mut bit_optimizer(),
        &devices,
        1..3,
    ));
    assert_ne!(amnesiac, straight);
    std::fs::remove_dir_all(&run).ok();
}

#[test]
fn zero_head_model_has_the_dataset_classes() {
    let model = ResNetV2::from_npz_with_zero_head(tiny_weights(), 37, &Device::flex()).unwrap();
    assert_eq!(model.config(), ResNetV2Config::new([1, 1, 1, 1], 1, 37));
}
