//! `bit models`, `download`, `predict`, `embed`, `eval`, `export` and `train`'s download, as a
//! user runs them: the cache and base URL come from `$BIT_HOME` and `$BIT_MODELS_URL`, which
//! point at a scratch directory and a local server serving the golden checkpoints under
//! released names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bit_testkit::{HttpServer, golden_file};

fn scratch(name: &str) -> PathBuf {
    let dir = bit_testkit::scratch_root("bit-cli-zoo").join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bit(home: &Path, base: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bit"))
        .args(args)
        .env("BIT_HOME", home)
        .env("BIT_MODELS_URL", base)
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn failed(output: Output) -> String {
    assert!(!output.status.success());
    String::from_utf8(output.stderr).unwrap()
}

/// `root/<class>/img<i>.png`, 48x40 gradients that differ per image.
fn images(root: &Path, classes: &[&str], per_class: u32) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            let k = c as u32 * 7 + i;
            let img = image::RgbImage::from_fn(48, 40, |x, y| {
                image::Rgb([
                    (x * 5 + k * 30) as u8,
                    (y * 6) as u8,
                    ((x ^ y) * 3 + k) as u8,
                ])
            });
            let path = root.join(class).join(format!("img{i}.png"));
            img.save(&path).unwrap();
            paths.push(path);
        }
    }
    paths
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn models_lists_and_filters_the_catalog() {
    let home = scratch("models");
    let out = ok(bit(
        &home,
        "https://mirror.example/bit",
        &["models", "vtab", "R50x1", "dtd", "--urls"],
    ));
    assert_eq!(out.matches("vtab/BiT-M-R50x1-run").count(), 6, "{out}"); // 3 names + 3 URLs
    assert!(
        out.contains("https://mirror.example/bit/vtab/BiT-M-R50x1-run2-dtd.npz"),
        "{out}"
    );
    assert!(out.contains("3 models"), "{out}");
    let all = ok(bit(&home, "x", &["models"]));
    assert!(all.contains("312 models"), "{all}");
    assert!(failed(bit(&home, "x", &["models", "BiT-L"])).contains("no released model"));
}

