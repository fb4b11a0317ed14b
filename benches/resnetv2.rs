//! Criterion benchmarks of BiT ResNetV2 on every backend compiled in that has a device here
//! (`cargo bench`; `--features wgpu` etc. add GPU backends), so that backends compare in one
//! report. A GPU backend on a software adapter (Mesa's lavapipe) is labelled `wgpu(software)`:
//! it measures the CPU running compute shaders, not a GPU, and runs the small cases only (R50x1
//! takes minutes per step there). Every timed iteration ends with the device synchronized,
//! since GPU backends return before their kernels finish.
//!
//! - `model/*`: inference and one SGD training step for the tiny golden model at 64 px and
//!   R50x1 at 128 px, batch 8;
//! - `components/*`: forward+backward of each fused operation of `bit_model::ops` (the
//!   weight-standardized 3x3 and 1x1 convolutions, GroupNorm + ReLU, the root pool) against the
//!   same computation composed of Burn's ops, on an R50x1 block-2 activation (batch 8, 16x16,
//!   channels-last).

use std::time::Duration;

use bit_device::compiled_devices;
use bit_model::backend::{AdapterKind, GpuBackend, gpu_adapters};
use bit_model::ops::{self, reference};
use bit_model::{GroupNormReluConfig, ROOT_POOL, ResNetV2Config, StdConv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

fn images(batch: usize, size: usize, device: &Device) -> Tensor<4> {
    Tensor::random(
        [batch, 3, size, size],
        Distribution::Uniform(-1.0, 1.0),
        device,
    )
}

/// Every backend with a device here, labelled; software GPU adapters say so.
fn backends() -> Vec<(String, Device, bool)> {
    compiled_devices()
        .into_iter()
        .map(|(name, device)| {
            // The device `compiled_devices` picked is the backend's first adapter.
            let software = GpuBackend::from_name(name)
                .and_then(|backend| gpu_adapters(backend).into_iter().next())
                .is_some_and(|adapter| adapter.kind == AdapterKind::Software);
            let label = match software {
                true => format!("{name}(software)"),
                false => name.to_string(),
            };
            (label, device, software)
        })
        .collect()
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
    for (backend, device, software) in backends() {
        for (name, config, size) in &cases {
            if software && *size > 64 {
                eprintln!("{backend}/{name}: skipped on a software adapter (minutes per step)");
                continue;
            }
            let batch = 8;
            let model = config.init(&device);
            group.bench_function(format!("{backend}/{name}/infer/b{batch}"), |b| {
                b.iter_batched(
                    || images(batch, *size, &device),
                    |x| {
                        let logits = model.forward(x);
                        // `into_data` alone reads lazily: wait for the device.
                        device.sync().expect("the device ran the forward pass");
                        logits
                    },
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
                        ad.sync().expect("the device ran the step");
                        model = Some(m);
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// A fused operation against the same computation composed of Burn's ops, forward and
/// backward, on one backend.
fn fused_vs_composed(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    device: &Device,
    input: impl Fn() -> Tensor<4>,
    fused: impl Fn(Tensor<4>) -> Tensor<4>,
    composed: impl Fn(Tensor<4>) -> Tensor<4>,
) {
    let run = |f: &dyn Fn(Tensor<4>) -> Tensor<4>, x: Tensor<4>| {
        let grads = f(x).sum().backward();
        device.sync().expect("the device ran the step");
        grads
    };
    group.bench_function(format!("{name}/fused"), |b| {
        b.iter_batched(&input, |x| run(&fused, x), BatchSize::SmallInput)
    });
    group.bench_function(format!("{name}/composed"), |b| {
        b.iter_batched(&input, |x| run(&composed, x), BatchSize::SmallInput)
    });
}

fn bench_components(c: &mut Criterion) {
    let mut group = c.benchmark_group("components");
    group.sample_size(20);
    for (backend, device, _) in backends() {
        let ad = device.autodiff();
        // An R50x1 block-2 activation at 128 px, batch 8, channels-last.
        let activation = |channels| {
            let ad = ad.clone();
            move || {
                Tensor::<4>::random([8, 16, 16, channels], Distribution::Normal(0.0, 1.0), &ad)
                    .require_grad()
            }
        };
        for (kernel, padding) in [(3, 1), (1, 0)] {
            let conv = StdConv2dConfig::new([128, 128], kernel)
                .with_padding(padding)
                .init(&ad);
            let weight = conv.weight.val();
            let options = conv.options();
            fused_vs_composed(
                &mut group,
                &format!("{backend}/std_conv{kernel}x{kernel}_fwd_bwd"),
                &ad,
                activation(128),
                |x| ops::std_conv2d(x, weight.clone(), options),
                |x| reference::std_conv2d(x, weight.clone(), options),
            );
        }
        let gn = GroupNormReluConfig::new(256).init(&ad);
        let (gamma, beta, options) = (gn.gamma.val(), gn.beta.val(), gn.options());
        fused_vs_composed(
            &mut group,
            &format!("{backend}/group_norm_relu_fwd_bwd"),
            &ad,
            activation(256),
            |x| ops::group_norm_relu(x, gamma.clone(), beta.clone(), options),
            |x| reference::group_norm_relu(x, gamma.clone(), beta.clone(), options),
        );
        let pool = ROOT_POOL;
        fused_vs_composed(
            &mut group,
            &format!("{backend}/root_pool_fwd_bwd"),
            &ad,
            activation(64),
            |x| ops::zero_pad_max_pool2d(x, pool),
            |x| reference::zero_pad_max_pool2d(x, pool),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_model, bench_components);
criterion_main!(benches);
