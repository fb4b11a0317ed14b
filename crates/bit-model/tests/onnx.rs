//! `ResNetV2::save_onnx` checked by running the exported graph in tract, a pure-Rust ONNX
//! runtime: the golden logits to 1e-4 on the golden inputs (tiny and R50x1), a dynamic batch,
//! and the metadata a deployment reads.

use bit_model::{CLASSES_METADATA_KEY, RESOLUTION_METADATA_KEY, ResNetV2};
use burn::tensor::{Device, Tensor, TensorData};
use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, IntoTValue, tvec};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = bit_testkit::scratch_root("bit-model-onnx");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Logits of the ONNX file at `path` on `input` (NCHW), through tract with a symbolic batch.
fn run_onnx(path: &std::path::Path, shape: &[usize], input: &[f32]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let x =
        tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), input.to_vec())
            .unwrap();
    let x = tract_onnx::prelude::Tensor::from(x).into_tvalue();
    let out = model.run(tvec!(x)).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// The golden logits within 1e-4: tract sums the convolutions in its own order, and the folded
/// standardization is rounded to f32 once (the model rounds it the same way).
const TOLERANCE: f32 = 1e-4;

#[test]
fn the_exported_graph_gives_the_golden_logits_in_tract() {
    for case in ["tiny", "r50x1"] {
        let model = ResNetV2::from_npz(
            bit_testkit::golden_file(&format!("{case}.weights.npz")),
            &Device::flex(),
        )
        .unwrap();
        let (shape, input) = bit_testkit::golden_array(&format!("{case}.case.npz"), "input");
        let (_, expected) = bit_testkit::golden_array(&format!("{case}.case.npz"), "logits");
        let path = scratch(&format!("{case}.onnx"));
        model.save_onnx(&path, shape[2], None).unwrap();
        let got = run_onnx(&path, &shape, &input);
        let gap = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert_eq!(got.len(), expected.len(), "{case}");
        assert!(gap < TOLERANCE, "{case}: logits {gap:e} from golden");
        std::fs::remove_file(&path).ok();
    }
}

#[test]
fn the_batch_is_dynamic_and_the_metadata_travels() {
    let device = Device::flex();
    let model = ResNetV2::from_npz(bit_testkit::golden_file("tiny.weights.npz"), &device).unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    let path = scratch("dynamic.onnx");
    model.save_onnx(&path, 64, Some(&names)).unwrap();

    // One image and three: the same graph, each matching the model itself.
    for batch in [1, 3] {
        let shape = [batch, 3, 64, 64];
        let input: Vec<f32> = (0..batch * 3 * 64 * 64)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let got = run_onnx(&path, &shape, &input);
        let x = Tensor::<4>::from_data(TensorData::new(input, shape), &device);
        let expected = bit_model::backend::host_values(model.forward(x));
        assert_eq!(got.len(), batch * 10);
        let gap = bit_testkit::max_relative_gap(&got, &expected);
        assert!(gap < TOLERANCE, "batch {batch}: {gap:e}");
    }

    let inference = tract_onnx::onnx().model_for_path(&path).unwrap();
    let property = |key: &str| {
        inference.properties[&format!("onnx.metadata_props.{key}")]
            .try_as_plain_ram()
            .unwrap()
            .to_scalar::<String>()
            .unwrap()
            .clone()
    };
    assert_eq!(property(RESOLUTION_METADATA_KEY), "64");
    let classes: Vec<String> = serde_json::from_str(&property(CLASSES_METADATA_KEY)).unwrap();
    assert_eq!(classes, names);
    std::fs::remove_file(&path).ok();

    let err = model.save_onnx(&path, 64, Some(&names[..3])).unwrap_err();
    assert!(err.to_string().contains("3 class names"), "{err}");
}
