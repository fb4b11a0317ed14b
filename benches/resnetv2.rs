//! Criterion benchmarks of BiT ResNetV2 on every backend compiled in (`cargo bench`;
//! `--features wgpu` etc. add GPU backends):
//!
//! - `model/*`: inference and one SGD training step for the tiny golden model at 64 px and
//!   R50x1 at 128 px, batch 8;
//! - `components/*`: forward+backward of a plain 3x3 conv, the same conv with weight
//!   standardization, and a GroupNorm, on an R50x1 block-2 activation (batch 8, 128 channels,
//!   16x16), to show what standardization and GroupNorm cost next to the convolution.

use std::time::Duration;

use bit_model::backend::compiled_devices;
use bit_model::{ResNetV2Config, StdConv2dConfig};
use burn::nn::GroupNormConfig;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Int, Tensor};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn images(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [batch, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

fn bench_model(c: &mut Criterion) {
    let mut group = c.benchmark_group("model");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let cases = [
        ("tiny@64", ResNetV2Config::new([1, 1, 1, 1], 1, 10), 64),
        ("R50x1@128", ResNetV2Config::new([3, 4, 6, 3], 1, 10), 128),
    ];
    for (backend, device) in compiled_devices() {
        for (name, config, size) in &cases {
            let batch = 8;
            let model = config.init(&device);
            group.bench_function(format!("{backend}/{name}/infer/b{batch}"), |b| {
                b.iter_batched(
                    || images(batch, *size, &device),
                    |x| model.forward(x).into_data(),
                    BatchSize::SmallInput,
                )
            });
            let ad = device.clone().autodiff();
            let mut model = Some(config.init(&ad));
            let mut sgd = SgdConfig::new()
                .with_momentum(Some(MomentumConfig::new().with_dampening(0.0)))
                .init();
            let ce = CrossEntropyLossConfig::new().init(&ad);
            group.bench_function(format!("{backend}/{name}/train/b{batch}"), |b| {
                b.iter_batched(
                    || {
                        (
                            images(batch, *size, &ad),
                            Tensor::<1, Int>::random(
                                [batch],
                                Distribution::Uniform(0.0, 10.0),
                                &ad,
                            ),
                        )
                    },
                    |(x, y)| {
                        let m = model.take().expect("model is put back every iteration");
                        let grads =
                            GradientsParams::from_grads(ce.forward(m.forward(x), y).backward(), &m);
                        let m = sgd.step(0.003, m, grads);
                        let done = m.head.fc.weight.val().into_data();
                        model = Some(m);
                        done
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn bench_components(c: &mut Criterion) {
    let mut group = c.benchmark_group("components");
    group.sample_size(20);
    for (backend, device) in compiled_devices() {
        let ad = device.autodiff();
        let activation = || {
            Tensor::<4>::random([8, 128, 16, 16], Distribution::Normal(0.0, 1.0), &ad)
                .require_grad()
        };
        let std_conv = StdConv2dConfig::new([128, 128], 3)
            .with_padding(1)
            .init(&ad);
        let raw = std_conv.weight.val();
        group.bench_function(format!("{backend}/conv3x3_fwd_bwd"), |b| {
            b.iter_batched(
                activation,
                |x| {
                    conv2d(
                        x.clone(),
                        raw.clone(),
                        None,
                        ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
                    )
                    .sum()
                    .backward()
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("{backend}/std_conv3x3_fwd_bwd"), |b| {
            b.iter_batched(
                activation,
                |x| std_conv.forward(x).sum().backward(),
                BatchSize::SmallInput,
            )
        });
        let gn = GroupNormConfig::new(32, 128).init(&ad);
        group.bench_function(format!("{backend}/group_norm_fwd_bwd"), |b| {
            b.iter_batched(
                activation,
                |x| gn.forward(x).sum().backward(),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_model, bench_components);
criterion_main!(benches);
