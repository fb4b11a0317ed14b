//! The model zoo: every family's names, URLs and shapes, and fetching + loading through a
//! local HTTP server that serves the golden checkpoints under released names.

use std::collections::HashSet;
use std::path::PathBuf;

use bit_hub::Cache;
use bit_model::{Architecture, ResNetV2};
use bit_testkit::{HttpServer, assert_close, golden_array, golden_file};
use bit_zoo::{self as zoo, BIT_MODELS_URL, Error, Family, LabelSet, ModelHub, Provenance};
use burn::tensor::{Device, Tensor, TensorData};

fn scratch(name: &str) -> PathBuf {
    let dir = bit_testkit::scratch_root("bit-model-zoo").join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_family_is_complete_and_names_are_unique() {
    let all = zoo::catalog();
    let count = |f: Family| all.iter().filter(|m| m.family == f).count();
    assert_eq!(count(Family::BitS), 6);
    assert_eq!(count(Family::BitM), 6);
    assert_eq!(count(Family::Ilsvrc2012), 6);
    assert_eq!(count(Family::Vtab), 5 * 3 * 19);
    assert_eq!(count(Family::Distilled), 2);
    assert_eq!(count(Family::Teacher), 6);
    assert_eq!(count(Family::Colab), 1);
    let names: HashSet<String> = all.iter().map(|m| m.name.to_lowercase()).collect();
    assert_eq!(
        names.len(),
        all.len(),
        "names are unique, even ignoring case"
    );
    // No BiT-S or R152x2 VTAB models were released.
    assert!(
        all.iter().filter(|m| m.family == Family::Vtab).all(|m| {
            m.name.starts_with("vtab/BiT-M-") && m.architecture != Architecture::R152x2
        })
    );
    for m in &all {
        let config = m.config();
        assert_eq!(
            config.block_units,
            m.architecture.block_units(),
            "{}",
            m.name
        );
        assert_eq!(config.head_size, m.head_size, "{}", m.name);
        assert!(m.resolution >= 128 && m.resolution <= 480, "{}", m.name);
        assert_eq!(
            m.labels.map(LabelSet::len),
            m.labels.is_some().then_some(m.head_size),
            "{}: label set and head agree",
            m.name
        );
    }
}

#[test]
fn names_map_to_the_official_urls_heads_and_resolutions() {
    let url = |name: &str| zoo::find(name).unwrap().url(BIT_MODELS_URL);
    let b = "https://storage.googleapis.com/bit_models";
    for (name, file, arch, head, res) in [
        (
            "BiT-S-R50x1",
            "BiT-S-R50x1.npz",
            Architecture::R50x1,
            1000,
            224,
        ),
        (
            "BiT-M-R152x4",
            "BiT-M-R152x4.npz",
            Architecture::R152x4,
            21843,
            224,
        ),
        (
            "BiT-M-R101x3-ILSVRC2012",
            "BiT-M-R101x3-ILSVRC2012.npz",
            Architecture::R101x3,
            1000,
            480,
        ),
        (
            "vtab/BiT-M-R50x3-run1-clevr-count",
            "vtab/BiT-M-R50x3-run1-clevr-count.npz",
            Architecture::R50x3,
            8,
            480,
        ),
        (
            "vtab/BiT-M-R152x4-run2-svhn",
            "vtab/BiT-M-R152x4-run2-svhn.npz",
            Architecture::R152x4,
            10,
            128,
        ),
        (
            "vtab/BiT-M-R101x1-run0-sun397",
            "vtab/BiT-M-R101x1-run0-sun397.npz",
            Architecture::R101x1,
            397,
            480,
        ),
        (
            "distill/R50x1_160",
            "distill/R50x1_160.npz",
            Architecture::R50x1,
            1000,
            160,
        ),
        (
            "distill/R152x2_T_384",
            "distill/R152x2_T_384.npz",
            Architecture::R152x2,
            1000,
            384,
        ),
        (
            "distill/R152x2_T_pet128",
            "distill/R152x2_T_pet128.npz",
            Architecture::R152x2,
            37,
            128,
        ),
        (
            "BiT-M-R50x1-CIFAR10",
            "BiT-M-R50x1-CIFAR10.npz",
            Architecture::R50x1,
            10,
            128,
        ),
    ] {
        let m = zoo::find(name).unwrap();
        assert_eq!(url(name), format!("{b}/{file}"));
        assert_eq!(
            (m.architecture, m.head_size, m.resolution),
            (arch, head, res),
            "{name}"
        );
    }
    assert_eq!(
        zoo::find("BiT-M-R50x1").unwrap().labels,
        Some(LabelSet::Imagenet21k)
    );
    assert_eq!(
        zoo::find("distill/R50x1_224").unwrap().labels,
        Some(LabelSet::Ilsvrc2012)
    );
    assert_eq!(
        zoo::find("vtab/BiT-M-R50x1-run0-dtd").unwrap().provenance,
        Provenance::Derived
    );
    assert_eq!(
        zoo::find("BiT-S-R50x3").unwrap().provenance,
        Provenance::Release
    );
}

#[test]
fn names_are_found_however_they_are_spelled() {
    for spelling in [
        "bit-m-r50x1",
        "BiT-M-R50x1.npz",
        "gs://bit_models/BiT-M-R50x1.npz",
        "https://storage.googleapis.com/bit_models/BiT-M-R50x1.npz",
    ] {
        assert_eq!(
            zoo::find(spelling).unwrap().name,
            "BiT-M-R50x1",
            "{spelling}"
        );
    }
    for unknown in [
        "BiT-L-R50x1",
        "BiT-S-R50x1-ILSVRC2012",
        "vtab/BiT-M-R152x2-run0-dtd",
        "vtab/BiT-M-R50x1-run3-dtd",
        "",
    ] {
        assert!(
            matches!(zoo::find(unknown), Err(Error::UnknownModel(_))),
            "{unknown}"
        );
    }
    assert_eq!(zoo::search("ILSVRC2012").len(), 6);
    assert_eq!(zoo::search("vtab R152x4 run0").len(), 19);
    assert_eq!(zoo::search("").len(), zoo::catalog().len());
}

fn golden_logits(device: &Device, model: &ResNetV2) -> Vec<f32> {
    let (shape, input) = golden_array("r50x1.case.npz", "input");
    let x = Tensor::<4>::from_data(TensorData::new(input, shape), device);
    model
        .forward(x)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

#[test]
fn the_hub_fetches_verifies_caches_and_loads_a_released_name() {
    // The golden r50x1 checkpoint has the R50x1 shape and a 10-way head: exactly the colab's
    // BiT-M-R50x1-CIFAR10.
    let server = HttpServer::serving_golden("BiT-M-R50x1-CIFAR10.npz", "r50x1.weights.npz");
    let hub = ModelHub::new(Cache::new(scratch("hub")), server.base_url());
    let entry = zoo::find("BiT-M-R50x1-CIFAR10").unwrap();
    assert!(!hub.is_cached(&entry));
    let device = Device::flex();
    let model = hub.load("BiT-M-R50x1-CIFAR10", &device).unwrap();
    assert!(hub.is_cached(&entry));
    assert_eq!(
        hub.path(&entry),
        hub.cache().root().join("models/BiT-M-R50x1-CIFAR10.npz")
    );
    let (_, expected) = golden_array("r50x1.case.npz", "logits");
    assert_close(
        "logits",
        &golden_logits(&device, &model),
        &expected,
        1e-4,
        1e-4,
    );
    // Loaded again from the cache, without the network.
    hub.load("bit-m-r50x1-cifar10.npz", &device).unwrap();
    assert_eq!(server.hits(), 1);
    // A path is used as it is; its stem finds its catalog entry.
    let (path, entry) = hub.locate(hub.path(&entry).to_str().unwrap()).unwrap();
    assert_eq!(entry.unwrap().resolution, 128);
    assert!(path.is_file());
}

#[test]
fn a_damaged_or_missing_release_is_a_fetch_error() {
    let server = HttpServer::start();
    let mut bytes = std::fs::read(golden_file("tiny.weights.npz")).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 1;
    server.put("BiT-S-R50x1.npz", bytes);
    let hub = ModelHub::new(Cache::new(scratch("damaged")), server.base_url());
    let err = hub.load("BiT-S-R50x1", &Device::flex()).unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err:?}");
    assert!(err.to_string().contains("BiT-S-R50x1"), "{err}");
    let err = hub.load("BiT-S-R101x1", &Device::flex()).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[test]
fn imagenet_class_names_come_from_the_release_label_files() {
    let server = HttpServer::start();
    let lemmas: String = (0..1000).map(|i| format!("class {i}, synonym\n")).collect();
    server.put("ilsvrc2012_wordnet_lemmas.txt", lemmas.into_bytes());
    let ids: String = (0..21843).map(|i| format!("n{:08}\n", i)).collect();
    let names: String = (0..21843).map(|i| format!("thing {i}\n")).collect();
    server.put("imagenet21k_wordnet_ids.txt", ids.into_bytes());
    server.put("imagenet21k_wordnet_lemmas.txt", names.into_bytes());
    let hub = ModelHub::new(Cache::new(scratch("labels")), server.base_url());

    let names = hub.class_names(LabelSet::Ilsvrc2012).unwrap();
    assert_eq!((names.len(), names[7].as_str()), (1000, "class 7, synonym"));
    let names = hub.class_names(LabelSet::Imagenet21k).unwrap();
    assert_eq!(
        (names.len(), names[21842].as_str()),
        (21843, "n00021842 thing 21842")
    );
    assert_eq!(server.hits(), 3);
    hub.class_names(LabelSet::Imagenet21k).unwrap();
    assert_eq!(server.hits(), 3, "cached");

    // A label file with the wrong number of lines is refused.
    let server = HttpServer::start();
    server.put(
        "ilsvrc2012_wordnet_lemmas.txt",
        b"tench\ngoldfish\n".to_vec(),
    );
    let hub = ModelHub::new(Cache::new(scratch("badlabels")), server.base_url());
    let err = hub.class_names(LabelSet::Ilsvrc2012).unwrap_err();
    assert!(err.to_string().contains("line count"), "{err}");
}

#[test]
fn a_cached_release_damaged_in_place_is_downloaded_again_when_read() {
    let server = HttpServer::start();
    let bytes = std::fs::read(golden_file("tiny.weights.npz")).unwrap();
    server.put("BiT-S-R50x1.npz", bytes.clone());
    let hub = ModelHub::new(Cache::new(scratch("rot")), server.base_url());
    let entry = zoo::find("BiT-S-R50x1").unwrap();
    let path = hub.fetch(&entry).unwrap();
    // Bit rot: same length, same modification time, so the stamp still vouches for it.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut rotten = bytes.clone();
    let at = rotten.len() / 2;
    rotten[at] ^= 0x10;
    std::fs::write(&path, &rotten).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert!(hub.is_cached(&entry));
    hub.load("BiT-S-R50x1", &Device::flex()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(server.hits(), 2);
}
