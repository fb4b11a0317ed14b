//! `ResNetV2::pretrained` with `$BIT_HOME` and `$BIT_MODELS_URL` pointing at a scratch cache
//! and a local server. Alone in its test binary: setting environment variables while other
//! threads read the environment is a data race.

use bit_hub::BIT_HOME_ENV;
use bit_model::ResNetV2;
use bit_testkit::{HttpServer, assert_close, golden_array};
use bit_zoo::{BIT_MODELS_URL_ENV, ModelHub, Pretrained};
use burn::tensor::{Device, Tensor, TensorData};

#[test]
fn pretrained_downloads_into_bit_home_from_the_configured_url() {
    let server = HttpServer::serving_golden("BiT-M-R50x1-CIFAR10.npz", "r50x1.weights.npz");
    let home = bit_testkit::scratch_root("bit-model-pretrained");
    std::fs::remove_dir_all(&home).ok();
    // SAFETY: the only test of this binary; no other thread reads the environment yet.
    unsafe {
        std::env::set_var(BIT_HOME_ENV, &home);
        std::env::set_var(BIT_MODELS_URL_ENV, server.base_url());
    }
    let device = Device::flex();
    let model = ResNetV2::pretrained("BiT-M-R50x1-CIFAR10", &device).unwrap();
    assert!(home.join("models/BiT-M-R50x1-CIFAR10.npz").is_file());
    assert_eq!(ModelHub::from_env().unwrap().base_url(), server.base_url());

    let (shape, input) = golden_array("r50x1.case.npz", "input");
    let x = Tensor::<4>::from_data(TensorData::new(input, shape), &device);
    let logits: Vec<f32> = model
        .forward(x)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let (_, expected) = golden_array("r50x1.case.npz", "logits");
    assert_close("logits", &logits, &expected, 1e-4, 1e-4);

    let err = ResNetV2::pretrained("BiT-X-R50x1", &device).unwrap_err();
    assert!(err.to_string().contains("bit models"), "{err}");
    std::fs::remove_dir_all(&home).ok();
}
