//! The fused operations of `bit_model::ops` against the same computations composed of Burn's
//! own tensor ops (`ops::reference`), forward and every gradient, on shapes chosen to hit every
//! path of the kernels: batch 1 and odd batches, odd spatial sizes, stride 1 and 2, 1x1, 3x3 and
//! 7x7 kernels, channel counts that are not multiples of any SIMD or GEMM tile.
//!
//! Tolerance: relative to the largest magnitude of the reference, 1e-4. Both sides are float32
//! with different summation orders over fan-ins of up to a few thousand terms (the im2col GEMM
//! against Burn's convolution, a two-pass GroupNorm against composed mean/var), which differ by
//! ~1e-6 relative; 1e-4 leaves room for that and nothing else.

use bit_model::ops::{self, GroupNormOptions, PoolOptions, StdConvOptions, reference};
use bit_model::{ResNetV2, ResNetV2Config};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

/// Every check below runs on the CPU (`flex`) and, in a build with the `wgpu` feature, on the
/// GPU backend (the best adapter there is; lavapipe in CI): there the fused ops are this crate's
/// CubeCL kernels and the composed reference Burn's GPU ops. A machine without an adapter fails,
/// naming what it found.
macro_rules! on_every_backend {
    ($($check:ident),* $(,)?) => {
        mod flex {
            $(#[test] fn $check() { super::$check(&burn::tensor::Device::flex().autodiff()); })*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(#[test] fn $check() {
                // The best adapter there is, as `--device wgpu` picks it.
                let gpu = bit_model::backend::GpuBackend::Wgpu
                    .best_device()
                    .expect("no wgpu adapter: install a GPU driver, or mesa-vulkan-drivers");
                super::$check(&gpu.autodiff());
            })*
        }
    };
}

on_every_backend!(
    std_conv2d_forward_and_gradients_match_the_composed_ops,
    std_conv2d_add_is_the_convolution_plus_the_residual_with_its_gradient,
    group_norm_relu_forward_and_gradients_match_the_composed_ops,
    zero_pad_max_pool2d_and_its_gradient_match_the_composed_ops,
    degenerate_inputs_give_finite_results,
    a_nan_input_stays_nan_as_through_burns_relu,
    whole_model_gradients_match_the_composed_ops,
);

/// Deterministic values in [-1, 1) plus `offset`.
fn values(seed: u64, n: usize, offset: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0 + offset
        })
        .collect()
}

fn tensor<const D: usize>(device: &Device, seed: u64, shape: [usize; D], offset: f32) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(seed, n, offset), shape), device).require_grad()
}

fn data<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

/// max |a - b| / max |b| <= tol, and everything finite.
fn assert_rel(what: &str, a: Vec<f32>, b: Vec<f32>, tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let (i, err) = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold((0, 0f32), |w, e| if e.1 > w.1 { e } else { w });
    assert!(
        err <= tol * scale,
        "{what}: element {i} is {} vs {} (relative error {:e})",
        a[i],
        b[i],
        err / scale
    );
}

