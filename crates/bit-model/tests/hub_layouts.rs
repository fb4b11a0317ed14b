//! timm's and transformers' checkpoint layouts, read and written ([`HubCheckpoint`],
//! [`ResNetV2::save_hub`]), on the golden tiny weights.
//!
//! `tests/data/hub_layouts_tiny.json` is what `scripts/hub_layouts.py make` recorded when timm
//! 1.0.31 and transformers 5.24 saved the golden tiny network themselves: every tensor name
//! and shape, their `config.json`, and how far each library's logits are from the golden ones
//! (1.3e-6 and 1.2e-6: their StdConv eps of 1e-8 against BiT's 1e-10). What we write must have
//! exactly those names and shapes; what we read back must give the golden logits.
//! `library_made_checkpoints_give_the_golden_logits` reads the libraries' own files (run by
//! hand: they are 32 MB each, too big for the repository).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bit_model::{
    Error, HUB_STD_CONV_EPS, HubCheckpoint, HubInfo, HubLayout, ResNetV2, WeightDType,
};
use burn::tensor::{Device, Tensor, TensorData};
use serde_json::Value;

fn manifest() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hub_layouts_tiny.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The manifest's section for `layout`.
fn library(layout: HubLayout) -> Value {
    manifest()[layout.to_string()].clone()
}

fn golden_model(device: &Device) -> ResNetV2 {
    ResNetV2::from_npz(bit_testkit::golden_file("tiny.weights.npz"), device).unwrap()
}