#[test]
fn download_then_predict_by_name_with_a_verified_cache() {
    let home = scratch("predict");
    let server = HttpServer::serving_golden("BiT-M-R50x1-CIFAR10.npz", "r50x1.weights.npz");
    let out = ok(bit(
        &home,
        server.base_url(),
        &["download", "BiT-M-R50x1-CIFAR10"],
    ));
    let cached = home.join("models/BiT-M-R50x1-CIFAR10.npz");
    assert!(out.contains(s(&cached)), "{out}");
    let listed = ok(bit(&home, server.base_url(), &["models", "CIFAR10"]));
    assert!(listed.contains("yes"), "shown as cached: {listed}");

    let imgs = images(&scratch("predict-images"), &["x"], 2);
    let out = ok(bit(
        &home,
        server.base_url(),
        &[
            "predict",
            "--model",
            "BiT-M-R50x1-CIFAR10",
            "--json",
            s(&imgs[0]),
            s(&imgs[1]),
        ],
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, img) in lines.iter().zip(&imgs) {
        assert_eq!(line["image"], s(img));
        let p: Vec<f64> = line["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["probability"].as_f64().unwrap())
            .collect();
        assert_eq!(p.len(), 5);
        assert!(
            p.windows(2).all(|w| w[0] >= w[1])
                && p[0] <= 1.0
                && p.iter().sum::<f64>() <= 1.0 + 1e-6,
            "{p:?}"
        );
    }
    assert_eq!(server.hits(), 1, "predict used the cached download");
}

#[test]
fn embed_eval_and_export_on_a_class_folder() {
    let home = scratch("embed");
    let dir = scratch("embed-data");
    let root = dir.join("folder");
    images(&root, &["cats", "dogs"], 3);
    let tiny = golden_file("tiny.weights.npz");
    let base = "http://127.0.0.1:9";

    let embed = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "embed",
            "--model",
            s(&tiny),
            "--dataset",
            "folder",
            "--datadir",
            s(&root),
            "--resolution",
            "64",
            "--batch",
            "4",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        ok(bit(&home, base, &args))
    };
    let feats = dir.join("features.npy");
    let out = embed(&feats, &[]);
    assert!(out.contains("wrote 6 features of 2048 dims"), "{out}");
    let npy = npyz::NpyFile::new(std::fs::File::open(&feats).unwrap()).unwrap();
    assert_eq!(npy.shape(), &[6, 2048]);
    let labels =
        npyz::NpyFile::new(std::fs::File::open(dir.join("features.labels.npy")).unwrap()).unwrap();
    assert_eq!(labels.into_vec::<i64>().unwrap(), vec![0, 0, 0, 1, 1, 1]);

    // Inner layers: several at once, one file each, pooled or whole maps (NCHW).
    let read = |path: &Path| {
        let npy = npyz::NpyFile::new(std::fs::File::open(path).unwrap()).unwrap();
        (npy.shape().to_vec(), npy.into_vec::<f32>().unwrap())
    };
    let layers = dir.join("layers.npy");
    let out = embed(&layers, &["--layer", "stage3,final"]);
    assert!(
        out.contains("wrote 6 stage3 features of shape [1024]"),
        "{out}"
    );
    let (shape, stage3) = read(&dir.join("layers.stage3.npy"));
    assert_eq!(shape, [6, 1024]);
    // `final` pooled is the pre-logits `bit embed` writes by default.
    let (shape, last) = read(&dir.join("layers.final.npy"));
    let (_, default) = read(&feats);
    assert_eq!(shape, [6, 2048]);
    assert!(bit_testkit::max_relative_gap(&last, &default) < 1e-5);
    // Whole maps at stride 16: 64 px -> 4 x 4, whose averages are the pooled features.
    let maps = dir.join("maps.npy");
    let out = embed(&maps, &["--layer", "stage3", "--maps"]);
    assert!(out.contains("stage3 maps of shape [1024, 4, 4]"), "{out}");
    let (shape, values) = read(&maps);
    assert_eq!(shape, [6, 1024, 4, 4]);
    let averaged: Vec<f32> = values
        .chunks(16)
        .map(|m| m.iter().sum::<f32>() / 16.0)
        .collect();
    assert!(bit_testkit::max_relative_gap(&averaged, &stage3) < 1e-5);
    let err = failed(bit(
        &home,
        base,
        &[
            "embed",
            "--model",
            s(&tiny),
            "--images",
            s(&feats),
            "--out",
            s(&maps),
            "--layer",
            "stage9",
        ],
    ));
    assert!(err.contains("stage9"), "{err}");

    // The tiny head has 10 unnamed classes: folders need a class map.
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            s(&tiny),
            "--dataset",
            "folder",
            "--datadir",
            s(&root),
            "--resolution",
            "64",
        ];
        args.extend_from_slice(extra);
        bit(&home, base, &args)
    };
    assert!(failed(eval(&[])).contains("class map"));
    let map = dir.join("map.txt");
    std::fs::write(&map, "cats 3\ndogs 8\n").unwrap();
    let out = ok(eval(&["--class_map", s(&map)]));
    assert!(
        out.contains("on 6 images at 64 px") && out.contains("top-1"),
        "{out}"
    );

    // Export keeps the function and the resolution (64 px from the metadata, not 224).
    let exported = dir.join("tiny.safetensors");
    ok(bit(
        &home,
        base,
        &[
            "export",
            "--model",
            s(&tiny),
            "--resolution",
            "64",
            "--out",
            s(&exported),
        ],
    ));
    let img = s(&root.join("cats/img0.png")).to_string();
    let from_npz = ok(bit(
        &home,
        base,
        &[
            "predict",
            "--model",
            s(&tiny),
            "--resolution",
            "64",
            "--json",
            &img,
        ],
    ));
    let from_st = ok(bit(
        &home,
        base,
        &["predict", "--model", s(&exported), "--json", &img],
    ));
    let top = |out: &str| -> Vec<(u64, f64)> {
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["class"].as_u64().unwrap(),
                    t["probability"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    for ((c1, p1), (c2, p2)) in top(&from_npz).into_iter().zip(top(&from_st)) {
        assert_eq!(c1, c2);
        assert!((p1 - p2).abs() < 1e-6);
    }
    // And back to the official layout.
    let npz = dir.join("again.npz");
    ok(bit(
        &home,
        base,
        &["export", "--model", s(&exported), "--out", s(&npz)],
    ));
    assert!(ok(bit(&home, base, &["inspect", s(&npz)])).contains("head:          10 classes"));
}

#[test]
fn train_downloads_a_missing_release_and_its_model_predicts_with_class_names() {
    assert!(
        Path::new(bit_data::DEBIAN_FASHION_MNIST_DIR).is_dir(),
        "apt-get install dataset-fashion-mnist"
    );
    let home = scratch("train");
    let logdir = scratch("train-logs");
    // Served under a released name; the trainer reads the architecture from the file.
    let server = HttpServer::serving_golden("BiT-M-R50x1-CIFAR10.npz", "tiny.weights.npz");
    let out = ok(bit(
        &home,
        server.base_url(),
        &[
            "train",
            "--name",
            "dl",
            "--model",
            "BiT-M-R50x1-CIFAR10",
            "--bit_pretrained_dir",
            s(&logdir),
            "--logdir",
            s(&logdir),
            "--dataset",
            "fashion_mnist",
            "--examples_per_class",
            "2",
            "--batch",
            "8",
            "--steps",
            "2",
            "--resolution",
            "40,32",
            "--max_eval_examples",
            "16",
            "--workers",
            "2",
        ],
    ));
    assert!(out.contains("done after 2 steps"), "{out}");
    assert!(home.join("models/BiT-M-R50x1-CIFAR10.npz").is_file());
    assert_eq!(server.hits(), 1);

    // The fine-tuned model knows its classes and resolution.
    let img = images(&scratch("train-img"), &["x"], 1).remove(0);
    let model = logdir.join("dl/model.safetensors");
    let out = ok(bit(
        &home,
        server.base_url(),
        &["predict", "--model", s(&model), "--top", "10", s(&img)],
    ));
    for class in ["T-shirt/top", "Ankle boot", "Sneaker"] {
        assert!(out.contains(class), "{class} missing from {out}");
    }

    // Converted to timm's and transformers' layouts, the trained model keeps its class names
    // and resolution and evaluates the same (their StdConv eps, 1e-8 against BiT's 1e-10,
    // moves logits by ~1e-6: the same predictions, the loss within 1e-4).
    let data = scratch("train-eval");
    images(&data, &["shirts", "boots"], 4);
    let map = data.join("map.txt");
    std::fs::write(&map, "shirts 0\nboots 9\n").unwrap();
    // `bit eval` of the folder (and `extra` arguments): its output.
    let eval_output = |model: &Path, extra: &[&str]| -> String {
        let mut args = vec![
            "eval",
            "--model",
            s(model),
            "--dataset",
            "folder",
            "--datadir",
            s(&data),
            "--class_map",
            s(&map),
        ];
        args.extend_from_slice(extra);
        ok(bit(&home, server.base_url(), &args))
    };
    let eval_with = |model: &Path, extra: &[&str]| -> (String, f64) {
        let out = eval_output(model, extra);
        let (_, scores) = out.split_once(": ").unwrap();
        let (accuracy, rest) = scores.split_once(", loss ").unwrap();
        let (loss, size) = rest.split_once(' ').unwrap();
        assert!(size.ends_with("on 8 images at 32 px\n"), "{out}");
        (accuracy.to_string(), loss.parse().unwrap())
    };
    let eval = |model: &Path| eval_with(model, &[]);
    let (accuracy, loss) = eval(&model);
    for format in ["timm", "hf"] {
        let dir = logdir.join(format!("dl-{format}"));
        ok(bit(
            &home,
            server.base_url(),
            &[
                "export",
                "--model",
                s(&model),
                "--format",
                format,
                "--out",
                s(&dir),
            ],
        ));
        let (again, again_loss) = eval(&dir);
        assert_eq!(again, accuracy, "{format}");
        assert!(
            (again_loss - loss).abs() < 1e-4,
            "{format}: {again_loss} vs {loss}"
        );
        let out = ok(bit(
            &home,
            server.base_url(),
            &["predict", "--model", s(&dir), "--top", "10", s(&img)],
        ));
        assert!(out.contains("Ankle boot"), "{format}: {out}");
    }

    // Half precision and int8: a half / a quarter of the file, read back as f32 everywhere,
    // checked on the data. (format, --dtype, output, size bound in percent, loss tolerance:
    // f16 keeps 11 significant bits, int8 127 steps of each channel's range.)
    let cases = [
        ("safetensors", "f16", "dl-f16.safetensors", 51, 1e-2),
        ("hf", "f16", "dl-f16-hf", 51, 1e-2),
        ("safetensors", "int8", "dl-int8.safetensors", 27, 5e-2),
    ];
    for (format, dtype, out, percent, tolerance) in cases {
        let out = logdir.join(out);
        let report = ok(bit(
            &home,
            server.base_url(),
            &[
                "export",
                "--model",
                s(&model),
                "--format",
                format,
                "--dtype",
                dtype,
                "--out",
                s(&out),
                "--check_on",
                "folder",
                "--datadir",
                s(&data),
                "--class_map",
                s(&map),
            ],
        ));
        // "top-1 on 8 images: A% as f32, B% as exported (f16, +C points); loss L0 -> L1"
        let (_, losses) = report.split_once("; loss ").expect("a check report");
        let (l0, l1) = losses.trim().split_once(" -> ").unwrap();
        let (l0, l1): (f64, f64) = (l0.parse().unwrap(), l1.parse().unwrap());
        assert!((l0 - loss).abs() < 1e-4, "{report}");
        assert!(
            (l1 - l0).abs() < tolerance * l0.max(1.0),
            "{dtype}: {report}"
        );
        let weights = if format == "hf" {
            out.join("model.safetensors")
        } else {
            out.clone()
        };
        let small = std::fs::metadata(&weights).unwrap().len();
        let full = std::fs::metadata(&model).unwrap().len();
        assert!(
            small < full * percent / 100,
            "{dtype}: {small} bytes against {full}"
        );
    }
    // int8 compute: asked for, on the f32 model and on the int8 file, the convolutions run in
    // 8-bit integers (the losses move off the f32 ones, and stay near them); the int8 file
    // runs so by itself where the CPU has the kernels, and in f32 when told.
    let int8_file = logdir.join("dl-int8.safetensors");
    let (_, int8_model_loss) = eval_with(&model, &["--precision", "int8"]);
    let (_, int8_file_loss) = eval_with(&int8_file, &["--precision", "int8"]);
    let (_, f32_file_loss) = eval_with(&int8_file, &["--precision", "f32"]);
    let (_, own_loss) = eval(&int8_file);
    for (what, int8_loss, f32_loss) in [
        ("model", int8_model_loss, loss),
        ("file", int8_file_loss, f32_file_loss),
    ] {
        assert_ne!(int8_loss, f32_loss, "int8 {what}: the f32 kernels ran");
        assert!(
            (int8_loss - f32_loss).abs() < 5e-2 * f32_loss.max(1.0),
            "int8 {what}: {int8_loss} against {f32_loss}"
        );
    }
    let expected = if bit_model::Precision::has_int8_kernels() {
        int8_file_loss
    } else {
        f32_file_loss
    };
    assert_eq!(own_loss, expected);
    // Training in int8 is refused before anything runs.
    let err = failed(bit(
        &home,
        server.base_url(),
        &[
            "train",
            "--name",
            "int8",
            "--model",
            s(&model),
            "--logdir",
            s(&logdir),
            "--dataset",
            "fashion_mnist",
            "--precision",
            "int8",
        ],
    ));
    assert!(err.contains("int8 is for inference"), "{err}");

    let err = failed(bit(
        &home,
        server.base_url(),
        &[
            "export",
            "--model",
            s(&model),
            "--quantize",
            "int8",
            "--format",
            "timm",
            "--out",
            s(&logdir.join("x")),
        ],
    ));
    assert!(err.contains("int8"), "{err}");
    let err = failed(bit(
        &home,
        server.base_url(),
        &[
            "export",
            "--model",
            s(&model),
            "--dtype",
            "bf16",
            "--out",
            s(&logdir.join("x.npz")),
        ],
    ));
    assert!(err.contains("float32 weights only"), "{err}");

    // ONNX: the fine-tuned model exports with its class names and resolution (the graph's
    // numerics: crates/bit-model/src/onnx.rs's tests and scripts/onnx_check.py).
    let onnx = logdir.join("dl.onnx");
    ok(bit(
        &home,
        server.base_url(),
        &["export", "--model", s(&model), "--out", s(&onnx)],
    ));
    let bytes = std::fs::read(&onnx).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Ankle boot") && text.contains("InstanceNormalization"));
    // What another runtime needs to reproduce `bit eval` exactly: the tensors the network was
    // fed, its logits and the labels (scripts/onnx_tract_check.sh runs the graph on them).
    let record = logdir.join("record");
    let out = eval_output(&model, &["--max_examples", "5", "--record", s(&record)]);
    assert!(out.contains("on 5 images at 32 px"), "{out}");
    let read = |name: &str| {
        let npy = npyz::NpyFile::new(std::fs::File::open(record.join(name)).unwrap()).unwrap();
        npy.shape().to_vec()
    };
    assert_eq!(read("inputs.npy"), [5, 3, 32, 32]);
    assert_eq!(read("logits.npy"), [5, 10]);
    assert_eq!(read("labels.npy"), [5]);
    let logits: Vec<f32> =
        npyz::NpyFile::new(std::fs::File::open(record.join("logits.npy")).unwrap())
            .unwrap()
            .into_vec()
            .unwrap();
    let labels: Vec<i64> =
        npyz::NpyFile::new(std::fs::File::open(record.join("labels.npy")).unwrap())
            .unwrap()
            .into_vec()
            .unwrap();
    // The recorded logits are the ones scored: their top-1 is the printed one.
    let correct = logits
        .chunks_exact(10)
        .zip(&labels)
        .filter(|(row, label)| {
            let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            best as i64 == **label
        })
        .count();
    let printed = format!("top-1 {:.2}%", 100.0 * correct as f64 / 5.0);
    assert!(out.contains(&printed), "{printed} not in {out}");
    let err = failed(bit(
        &home,
        server.base_url(),
        &[
            "export",
            "--model",
            s(&model),
            "--dtype",
            "f16",
            "--out",
            s(&onnx),
        ],
    ));
    assert!(err.contains("float32 weights only"), "{err}");

    // And fine-tuning starts from a hub directory as from a release; head-only (`--train
    // head`) leaves every other weight as it was.
    let out = ok(bit(
        &home,
        server.base_url(),
        &[
            "train",
            "--name",
            "from-timm",
            "--model",
            s(&logdir.join("dl-timm")),
            "--logdir",
            s(&logdir),
            "--dataset",
            "fashion_mnist",
            "--examples_per_class",
            "1",
            "--batch",
            "4",
            "--steps",
            "2",
            "--resolution",
            "40,32",
            "--max_eval_examples",
            "8",
            "--workers",
            "2",
            "--train",
            "head",
        ],
    ));
    assert!(out.contains("done after 2 steps"), "{out}");
    let log = std::fs::read_to_string(logdir.join("from-timm/train.log")).unwrap();
    assert!(
        log.contains("Training head; the rest of the network is frozen"),
        "{log}"
    );
    let device = burn::tensor::Device::flex();
    let start = bit_model::HubCheckpoint::open(logdir.join("dl-timm"))
        .unwrap()
        .load(&device)
        .unwrap();
    let tuned =
        bit_model::ResNetV2::from_safetensors(logdir.join("from-timm/model.safetensors"), &device)
            .unwrap();
    use bit_testkit::parameter_values as values;
    assert_eq!(values(&tuned.root), values(&start.root));
    for (b, block) in tuned.body.iter().enumerate() {
        assert_eq!(values(block), values(&start.body[b]), "stage {}", b + 1);
    }
    assert_eq!(values(&tuned.head.gn), values(&start.head.gn));
}

#[test]
fn init_writes_a_seeded_random_checkpoint_that_predict_and_inspect_read() {
    let dir = scratch("init");
    let home = dir.join("home");
    let base = "http://127.0.0.1:9";
    let (a, b, c) = (dir.join("a.npz"), dir.join("b.npz"), dir.join("c.npz"));
    for (out, seed) in [(&a, "0"), (&b, "0"), (&c, "1")] {
        let args = [
            "init",
            "--arch",
            "tiny",
            "--head",
            "7",
            "--out",
            s(out),
            "--seed",
            seed,
        ];
        assert!(ok(bit(&home, base, &args)).contains("7-way head"));
    }
    let shown = ok(bit(&home, base, &["inspect", s(&a)]));
    assert!(shown.contains("head:          7 classes"), "{shown}");
    // The same seed gives the same weights (the same predictions to the last digit), another
    // seed others.
    let image = &images(&dir.join("imgs"), &["x"], 1)[0];
    let predict = |model: &Path| {
        let args = [
            "predict",
            "--model",
            s(model),
            "--resolution",
            "32",
            "--json",
            s(image),
        ];
        ok(bit(&home, base, &args))
    };
    assert!(predict(&a).contains("\"class\""));
    assert_eq!(predict(&a), predict(&b));
    assert_ne!(predict(&a), predict(&c));
    let err = failed(bit(
        &home,
        base,
        &["init", "--arch", "R9x9", "--out", s(&c)],
    ));
    assert!(
        err.contains("--arch `R9x9`") && err.contains("R50x1"),
        "{err}"
    );
    // 205 billion parameters: a typed error and exit 1, not an abort (134) on the allocation.
    let absurd = bit(
        &home,
        base,
        &[
            "init",
            "--arch",
            "tiny",
            "--head",
            "100000000",
            "--out",
            s(&c),
        ],
    );
    assert_eq!(absurd.status.code(), Some(1), "{absurd:?}");
    let err = String::from_utf8_lossy(&absurd.stderr);
    assert!(
        err.contains("parameters") && err.contains("head size"),
        "{err}"
    );
}

#[test]
fn class_names_with_terminal_escapes_are_printed_escaped() {
    let dir = scratch("escapes");
    let home = dir.join("home");
    let base = "http://127.0.0.1:9";
    let model = dir.join("m.npz");
    let args = ["init", "--arch", "tiny", "--head", "2", "--out", s(&model)];
    ok(bit(&home, base, &args));
    // A label file whose names would recolour the terminal and forge a line.
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "\u{1b}[31mred\nbell\u{7}\n").unwrap();
    let image = &images(&dir.join("imgs"), &["x"], 1)[0];
    let args = [
        "predict",
        "--model",
        s(&model),
        "--resolution",
        "32",
        "--labels",
        s(&labels),
        s(image),
    ];
    let out = ok(bit(&home, base, &args));
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(
        out.contains("\\u{1b}[31mred") && out.contains("bell\\u{7}"),
        "{out}"
    );
}

