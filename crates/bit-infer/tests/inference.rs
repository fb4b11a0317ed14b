//! predict, embed and eval on the golden checkpoints and generated images, checked against
//! the model run directly on tensors built here; loading with metadata, catalog entries and
//! release label files; class matching.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bit_data::{FolderDataset, ImageDataset, ImageFiles, NonImagePolicy};
use bit_hub::Cache;
use bit_infer::{
    Feed, InferError, InferenceModel, LoadOptions, Relabelled, embed, evaluate_dataset,
    map_classes, predict,
};
use bit_model::{NpzCheckpoint, ResNetV2};
use bit_testkit::{HttpServer, assert_close, golden_file};
use bit_zoo::ModelHub;
use burn::tensor::{Device, Tensor, TensorData};

const SIDE: u32 = 64;

fn scratch(name: &str) -> PathBuf {
    let dir = bit_testkit::scratch_root("bit-infer").join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic noise with some structure, so different images give different outputs.
fn pixels(seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    (0..SIDE * SIDE * 3)
        .map(|i| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            ((state >> 16) as u8 / 2).wrapping_add((i / 97) as u8 * seed as u8)
        })
        .collect()
}

/// `classes[c]/img{i}.png` for `per_class` images each; returns the root.
fn image_folder(dir: &Path, classes: &[&str], per_class: u32) -> PathBuf {
    let root = dir.join("images");
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            let seed = c as u32 * 100 + i + 1;
            image::RgbImage::from_raw(SIDE, SIDE, pixels(seed))
                .unwrap()
                .save(root.join(class).join(format!("img{i}.png")))
                .unwrap();
        }
    }
    root
}