/// One convolution to test: input `[batch, height, width, c_in]`, `c_out` square `kernel`s.
#[derive(Debug)]
struct Conv {
    batch: usize,
    height: usize,
    width: usize,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

const fn conv(shape: [usize; 8]) -> Conv {
    let [batch, height, width, c_in, c_out, kernel, stride, padding] = shape;
    Conv {
        batch,
        height,
        width,
        c_in,
        c_out,
        kernel,
        stride,
        padding,
    }
}

/// Every convolution shape BiT has, at odd sizes.
const CONVS: [Conv; 7] = [
    conv([2, 19, 17, 3, 11, 7, 2, 3]), // the root, odd size
    conv([1, 9, 9, 13, 13, 3, 1, 1]),  // 3x3, batch 1
    conv([3, 8, 7, 10, 19, 3, 2, 1]),  // strided 3x3
    conv([3, 5, 6, 33, 17, 1, 1, 0]),  // 1x1
    conv([2, 7, 9, 24, 40, 1, 2, 0]),  // strided projection
    conv([1, 4, 4, 70, 9, 3, 1, 1]),   // more channels than a GEMM tile
    conv([5, 3, 3, 6, 5, 3, 1, 1]),    // 3x3 on a 3x3 map: every tap touches padding
];

fn std_conv2d_forward_and_gradients_match_the_composed_ops(device: &Device) {
    for (i, c) in CONVS.iter().enumerate() {
        let seed = 10 * i as u64;
        let options = StdConvOptions {
            stride: c.stride,
            padding: c.padding,
            eps: 1e-10,
        };
        let x = tensor(device, seed, [c.batch, c.height, c.width, c.c_in], 0.0);
        // Filters with a non-zero mean: the standardization's centring matters.
        let weight = tensor(device, seed + 1, [c.c_out, c.c_in, c.kernel, c.kernel], 0.3);
        let fused = ops::std_conv2d(x.clone(), weight.clone(), options);
        let composed = reference::std_conv2d(x.clone(), weight.clone(), options);
        assert_eq!(fused.dims(), composed.dims());
        let upstream = tensor(device, seed + 2, fused.dims(), 0.0).detach();
        let what = format!("{c:?}");
        assert_rel(
            &format!("{what} forward"),
            data(fused.clone()),
            data(composed.clone()),
            1e-4,
        );

        let g_fused = (fused * upstream.clone()).sum().backward();
        let g_composed = (composed * upstream).sum().backward();
        for (name, t) in [("x", &x), ("weight", &weight)].map(|(n, t)| (n, t.clone())) {
            assert_rel(
                &format!("{what} d{name}"),
                data(t.grad(&g_fused).unwrap()),
                data(t.grad(&g_composed).unwrap()),
                1e-4,
            );
        }
    }
}

fn std_conv2d_add_is_the_convolution_plus_the_residual_with_its_gradient(device: &Device) {
    let (x, weight) = (
        tensor(device, 1, [3, 5, 7, 12], 0.0),
        tensor(device, 2, [20, 12, 1, 1], 0.1),
    );
    let residual = tensor(device, 3, [3, 5, 7, 20], 0.0);
    let options = StdConvOptions {
        stride: 1,
        padding: 0,
        eps: 1e-10,
    };
    let fused = ops::std_conv2d_add(x.clone(), weight.clone(), residual.clone(), options);
    let composed = reference::std_conv2d(x.clone(), weight.clone(), options) + residual.clone();
    assert_rel("forward", data(fused.clone()), data(composed.clone()), 1e-4);
    let upstream = tensor(device, 4, [3, 5, 7, 20], 0.0).detach();
    let g_fused = (fused * upstream.clone()).sum().backward();
    let g_composed = (composed * upstream).sum().backward();
    for (name, t) in [("x", &x), ("weight", &weight), ("residual", &residual)] {
        assert_rel(
            name,
            data(t.grad(&g_fused).unwrap()),
            data(t.grad(&g_composed).unwrap()),
            1e-4,
        );
    }
}

/// (batch, height, width, channels, groups)
const NORMS: [(usize, usize, usize, usize, usize); 5] = [
    (1, 5, 7, 64, 32),
    (3, 4, 3, 96, 32),
    (2, 1, 1, 64, 32), // one position: each group is just its channels
    (5, 9, 11, 6, 3),
    (2, 3, 3, 60, 4), // 15 channels per group
];

fn group_norm_relu_forward_and_gradients_match_the_composed_ops(device: &Device) {
    for (i, &(n, h, w, c, groups)) in NORMS.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let options = GroupNormOptions { groups, eps: 1e-5 };
        // A large common offset: the variance must not cancel catastrophically.
        let x = tensor(device, seed, [n, h, w, c], 3.0);
        let gamma = tensor(device, seed + 1, [c], 1.0);
        let beta = tensor(device, seed + 2, [c], 0.0);
        let fused = ops::group_norm_relu(x.clone(), gamma.clone(), beta.clone(), options);
        let composed = reference::group_norm_relu(x.clone(), gamma.clone(), beta.clone(), options);
        let what = format!("gn {:?}", NORMS[i]);
        assert_rel(
            &format!("{what} forward"),
            data(fused.clone()),
            data(composed.clone()),
            1e-4,
        );
        let upstream = tensor(device, seed + 3, [n, h, w, c], 0.0).detach();
        let g_fused = (fused * upstream.clone()).sum().backward();
        let g_composed = (composed * upstream).sum().backward();
        let grads = |g| {
            [
                data(x.grad(g).unwrap()),
                data(gamma.grad(g).unwrap()),
                data(beta.grad(g).unwrap()),
            ]
        };
        for (name, (a, b)) in ["x", "gamma", "beta"]
            .into_iter()
            .zip(grads(&g_fused).into_iter().zip(grads(&g_composed)))
        {
            assert_rel(&format!("{what} d{name}"), a, b, 1e-4);
        }
    }
}

