//! `Precision::Int8`: the units' convolutions in 8-bit integers on the CPU, and nowhere else.
//! (Closeness to the reference nets: golden.rs; top-1 on real data: docs/performance.md.)

use bit_model::{Precision, ResNetV2, ResNetV2Config};
use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

fn relative_l2(got: &[f32], want: &[f32]) -> f64 {
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| f64::from(g - w).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|w| f64::from(*w).powi(2)).sum();
    (diff / norm).sqrt()
}

fn model(device: &Device) -> ResNetV2 {
    ResNetV2Config::new([1, 2, 1, 1], 1, 10).init(device)
}

fn images(batch: usize, device: &Device) -> Tensor<4> {
    Tensor::random([batch, 3, 64, 64], Distribution::Uniform(-1.0, 1.0), device)
}

#[test]
fn int8_is_close_to_f32_and_back_to_f32_is_exact() {
    let device = Device::flex();
    let f32_model = model(&device);
    let x = images(3, &device);
    let exact = values(f32_model.forward(x.clone()));
    let int8_model = f32_model.with_precision(Precision::Int8);
    assert_eq!(int8_model.precision(), Precision::Int8);
    let int8 = values(int8_model.forward(x.clone()));
    let error = relative_l2(&int8, &exact);
    // Random Kaiming weights amplify every rounding through the 5 units: 7.0e-2 measured (see
    // golden.rs); O(1) when a kernel is wrong.
    assert!(error > 0.0 && error < 0.15, "relative L2 {error:e}");
    let back = int8_model.with_precision(Precision::F32);
    assert_eq!(values(back.forward(x)), exact);
}

#[test]
fn an_images_int8_result_does_not_depend_on_its_batch() {
    let device = Device::flex();
    let model = model(&device).with_precision(Precision::Int8);
    let x = images(4, &device);
    let batch = values(model.forward(x.clone()));
    let alone = values(model.forward(x.narrow(0, 2, 1)));
    // Equal up to the f32 layers' summation order, which does depend on the batch (1e-7);
    // activations quantized per batch would move it by 1e-2.
    for (a, b) in alone.iter().zip(&batch[20..30]) {
        assert!(
            (a - b).abs() < 1e-5,
            "{alone:?} against {:?}",
            &batch[20..30]
        );
    }
}

#[test]
fn int8_leaves_the_weights_and_autodiff_devices_in_f32() {
    let device = Device::flex();
    let f32_model = model(&device);
    let dir = std::env::temp_dir().join(format!("bit-int8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (plain, int8) = (dir.join("f32.safetensors"), dir.join("int8.safetensors"));
    f32_model.save_safetensors(&plain).unwrap();
    let int8_model = f32_model.clone().with_precision(Precision::Int8);
    int8_model.save_safetensors(&int8).unwrap();
    assert_eq!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&int8).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // On an autodiff device (training), the f32 kernels run.
    let autodiff = device.autodiff();
    let x = images(2, &autodiff);
    let trained = f32_model.fork(&autodiff);
    let want = values(trained.forward(x.clone()));
    let got = values(trained.with_precision(Precision::Int8).forward(x));
    assert_eq!(got, want);
    assert!(Precision::Int8.check(&autodiff).is_err());
}