#[test]
fn outputs_never_replace_links_directories_or_devices() {
    let dir = scratch("outs");
    let home = dir.join("home");
    let base = "http://127.0.0.1:9";
    let target = dir.join("target.npz");
    std::fs::write(&target, b"keep").unwrap();
    let link = dir.join("link.npz");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let sub = dir.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    for out in [&link, &sub] {
        let args = ["init", "--arch", "tiny", "--head", "2", "--out", s(out)];
        let err = failed(bit(&home, base, &args));
        assert!(err.contains("refusing to replace it"), "{err}");
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    assert!(sub.is_dir());
}

#[test]
fn hf_names_download_a_hub_repository_once_and_predict_with_its_class_names() {
    let home = scratch("hf");
    let work = scratch("hf-work");
    let hf_home = work.join("hf-home");
    // The repository: the golden tiny network as `bit export --format timm` writes it, with
    // its class names, served as the hub serves it (API listing + resolve URLs).
    let names = work.join("names.txt");
    let classes: Vec<String> = (0..10).map(|i| format!("kind {i}")).collect();
    std::fs::write(&names, classes.join("\n")).unwrap();
    let repo = work.join("repo");
    ok(bit(
        &home,
        "x",
        &[
            "export",
            "--model",
            s(&golden_file("tiny.weights.npz")),
            "--resolution",
            "64",
            "--labels",
            s(&names),
            "--format",
            "timm",
            "--out",
            s(&repo),
        ],
    ));
    let server = HttpServer::start();
    let commit = "feedfacefeedfacefeedfacefeedfacefeedface";
    let mut siblings = Vec::new();
    for file in ["config.json", "model.safetensors"] {
        let body = std::fs::read(repo.join(file)).unwrap();
        siblings.push(serde_json::json!({
            "rfilename": file, "size": body.len(), "blobId": format!("{:040}", siblings.len()),
            "lfs": {"sha256": bit_hub::sha256_hex(&body), "size": body.len()},
        }));
        server.put(&format!("someone/tiny-bit/resolve/{commit}/{file}"), body);
    }
    let listing = serde_json::json!({"sha": commit, "siblings": siblings});
    server.put(
        "api/models/someone/tiny-bit/revision/main?blobs=true",
        listing.to_string().into_bytes(),
    );
    let img = images(&work, &["x"], 1).remove(0);
    let predict = || {
        Command::new(env!("CARGO_BIN_EXE_bit"))
            .args([
                "predict",
                "--model",
                "hf:someone/tiny-bit",
                "--top",
                "10",
                s(&img),
            ])
            .env("BIT_HOME", &home)
            .env("BIT_MODELS_URL", "http://127.0.0.1:9")
            .env("HF_HOME", &hf_home)
            .env("HF_ENDPOINT", server.base_url())
            .env("HF_TOKEN", "hf_test")
            .output()
            .unwrap()
    };
    let out = ok(predict());
    assert!(out.contains("kind 3") && out.contains("kind 9"), "{out}");
    let snapshot = hf_home.join(format!("hub/models--someone--tiny-bit/snapshots/{commit}"));
    assert!(snapshot.join("model.safetensors").is_file());
    // Cached: the second run only asks for the listing; the token went with every request.
    let before = server.hits();
    ok(predict());
    assert_eq!(server.hits(), before + 1);
    assert!(
        server
            .authorizations()
            .iter()
            .all(|a| a.as_deref() == Some("Bearer hf_test"))
    );

    // `bit models` names the hub copies of the releases.
    let listed = ok(bit(&home, "x", &["models", "google/bit-50"]));
    assert!(
        listed.contains("BiT-M-R50x1-ILSVRC2012") && listed.contains("= hf:google/bit-50"),
        "{listed}"
    );
}