fn zero_pad_max_pool2d_and_its_gradient_match_the_composed_ops(device: &Device) {
    let options = PoolOptions {
        kernel: 3,
        stride: 2,
        padding: 1,
    };
    // Mostly negative inputs, so the zero border often wins the max; odd and even sizes.
    for (i, shape) in [[2, 9, 8, 5], [1, 4, 4, 3], [3, 7, 5, 16]]
        .into_iter()
        .enumerate()
    {
        let x = tensor(device, 200 + i as u64, shape, -0.6);
        let fused = ops::zero_pad_max_pool2d(x.clone(), options);
        let composed = reference::zero_pad_max_pool2d(x.clone(), options);
        assert_eq!(
            data(fused.clone()),
            data(composed.clone()),
            "{shape:?} forward"
        );
        let upstream = tensor(device, 300 + i as u64, fused.dims(), 0.0).detach();
        let g_fused = (fused * upstream.clone()).sum().backward();
        let g_composed = (composed * upstream).sum().backward();
        assert_rel(
            &format!("{shape:?} dx"),
            data(x.grad(&g_fused).unwrap()),
            data(x.grad(&g_composed).unwrap()),
            1e-6,
        );
    }
}

fn degenerate_inputs_give_finite_results(device: &Device) {
    // A group with zero variance: rstd = 1 / sqrt(eps), as the reference's epsilon gives.
    let x = Tensor::<4>::ones([2, 3, 3, 64], device).require_grad();
    let (gamma, beta) = (tensor(device, 1, [64], 1.0), tensor(device, 2, [64], 0.5));
    let options = GroupNormOptions {
        groups: 32,
        eps: 1e-5,
    };
    let y = ops::group_norm_relu(x.clone(), gamma.clone(), beta.clone(), options);
    let grads = (y.clone() * tensor(device, 3, [2, 3, 3, 64], 0.0).detach())
        .sum()
        .backward();
    for v in [
        data(y),
        data(x.grad(&grads).unwrap()),
        data(gamma.grad(&grads).unwrap()),
    ] {
        assert!(v.iter().all(|v| v.is_finite()));
    }
    // A constant kernel standardizes to zero; its gradient stays finite.
    let weight = Tensor::<4>::full([4, 3, 3, 3], 0.7, device).require_grad();
    let x = tensor(device, 4, [1, 5, 5, 3], 0.0);
    let options = StdConvOptions {
        stride: 1,
        padding: 1,
        eps: 1e-10,
    };
    let y = ops::std_conv2d(x, weight.clone(), options);
    let grads = (y.clone() * tensor(device, 5, [1, 5, 5, 4], 0.0).detach())
        .sum()
        .backward();
    assert!(data(y).iter().all(|v| *v == 0.0));
    assert!(
        data(weight.grad(&grads).unwrap())
            .iter()
            .all(|v| v.is_finite())
    );
}

/// A NaN in a group makes that group's statistics, outputs and input gradients NaN, as the
/// composed ops (Burn's ReLU keeps NaN) do: a diverged layer is never silently zeroed into a
/// finite loss. The other groups are untouched.
fn a_nan_input_stays_nan_as_through_burns_relu(device: &Device) {
    let options = GroupNormOptions {
        groups: 2,
        eps: 1e-5,
    };
    let mut x = values(1, 2 * 3 * 3 * 4, 0.0);
    x[5] = f32::NAN; // image 0, position 1, channel 1: group 0
    let x = Tensor::<4>::from_data(TensorData::new(x, [2, 3, 3, 4]), device).require_grad();
    let (gamma, beta) = (tensor(device, 2, [4], 1.0), tensor(device, 3, [4], 0.0));
    let upstream = tensor(device, 4, [2, 3, 3, 4], 0.0).detach();
    let fused = ops::group_norm_relu(x.clone(), gamma.clone(), beta.clone(), options);
    let composed = reference::group_norm_relu(x.clone(), gamma, beta, options);
    let dx = data(
        x.grad(&(fused.clone() * upstream).sum().backward())
            .unwrap(),
    );
    let (fused, composed) = (data(fused), data(composed));
    for (i, (f, c)) in fused.iter().zip(&composed).enumerate() {
        let (image, channel) = (i / 36, i % 4);
        let in_nan_group = image == 0 && channel < 2;
        assert_eq!(f.is_nan(), in_nan_group, "output {i}: {f}");
        assert_eq!(
            f.is_nan(),
            c.is_nan(),
            "output {i}: {f} fused, {c} composed"
        );
        assert_eq!(dx[i].is_nan(), in_nan_group, "gradient {i}: {}", dx[i]);
    }
}