/// The largest gap between `model`'s logits on the golden input and the golden logits.
fn logits_gap(model: &ResNetV2, device: &Device) -> f32 {
    let (shape, input) = bit_testkit::golden_array("tiny.case.npz", "input");
    let (_, expected) = bit_testkit::golden_array("tiny.case.npz", "logits");
    let x = Tensor::<4>::from_data(TensorData::new(input, shape), device);
    let got = bit_model::backend::host_values(model.forward(x));
    got.iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bit_hub_layouts_{}_{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// Tensor names and shapes of a safetensors file.
fn shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.tensors()
        .into_iter()
        .map(|(k, info)| (k, info.shape.clone()))
        .collect()
}

fn classes() -> Vec<String> {
    (0..10).map(|i| format!("class{i}")).collect()
}

/// Golden logits within 1e-4: the libraries themselves are 1.3e-6 away (eps 1e-8 vs 1e-10),
/// and our f32 kernels sum in another order than PyTorch's (~1e-6 on logits of size ~1).
const LOGITS_TOLERANCE: f32 = 1e-4;

#[test]
fn what_we_write_has_the_libraries_names_shapes_and_configs_and_reads_back_exactly() {
    let device = Device::flex();
    let model = golden_model(&device);
    for layout in [HubLayout::Timm, HubLayout::Transformers] {
        let dir = scratch(&format!("write_{layout}"));
        let info = HubInfo {
            resolution: Some(64),
            class_names: Some(classes()),
            mean_std: None,
        };
        model
            .save_hub(&dir, layout, &info, WeightDType::F32)
            .unwrap();

        let theirs: BTreeMap<String, Vec<usize>> =
            serde_json::from_value(library(layout)["keys"].clone()).unwrap();
        assert_eq!(shapes(&dir.join("model.safetensors")), theirs, "{layout}");

        let ours: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let config = &library(layout)["config"];
        let fields: &[&str] = match layout {
            HubLayout::Timm => &["num_classes", "num_features", "global_pool", "label_names"],
            HubLayout::Transformers => &[
                "architectures",
                "depths",
                "hidden_sizes",
                "width_factor",
                "embedding_size",
                "layer_type",
                "global_padding",
                "embedding_dynamic_padding",
                "num_groups",
                "output_stride",
                "id2label",
                "label2id",
                "model_type",
            ],
        };
        for field in fields {
            assert_eq!(ours[field], config[field], "{layout} config.json `{field}`");
        }
        if layout == HubLayout::Timm {
            for field in [
                "input_size",
                "mean",
                "std",
                "crop_pct",
                "first_conv",
                "classifier",
            ] {
                assert_eq!(
                    ours["pretrained_cfg"][field], config["pretrained_cfg"][field],
                    "timm pretrained_cfg `{field}`"
                );
            }
        }

        let ckpt = HubCheckpoint::open(&dir).unwrap();
        assert_eq!(ckpt.layout(), layout);
        assert_eq!(
            ckpt.info(),
            &HubInfo {
                resolution: Some(64),
                class_names: Some(classes()),
                mean_std: Some(([0.5; 3], [0.5; 3])),
            }
        );
        let again = ckpt.load(&device).unwrap();
        assert_eq!(again.config().std_conv_eps, HUB_STD_CONV_EPS);
        assert_eq!(
            again.config().with_std_conv_eps(1e-10),
            model.config(),
            "{layout}"
        );
        assert_eq!(
            bit_testkit::parameter_values(&again),
            bit_testkit::parameter_values(&model),
            "{layout}: every parameter must come back bit for bit"
        );
        let gap = logits_gap(&again, &device);
        assert!(
            gap < LOGITS_TOLERANCE,
            "{layout}: logits {gap:e} from golden"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn a_zero_head_is_started_and_a_missing_head_is_only_needed_to_load_one() {
    let device = Device::flex();
    let dir = scratch("zero_head");
    golden_model(&device)
        .save_hub(&dir, HubLayout::Timm, &HubInfo::default(), WeightDType::F32)
        .unwrap();
    let fine_tune = HubCheckpoint::open(&dir)
        .unwrap()
        .load_with_zero_head(4, &device)
        .unwrap();
    assert_eq!(fine_tune.config().head_size, 4);
    let head = bit_testkit::parameter_values(&fine_tune.head.fc);
    assert!(head.iter().all(|&v| v == 0.0));
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes `tensors` (name, shape) of zeros as a safetensors file.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| vec![0u8; s.iter().product::<usize>() * 4])
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&data)
        .map(|((k, s), d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn foreign_and_damaged_files_are_typed_errors() {
    let device = Device::flex();
    let dir = scratch("foreign");
    std::fs::create_dir_all(&dir).unwrap();

    // No layout: the error names the first tensor.
    let path = dir.join("other.safetensors");
    write_safetensors(&path, &[("encoder.weight".into(), vec![2, 2])]);
    let err = HubCheckpoint::open(&path).err().unwrap();
    assert!(
        matches!(&err, Error::UnknownLayout { key, .. } if key == "encoder.weight"),
        "{err}"
    );

    // timm's non-BiT ResNetV2 (BatchNorm): its running statistics have no place in BiT.
    let mut tensors: Vec<(String, Vec<usize>)> =
        serde_json::from_value::<BTreeMap<_, _>>(library(HubLayout::Timm)["keys"].clone())
            .unwrap()
            .into_iter()
            .collect();
    tensors.push(("stages.0.blocks.0.norm1.running_mean".into(), vec![64]));
    let path = dir.join("batchnorm.safetensors");
    write_safetensors(&path, &tensors);
    let err = HubCheckpoint::open(&path)
        .unwrap()
        .load(&device)
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnexpectedKey { key, .. } if key.ends_with("running_mean")),
        "{err}"
    );

    // A wrong shape names the tensor, in the file's own layout.
    let mut wrong = tensors.clone();
    wrong.pop();
    let conv = wrong
        .iter_mut()
        .find(|(k, _)| k == "stages.1.blocks.0.conv2.weight")
        .unwrap();
    conv.1 = vec![128, 128, 1, 1];
    write_safetensors(&path, &wrong);
    let err = HubCheckpoint::open(&path)
        .unwrap()
        .load(&device)
        .unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { key, expected, .. }
            if key == "stages.1.blocks.0.conv2.weight" && expected == &[128, 128, 3, 3]),
        "{err}"
    );

    // transformers' ViT-hybrid flavour pads like TensorFlow: refused, not computed otherwise.
    let hf = dir.join("hf");
    golden_model(&device)
        .save_hub(
            &hf,
            HubLayout::Transformers,
            &HubInfo::default(),
            WeightDType::F32,
        )
        .unwrap();
    let config_path = hf.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["global_padding"] = "SAME".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = HubCheckpoint::open(&hf).err().unwrap();
    assert!(
        matches!(&err, Error::Architecture { reason, .. } if reason.contains("SAME")),
        "{err}"
    );

    // A truncated download.
    let weights = hf.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = HubCheckpoint::open(&weights).err().unwrap();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The files timm and transformers wrote themselves (`scripts/hub_layouts.py make`), in
/// `$BIT_HUB_LAYOUTS_DIR/{timm,hf}`: safetensors and `pytorch_model.bin`, through the whole
/// directory (configs included) and through each weights file alone.
#[test]
#[ignore = "needs the output of `scripts/hub_layouts.py make` in $BIT_HUB_LAYOUTS_DIR"]
fn library_made_checkpoints_give_the_golden_logits() {
    let root = PathBuf::from(std::env::var("BIT_HUB_LAYOUTS_DIR").expect("BIT_HUB_LAYOUTS_DIR"));
    let device = Device::flex();
    let reference = golden_model(&device);
    for (dir, layout) in [("timm", HubLayout::Timm), ("hf", HubLayout::Transformers)] {
        let dir = root.join(dir);
        for path in [
            dir.clone(),
            dir.join("model.safetensors"),
            dir.join("pytorch_model.bin"),
        ] {
            let ckpt = HubCheckpoint::open(&path).unwrap();
            assert_eq!(ckpt.layout(), layout);
            assert_eq!(ckpt.info().resolution, Some(64), "{}", path.display());
            assert_eq!(
                ckpt.info().class_names,
                Some(classes()),
                "{}",
                path.display()
            );
            let model = ckpt.load(&device).unwrap();
            assert_eq!(
                bit_testkit::parameter_values(&model),
                bit_testkit::parameter_values(&reference),
                "{}",
                path.display()
            );
            let gap = logits_gap(&model, &device);
            assert!(gap < LOGITS_TOLERANCE, "{}: {gap:e}", path.display());
            println!("{}: logits {gap:e} from golden", path.display());
        }
    }
}