/// NCHW in [-1, 1] from the images of `ds`, without the library's pipeline (no resize: the
/// images already have the model's resolution).
fn tensor_of(ds: &dyn ImageDataset, device: &Device) -> Tensor<4> {
    let n = ds.len();
    let side = SIDE as usize;
    let mut data = vec![0f32; n * 3 * side * side];
    for i in 0..n {
        let img = ds.image(i).unwrap();
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                data[((i * 3 + c) * side + y as usize) * side + x as usize] =
                    p.0[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [n, 3, side, side]), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn tiny(device: &Device) -> ResNetV2 {
    ResNetV2::from_npz(golden_file("tiny.weights.npz"), device).unwrap()
}

/// The images' own size (no resize), `batch` at a time.
fn feed(batch: usize) -> Feed {
    Feed::new(SIDE as usize).with_batch_size(batch)
}

fn folder(root: &Path) -> Arc<dyn ImageDataset> {
    Arc::new(FolderDataset::open(root, NonImagePolicy::Error).unwrap())
}

#[test]
fn embed_gives_the_models_pooled_features_in_dataset_order() {
    let device = Device::flex();
    let model = tiny(&device);
    let root = image_folder(&scratch("embed"), &["cat", "dog"], 3);
    let ds = folder(&root);
    // Batches of 4 over 6 images: the last batch is short.
    let emb = embed(&model, ds.clone(), &feed(4), &device).unwrap();
    assert_eq!((emb.len(), emb.dim), (6, 2048));
    assert_eq!(emb.labels, vec![0, 0, 0, 1, 1, 1]);
    let expected = host(model.features(tensor_of(ds.as_ref(), &device)));
    assert_close("features", &emb.features, &expected, 1e-4, 1e-4);

    let dir = scratch("embed-out");
    emb.save_features(&dir.join("f.npy")).unwrap();
    emb.save_labels(&dir.join("l.npy")).unwrap();
    let npy = npyz::NpyFile::new(std::fs::File::open(dir.join("f.npy")).unwrap()).unwrap();
    assert_eq!(npy.shape(), &[6, 2048]);
    assert_eq!(npy.into_vec::<f32>().unwrap(), emb.features);
    let npy = npyz::NpyFile::new(std::fs::File::open(dir.join("l.npy")).unwrap()).unwrap();
    assert_eq!(npy.into_vec::<i64>().unwrap(), vec![0, 0, 0, 1, 1, 1]);
}

#[test]
fn predict_ranks_classes_by_softmax_probability() {
    let device = Device::flex();
    let model = tiny(&device);
    let root = image_folder(&scratch("predict"), &["a"], 3);
    let files: Vec<PathBuf> = (0..3)
        .map(|i| root.join("a").join(format!("img{i}.png")))
        .collect();
    let images = Arc::new(ImageFiles::new(files).unwrap());
    let top = predict(&model, images.clone(), 4, &feed(2), &device).unwrap();
    let logits = host(model.forward(tensor_of(images.as_ref(), &device)));
    for (row, top) in logits.chunks_exact(10).zip(&top) {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let mut order: Vec<usize> = (0..10).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        assert_eq!(
            top.iter().map(|t| t.0).collect::<Vec<_>>(),
            order[..4].to_vec()
        );
        for &(c, p) in top {
            assert!(
                (p - (row[c] - max).exp() / sum).abs() < 1e-4,
                "class {c}: {p}"
            );
        }
    }
    assert!(matches!(
        predict(&model, images.clone(), 0, &feed(2), &device),
        Err(InferError::InvalidArgument(_))
    ));
    assert!(matches!(
        predict(&model, images, 1, &feed(0), &device),
        Err(InferError::InvalidArgument(_))
    ));
}

#[test]
fn an_unreadable_image_is_a_decode_error_naming_it() {
    let device = Device::flex();
    let dir = scratch("undecodable");
    let path = dir.join("notes.png");
    std::fs::write(&path, b"not an image").unwrap();
    let images = Arc::new(ImageFiles::new(vec![path.clone()]).unwrap());
    let err = predict(&tiny(&device), images, 5, &feed(1), &device).unwrap_err();
    assert!(
        matches!(err, InferError::Data(bit_data::DataError::Decode { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("notes.png"), "{err}");
    assert!(ImageFiles::new(vec![dir.join("missing.jpg")]).is_err());
}

#[test]
fn eval_scores_folders_matched_to_the_head_by_name() {
    let device = Device::flex();
    let model = tiny(&device);
    let names: Vec<String> = (0..10)
        .map(|i| format!("n{:08} big thing {i}, other{i}", 100 + i))
        .collect();
    // Folder names in three spellings: a lemma, a WordNet id, a lemma with `_` for spaces.
    let root = image_folder(&scratch("eval"), &["OTHER3", "n00000107", "Big_thing-9"], 4);
    let ds = folder(&root);
    let map = map_classes(ds.classes(), 10, Some(&names), None).unwrap();
    assert_eq!(
        map,
        vec![9, 3, 7],
        "folders sort as Big_thing-9, OTHER3, n00000107"
    );
    let relabelled = Arc::new(Relabelled::new(ds.clone(), map.clone(), names.clone()));
    let result = evaluate_dataset(&model, relabelled, &feed(5), &device).unwrap();

    let logits = host(model.forward(tensor_of(ds.as_ref(), &device)));
    let (mut top1, mut top5) = (0, 0);
    for (i, row) in logits.chunks_exact(10).enumerate() {
        let label = map[ds.label(i)];
        let rank = row.iter().filter(|&&v| v > row[label]).count();
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
    }
    assert_eq!(result.examples, 12);
    assert!((result.top1 - top1 as f64 / 12.0).abs() < 1e-9);
    assert!((result.top5 - top5 as f64 / 12.0).abs() < 1e-9);
}

#[test]
fn classes_are_matched_by_name_id_lemma_or_a_class_map() {
    let names: Vec<String> = vec![
        "n01440764 tench, Tinca tinca".into(),
        "n02012849 crane".into(),
        "n03126707 crane".into(),
        "n01443537 goldfish, Carassius auratus".into(),
    ];
    let s = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    assert_eq!(
        map_classes(&s(&["Tinca_tinca", "goldfish"]), 4, Some(&names), None).unwrap(),
        vec![0, 3]
    );
    assert_eq!(
        map_classes(&s(&["n03126707"]), 4, Some(&names), None).unwrap(),
        vec![2]
    );
    let err = map_classes(&s(&["crane", "zebra"]), 4, Some(&names), None).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("ambiguous: `crane`") && text.contains("`zebra`"),
        "{text}"
    );
    // A class map decides, and is checked against the head.
    let map = [("crane".to_string(), 2), ("zebra".to_string(), 3)]
        .into_iter()
        .collect();
    assert_eq!(
        map_classes(&s(&["crane", "zebra"]), 4, Some(&names), Some(&map)).unwrap(),
        vec![2, 3]
    );
    let map = [("crane".to_string(), 4)].into_iter().collect();
    assert!(map_classes(&s(&["crane"]), 4, None, Some(&map)).is_err());
    // Without names: only a dataset with exactly the head's classes, in order.
    assert_eq!(
        map_classes(&s(&["x", "y"]), 2, None, None).unwrap(),
        vec![0, 1]
    );
    assert!(matches!(
        map_classes(&s(&["x"]), 2, None, None),
        Err(InferError::ClassMapping(_))
    ));
}

fn offline_hub(name: &str) -> ModelHub {
    ModelHub::new(Cache::new(scratch(name)), "http://127.0.0.1:9")
}

#[test]
fn fine_tuned_safetensors_carry_their_resolution_and_classes() {
    let device = Device::flex();
    let dir = scratch("meta");
    let classes: Vec<String> = (0..10).map(|i| format!("class {i}")).collect();
    let path = dir.join("model.safetensors");
    tiny(&device)
        .save_safetensors_with_metadata(&path, &bit_infer::metadata(64, Some(&classes)))
        .unwrap();
    let hub = offline_hub("meta-cache");
    let m = InferenceModel::load(
        &hub,
        path.to_str().unwrap(),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    assert_eq!((m.resolution, m.class_name(3)), (64, "class 3".to_string()));

    // Overrides win; a label file must fit the head.
    let labels = dir.join("labels.txt");
    std::fs::write(
        &labels,
        (0..10).map(|i| format!("L{i}\n")).collect::<String>(),
    )
    .unwrap();
    let options = LoadOptions {
        resolution: Some(96),
        labels: Some(labels.clone()),
        ..Default::default()
    };
    let m = InferenceModel::load(&hub, path.to_str().unwrap(), &options, &device).unwrap();
    assert_eq!((m.resolution, m.class_name(9)), (96, "L9".to_string()));
    std::fs::write(&labels, "just one\n").unwrap();
    let err = InferenceModel::load(&hub, path.to_str().unwrap(), &options, &device).unwrap_err();
    assert!(matches!(err, InferError::Labels { .. }), "{err:?}");

    // Exported to the official layout and back: the same function.
    let npz = dir.join("exported.npz");
    m.export(&npz, None, bit_model::WeightDType::F32).unwrap();
    let again = NpzCheckpoint::open(&npz).unwrap().load(&device).unwrap();
    let x = Tensor::<4>::random(
        [2, 3, 64, 64],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    assert_close(
        "exported logits",
        &host(again.forward(x.clone())),
        &host(m.model.forward(x)),
        1e-6,
        1e-6,
    );
}

#[test]
fn released_files_get_their_catalog_resolution_and_imagenet_names() {
    let device = Device::flex();
    // A hand-placed copy under a released name: the catalog's 128 px, no published names.
    let dir = scratch("catalog");
    let placed = dir.join("BiT-M-R50x1-CIFAR10.npz");
    std::fs::copy(golden_file("r50x1.weights.npz"), &placed).unwrap();
    let m = InferenceModel::load(
        &offline_hub("c1"),
        placed.to_str().unwrap(),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    assert_eq!((m.resolution, m.class_names.is_none()), (128, true));
    assert_eq!(m.entry.unwrap().name, "BiT-M-R50x1-CIFAR10");

    // A 1000-way file: ImageNet-1k names from the release's label file, fetched once.
    let imagenet = dir.join("my-imagenet-model.npz");
    tiny(&device)
        .with_zero_head(1000)
        .save_npz(&imagenet)
        .unwrap();
    let server = HttpServer::start();
    let lemmas: String = (0..1000).map(|i| format!("lemma {i}\n")).collect();
    server.put("ilsvrc2012_wordnet_lemmas.txt", lemmas.into_bytes());
    let hub = ModelHub::new(Cache::new(scratch("c2")), server.base_url());
    let m = InferenceModel::load(
        &hub,
        imagenet.to_str().unwrap(),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    assert_eq!(
        (m.resolution, m.class_name(999)),
        (224, "lemma 999".to_string())
    );
    // Offline and uncached: the names are lost, not the model.
    let m = InferenceModel::load(
        &offline_hub("c3"),
        imagenet.to_str().unwrap(),
        &LoadOptions::default(),
        &device,
    )
    .unwrap();
    assert_eq!(m.class_name(5), "5");
}

#[test]
fn a_nan_model_is_never_correct_and_its_loss_is_nan() {
    use bit_data::InMemoryDataset;
    let device = Device::flex();
    let mut model = bit_model::ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device);
    let bias = model.head.fc.bias.take().unwrap().val();
    model.head.fc.bias = Some(burn::module::Param::from_tensor(bias.full_like(f32::NAN)));
    let data = InMemoryDataset::new(
        vec!["a".into(), "b".into(), "c".into()],
        [8, 8, 3],
        vec![7; 4 * 192],
        vec![0, 1, 2, 1],
    )
    .unwrap();
    let r = evaluate_dataset(&model, Arc::new(data), &Feed::new(32), &device).unwrap();
    assert_eq!((r.examples, r.top1, r.top5), (4, 0.0, 0.0));
    assert!(r.loss.is_nan());
}

#[test]
fn a_zero_head_scores_nothing() {
    // Every logit equal (a fresh zero head, each run's first evaluation): ties count against
    // the label, so neither top-1 nor top-5 of 10 classes is ever right.
    use bit_data::InMemoryDataset;
    let device = Device::flex();
    let model = bit_model::ResNetV2Config::new([1, 1, 1, 1], 1, 10)
        .with_zero_head(true)
        .init(&device);
    let data = InMemoryDataset::new(
        (0..10).map(|c| format!("c{c}")).collect(),
        [8, 8, 3],
        (0..10 * 192).map(|i| (i * 37 % 251) as u8).collect(),
        (0..10).collect(),
    )
    .unwrap();
    let r = evaluate_dataset(&model, Arc::new(data), &Feed::new(8), &device).unwrap();
    assert_eq!((r.examples, r.top1, r.top5), (10, 0.0, 0.0));
    // The loss of uniform logits is ln(10).
    assert!((r.loss - 10f64.ln()).abs() < 1e-5, "{}", r.loss);
}

#[test]
fn models_that_do_not_take_rgb_images_or_absurd_resolutions_are_refused_at_load() {
    let dir = scratch("not-rgb");
    // No server: local files only.
    let hub = ModelHub::new(Cache::new(dir.join("cache")), "http://127.0.0.1:9");
    let four = dir.join("four-channels.npz");
    bit_model::ResNetV2Config::new([1, 1, 1, 1], 1, 3)
        .with_in_channels(4)
        .init(&Device::flex())
        .save_npz(&four)
        .unwrap();
    let err = InferenceModel::load(
        &hub,
        four.to_str().unwrap(),
        &LoadOptions::default(),
        &Device::flex(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            InferError::Model(bit_model::Error::NotRgb { channels: 4, .. })
        ),
        "{err:?}"
    );
    // A resolution from the command line or from a file's metadata is capped, not allocated.
    let three = dir.join("three.safetensors");
    bit_model::ResNetV2Config::new([1, 1, 1, 1], 1, 3)
        .init(&Device::flex())
        .save_safetensors_with_metadata(&three, &bit_infer::metadata(100_000, None))
        .unwrap();
    for options in [
        LoadOptions::default(),
        LoadOptions {
            resolution: Some(100_000),
            ..Default::default()
        },
    ] {
        let err = InferenceModel::load(&hub, three.to_str().unwrap(), &options, &Device::flex())
            .unwrap_err();
        assert!(
            matches!(&err, InferError::InvalidArgument(m) if m.contains("maximum")),
            "{err:?}"
        );
    }
    // And floored: 1-7 px is a typo, not an image the network can see.
    let tiny = dir.join("tiny-resolution.safetensors");
    bit_model::ResNetV2Config::new([1, 1, 1, 1], 1, 3)
        .init(&Device::flex())
        .save_safetensors_with_metadata(&tiny, &bit_infer::metadata(4, None))
        .unwrap();
    let from_flag = LoadOptions {
        resolution: Some(7),
        ..Default::default()
    };
    for (file, options) in [(&tiny, LoadOptions::default()), (&three, from_flag)] {
        let err = InferenceModel::load(&hub, file.to_str().unwrap(), &options, &Device::flex())
            .unwrap_err();
        assert!(
            matches!(&err, InferError::InvalidArgument(m) if m.contains("between 8")),
            "{err:?}"
        );
    }
}