/// Every float parameter's gradient, in visiting order.
struct Grads<'a> {
    grads: &'a burn::tensor::Gradients,
    out: Vec<(String, Vec<f32>)>,
    path: Vec<String>,
}

impl ModuleVisitor for Grads<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = param
            .val()
            .grad(self.grads)
            .expect("every parameter has a gradient");
        self.out.push((self.path.join("."), data(grad)));
    }
}

fn parameter_grads(model: &ResNetV2, grads: &burn::tensor::Gradients) -> Vec<(String, Vec<f32>)> {
    let mut visitor = Grads {
        grads,
        out: Vec::new(),
        path: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

/// The model's forward written with the composed reference ops only.
fn composed_forward(model: &ResNetV2, x: Tensor<4>) -> Tensor<2> {
    let gn = |norm: &bit_model::GroupNormRelu, x: Tensor<4>| {
        reference::group_norm_relu(x, norm.gamma.val(), norm.beta.val(), norm.options())
    };
    let conv = |c: &bit_model::StdConv2d, x: Tensor<4>| {
        reference::std_conv2d(x, c.weight.val(), c.options())
    };
    let x = conv(&model.root.conv, x.permute([0, 2, 3, 1]));
    let mut x = reference::zero_pad_max_pool2d(x, bit_model::ROOT_POOL);
    for unit in model.body.iter().flat_map(|b| &b.units) {
        let a = gn(&unit.gn1, x.clone());
        let shortcut = match &unit.downsample {
            Some(proj) => conv(proj, a.clone()),
            None => x,
        };
        let out = conv(&unit.conv1, a);
        let out = conv(&unit.conv2, gn(&unit.gn2, out));
        x = conv(&unit.conv3, gn(&unit.gn3, out)) + shortcut;
    }
    let [b, h, w, c] = x.dims();
    let pooled = gn(&model.head.gn, x)
        .reshape([b, h * w, c])
        .mean_dim(1)
        .reshape([b, c]);
    model.head.fc.forward(pooled)
}

/// Every parameter's gradient through the whole network, fused against composed. The per-op
/// tests above hold 1e-4; across a whole network two float32 implementations also differ where
/// a ReLU input lies within rounding of zero and its kink flips, which moves single backward
/// paths (the golden README measures ~1% on R50x1 between PyTorch and float64), hence a relative
/// L2 bound of 2e-2 per parameter here: a wrong term in any backward formula is O(1).
fn whole_model_gradients_match_the_composed_ops(device: &Device) {
    device.seed(7);
    // Narrow, but every block, projection and stride of BiT; an odd input size.
    let model: ResNetV2 = ResNetV2Config::new([1, 2, 1, 1], 1, 7).init(device);
    let x = tensor(device, 7, [2, 3, 33, 31], 0.0).detach();
    let upstream = tensor(device, 8, [2, 7], 0.0).detach();
    let fused = model.forward(x.clone());
    let composed = composed_forward(&model, x);
    assert_rel("logits", data(fused.clone()), data(composed.clone()), 1e-4);
    let g_fused = parameter_grads(&model, &(fused * upstream.clone()).sum().backward());
    let g_composed = parameter_grads(&model, &(composed * upstream).sum().backward());
    assert_eq!(g_fused.len(), g_composed.len());
    for ((name, a), (_, b)) in g_fused.into_iter().zip(g_composed) {
        assert!(
            a.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient"
        );
        let diff: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum();
        let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        let error = (diff / norm).sqrt();
        assert!(error <= 2e-2, "{name}: relative L2 error {error:e}");
    }
}
