//! `ResNetV2::forward_intermediates` against timm's ResNetV2 on the golden tiny weights: the
//! stem (after its pool), the four stages' outputs and the final map (stage 4 through the
//! pre-head GroupNorm + ReLU), NCHW. The reference maps were written by
//! `scripts/timm_intermediates.py` (timm 1.0.31, torch 2.15.0, StdConv2d eps set to BiT's
//! 1e-10) into `tests/data/timm_intermediates_tiny.npz`, with the input they were computed on.

use std::path::Path;

use bit_model::{ResNetV2, Stage};
use burn::tensor::{Device, Tensor, TensorData};

/// Array `key` of the reference file, `(shape, values)`.
fn reference(key: &str) -> (Vec<usize>, Vec<f32>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/timm_intermediates_tiny.npz");
    let mut npz = npyz::npz::NpzArchive::open(&path).unwrap();
    let npy = npz.by_name(key).unwrap().unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec().unwrap())
}

#[test]
fn every_stage_matches_timms_feature_maps() {
    let device = Device::flex();
    let model = ResNetV2::from_npz(bit_testkit::golden_file("tiny.weights.npz"), &device).unwrap();
    let (shape, input) = reference("input");
    let x = Tensor::<4>::from_data(TensorData::new(input, shape), &device);
    // Asked out of order, as a detection neck might: each map comes back in the order asked.
    let stages = [
        Stage::Stage3,
        Stage::Stem,
        Stage::Final,
        Stage::Stage1,
        Stage::Stage4,
        Stage::Stage2,
    ];
    let maps = model.forward_intermediates(x, &stages);
    for (stage, map) in stages.iter().zip(maps) {
        let (shape, expected) = reference(&stage.to_string());
        assert_eq!(map.dims().to_vec(), shape, "{stage}");
        assert_eq!(shape[1], stage.channels(1), "{stage}: channels");
        assert_eq!(
            32 / shape[2],
            stage.stride(),
            "{stage}: stride of a 32 px input"
        );
        let got = bit_model::backend::host_values(map);
        // Relative to the map's largest value: f32 convolutions in another summation order.
        let gap = bit_testkit::max_relative_gap(&got, &expected);
        assert!(gap < 1e-4, "{stage}: relative gap {gap:e}");
    }
}
