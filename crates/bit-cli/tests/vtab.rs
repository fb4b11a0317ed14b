//! `bit vtab` end to end with the golden tiny network: a generated TFDS directory (dmlab) and an
//! image-list bundle (eurosat) fine-tuned and probed, results reused on a rerun and refused
//! across setups; and the real Fashion-MNIST written as a TFDS directory, on which
//! `bit vtab --mode fewshot` gives exactly the numbers of `bit fewshot`.

use std::path::Path;
use std::process::{Command, Output};

use bit_data::{Example, ImageDataset, Split, write_tfds_split};
use bit_testkit::{ScratchDir, golden_file, success_stdout};

fn bit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bit"))
        .args(args)
        .output()
        .unwrap()
}

fn png(image: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// An 8x8 image whose colour says its class (of `classes`), a little noise on top.
fn coloured(i: usize, classes: usize) -> (image::RgbImage, usize) {
    let label = i % classes;
    let image = image::RgbImage::from_fn(8, 8, |x, y| {
        let noise = ((i * 31 + (x * 7 + y * 13) as usize) % 17) as u8;
        image::Rgb([label as u8 * 23 + noise, 255 - label as u8 * 23, noise * 3])
    });
    (image, label)
}

/// dmlab as TFDS (train 820, validation 200, test 24) and eurosat (10 classes) as an image-list
/// bundle.
fn write_tasks(data: &Path) {
    let examples = |from: usize, n: usize| -> Vec<Example> {
        (from..from + n)
            .map(|i| {
                let (image, label) = coloured(i, 6);
                Example::default()
                    .with_bytes("image", vec![png(&image)])
                    .with_int64s("label", vec![label as i64])
            })
            .collect()
    };
    let dir = data.join("dmlab/2.0.1");
    write_tfds_split(&dir, "dmlab", "train", &examples(0, 820), 2).unwrap();
    write_tfds_split(&dir, "dmlab", "validation", &examples(1000, 200), 1).unwrap();
    write_tfds_split(&dir, "dmlab", "test", &examples(2000, 24), 1).unwrap();
    let bundle = data.join("eurosat");
    std::fs::create_dir_all(bundle.join("img")).unwrap();
    for i in 0..20 {
        let (image, _) = coloured(i, 10);
        image.save(bundle.join(format!("img/{i}.png"))).unwrap();
    }
    let list = |n: usize| -> String {
        (0..n)
            .map(|i| format!("img/{}.png {}\n", i % 20, i % 10))
            .collect()
    };
    std::fs::write(bundle.join("train800val200.txt"), list(1000)).unwrap();
    std::fs::write(bundle.join("test.txt"), list(20)).unwrap();
}

#[test]
fn vtab_fine_tunes_and_probes_every_task_and_reuses_finished_ones() {
    let data = ScratchDir::new("vtab-cli-data");
    write_tasks(&data);
    let logs = ScratchDir::new("vtab-cli-logs");
    let tiny = golden_file("tiny.weights.npz");
    let (datadir, logdir) = (data.to_str().unwrap(), logs.to_str().unwrap());
    let common = [
        "--model",
        tiny.to_str().unwrap(),
        "--datadir",
        datadir,
        "--tasks",
        "eurosat,dmlab",
        "--resolution",
        "32,32",
        "--workers",
        "2",
    ];
    let finetune = |logdir: &str, extra: &[&str]| {
        let mut args = vec!["vtab", "--logdir", logdir];
        args.extend(common);
        args.extend(["--steps", "2", "--batch", "8", "--batch_split", "1"]);
        args.extend(extra);
        bit(&args)
    };
    let out = success_stdout("bit", finetune(logdir, &[]));
    // VTAB's order (dmlab is structured, eurosat specialized), group means, the mean.
    let table = out.find("| task | group | top1 |").expect(&out);
    let (eurosat, dmlab) = (
        out.find("| eurosat | specialized |"),
        out.find("| dmlab | structured |"),
    );
    assert!(
        eurosat.unwrap() > table && dmlab.unwrap() > eurosat.unwrap(),
        "{out}"
    );
    assert!(
        out.contains("**structured mean**") && out.contains("**mean (2 tasks)**"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(logs.join("vtab.json")).unwrap()).unwrap();
    assert_eq!(json["tasks"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(json["tasks"][1]["task"], "dmlab");
    let top1 = json["tasks"][1]["values"][0].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    assert_eq!(json["group_means"]["structured"][0].as_f64(), Some(top1));
    // Each task was a run of its own: a checkpoint and 2 steps of the HyperRule's log.
    let log = std::fs::read_to_string(logs.join("dmlab/train.log")).unwrap();
    assert!(
        log.contains("Using a training set with 1000 images."),
        "{log}"
    );
    assert!(
        log.contains("Using a validation set with 24 images."),
        "{log}"
    );
    // dmlab's label is about objects a crop can cut away.
    assert!(log.contains("random crop false, flip true"), "{log}");
    assert!(logs.join("dmlab/checkpoint.json").is_file());

    // A rerun reuses the saved results: the same table, no new training.
    let metrics = std::fs::read_to_string(logs.join("dmlab/metrics.jsonl")).unwrap();
    assert_eq!(success_stdout("bit", finetune(logdir, &[])), out);
    assert_eq!(
        std::fs::read_to_string(logs.join("dmlab/metrics.jsonl")).unwrap(),
        metrics
    );
    // Results of another setup are refused, not mixed into the table.
    let other = finetune(logdir, &["--seed", "1"]);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success() && stderr.contains("use another --logdir"),
        "{stderr}"
    );

    // Linear probes instead: a column per number of shots.
    let probes = ScratchDir::new("vtab-cli-probes");
    let mut args = vec![
        "vtab",
        "--mode",
        "fewshot",
        "--logdir",
        probes.to_str().unwrap(),
    ];
    args.extend(common);
    args.extend(["--shots", "1,5", "--seeds", "2"]);
    let out = success_stdout("bit", bit(&args));
    assert!(out.contains("| task | group | 1-shot | 5-shot |"), "{out}");
    // Colours separate the classes: 5 images per class are plenty.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(probes.join("vtab.json")).unwrap()).unwrap();
    let five_shot = json["mean"][1].as_f64().unwrap();
    assert!(five_shot > 0.5, "{json}");

    // Unknown tasks are refused before anything runs.
    let tiny = tiny.to_str().unwrap();
    let args = [
        "vtab",
        "--model",
        tiny,
        "--datadir",
        datadir,
        "--logdir",
        logdir,
    ];
    let args = [&args[..], &["--tasks", "dmlab,imagenet"]].concat();
    let refused = bit(&args);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unknown VTAB task `imagenet`"), "{stderr}");
    // A task without data is found before any other task runs.
    let fresh = ScratchDir::new("vtab-cli-missing");
    let args = [
        "vtab",
        "--model",
        tiny,
        "--datadir",
        datadir,
        "--tasks",
        "dmlab,dtd",
    ];
    let refused = bit(&[&args[..], &["--logdir", fresh.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("VTAB task dtd needs"), "{stderr}");
    assert!(!fresh.join("dmlab").exists());
}

#[test]
fn vtab_fewshot_on_fashion_mnist_as_tfds_gives_the_numbers_of_bit_fewshot() {
    assert!(
        Path::new(bit_data::DEBIAN_FASHION_MNIST_DIR).is_dir(),
        "apt-get install dataset-fashion-mnist"
    );
    let fashion = |split, n: usize| -> Vec<Example> {
        let ds = bit_data::load_idx(
            Path::new(bit_data::DEBIAN_FASHION_MNIST_DIR),
            split,
            Some(&bit_data::FASHION_MNIST_CLASSES[..]),
        )
        .unwrap();
        (0..n)
            .map(|i| {
                Example::default()
                    .with_bytes("image", vec![png(&ds.image(i).unwrap())])
                    .with_int64s("label", vec![ds.label(i) as i64])
            })
            .collect()
    };
    // As SVHN (10 classes, val200 = train[90%:][:200], a test split): train800 = the first 800
    // training images, val200 = images 2700..2900, the first 500 test images.
    let data = ScratchDir::new("vtab-fashion");
    let dir = data.join("svhn_cropped/3.0.0");
    write_tfds_split(
        &dir,
        "svhn_cropped",
        "train",
        &fashion(Split::Train, 3000),
        3,
    )
    .unwrap();
    write_tfds_split(&dir, "svhn_cropped", "test", &fashion(Split::Valid, 500), 1).unwrap();
    let tiny = golden_file("tiny.weights.npz");
    let (tiny, datadir) = (tiny.to_str().unwrap(), data.to_str().unwrap());
    let probes = ["--shots", "1,5", "--seeds", "2", "--workers", "2"];
    let logs = ScratchDir::new("vtab-fashion-logs");
    let mut args = vec![
        "vtab", "--mode", "fewshot", "--tasks", "svhn", "--model", tiny,
    ];
    args.extend(["--datadir", datadir, "--logdir", logs.to_str().unwrap()]);
    args.extend(["--resolution", "32,32"]);
    args.extend(probes);
    success_stdout("bit", bit(&args));
    let vtab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(logs.join("vtab.json")).unwrap()).unwrap();
    // `bit fewshot` on the same data, its stdout and its JSON.
    let fewshot_run = |name: &str, extra: &[&str]| {
        let json = logs.join(name);
        let mut args = vec!["fewshot", "--model", tiny, "--dataset", "vtab/svhn"];
        args.extend(["--datadir", datadir, "--resolution", "32"]);
        args.extend(["--out", json.to_str().unwrap()]);
        args.extend(probes.iter().chain(extra));
        let out = success_stdout("bit fewshot", bit(&args));
        let text = std::fs::read_to_string(&json).unwrap();
        (
            out,
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        )
    };
    let (_, fewshot) = fewshot_run("fewshot.json", &[]);
    assert_eq!(fewshot["test_examples"], 500);
    for (column, score) in fewshot["scores"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            vtab["tasks"][0]["values"][column], score["mean"],
            "{vtab}\n{fewshot}"
        );
    }
    // Real images: a random tiny network's features with 5 per class far above chance (10 %).
    assert!(vtab["mean"][1].as_f64().unwrap() > 0.25, "{vtab}");
    // An inner representation: block3's activations, averaged (1024 features).
    let (out, inner) = fewshot_run("stage3.json", &["--representation", "stage3"]);
    assert!(out.contains("stage3 features"), "{out}");
    assert_eq!(inner["representation"], "stage3");
    assert!(
        inner["scores"][1]["mean"].as_f64().unwrap() > 0.25,
        "{inner}"
    );
    assert_ne!(inner["scores"], fewshot["scores"]);
}
