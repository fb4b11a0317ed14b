//! Checkpoint files the tests generate: round trips through the official `.npz` layout and the
//! native safetensors format, and every kind of bad file giving its documented, typed error.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bit_model::{Error, NpzCheckpoint, ResNetV2, ResNetV2Config};
use burn::tensor::{Device, Distribution, Tensor};
use npyz::WriterBuilder;
use npyz::npz::{NpzArchive, NpzWriter};

fn scratch(name: &str) -> PathBuf {
    let dir = bit_testkit::scratch_root("bit-model-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A small random BiT ([2, 1, 1, 1], width 1, 5 classes) written once in the official layout.
fn reference() -> &'static (ResNetV2, PathBuf) {
    static REFERENCE: OnceLock<(ResNetV2, PathBuf)> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let model = ResNetV2Config::new([2, 1, 1, 1], 1, 5).init(&Device::flex());
        let path = scratch("reference.npz");
        model.save_npz(&path).unwrap();
        (model, path)
    })
}

fn input() -> Tensor<4> {
    Tensor::random(
        [2, 3, 64, 64],
        Distribution::Uniform(-1.0, 1.0),
        &Device::flex(),
    )
}

fn logits(model: &ResNetV2, x: Tensor<4>) -> Vec<f32> {
    model.forward(x).into_data().try_into_vec().unwrap()
}

enum Array {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Copies the reference checkpoint, letting `edit` rename, reshape, retype, drop or add arrays.
fn rewrite(
    name: &str,
    edit: impl Fn(&str, &[u64], Vec<f32>) -> Vec<(String, Vec<u64>, Array)>,
) -> PathBuf {
    let mut src = NpzArchive::open(&reference().1).unwrap();
    let names: Vec<String> = src.array_names().map(String::from).collect();
    let dst = scratch(name);
    let mut out = NpzWriter::create(&dst).unwrap();
    for key in names {
        let npy = src.by_name(&key).unwrap().unwrap();
        let shape = npy.shape().to_vec();
        for (key, shape, array) in edit(&key, &shape, npy.into_vec().unwrap()) {
            match array {
                Array::F32(v) => write_array(&mut out, &key, &shape, v),
                Array::F64(v) => write_array(&mut out, &key, &shape, v),
            }
        }
    }
    out.zip_writer().finish().unwrap();
    dst
}

fn write_array<T: npyz::AutoSerialize>(
    out: &mut NpzWriter<std::io::BufWriter<std::fs::File>>,
    key: &str,
    shape: &[u64],
    values: Vec<T>,
) {
    let mut w = out
        .array::<T>(key, Default::default())
        .unwrap()
        .default_dtype()
        .shape(shape)
        .begin_nd()
        .unwrap();
    w.extend(values).unwrap();
    w.finish().unwrap();
}

fn keep(key: &str, shape: &[u64], v: Vec<f32>) -> Vec<(String, Vec<u64>, Array)> {
    vec![(key.to_string(), shape.to_vec(), Array::F32(v))]
}

fn load_err(path: &Path) -> Error {
    ResNetV2::from_npz(path, &Device::flex()).expect_err("loading must fail")
}

#[test]
fn npz_round_trip_is_exact() {
    let (model, path) = reference();
    let ckpt = NpzCheckpoint::open(path).unwrap();
    assert_eq!(ckpt.block_units(), [2, 1, 1, 1]);
    assert_eq!(
        (ckpt.width_factor(), ckpt.head_size(), ckpt.architecture()),
        (1, Some(5), None)
    );
    let loaded = ckpt.load(&Device::flex()).unwrap();
    assert_eq!(loaded.config(), model.config());
    let x = input();
    assert_eq!(logits(&loaded, x.clone()), logits(model, x));
}

#[test]
fn numbered_conv_keys_and_extra_arrays_load() {
    let path = rewrite("numbered.npz", |key, shape, v| {
        let mut out = keep(
            &key.replace("/standardized_conv2d/", "/standardized_conv2d_7/"),
            shape,
            v,
        );
        if key == "resnet/group_norm/beta" {
            out.push(("global_step".into(), vec![1], Array::F32(vec![1.0])));
        }
        out
    });
    let loaded = ResNetV2::from_npz(&path, &Device::flex()).unwrap();
    let x = input();
    assert_eq!(logits(&loaded, x.clone()), logits(&reference().0, x));
}

#[test]
fn truncated_archive_is_corrupt() {
    let bytes = std::fs::read(&reference().1).unwrap();
    for len in [0, 100, bytes.len() / 2, bytes.len() - 10] {
        let path = scratch(&format!("truncated-{len}.npz"));
        std::fs::write(&path, &bytes[..len]).unwrap();
        let err = load_err(&path);
        assert!(matches!(err, Error::Corrupt { .. }), "{len} bytes: {err:?}");
        assert!(err.to_string().contains("truncated-"), "{err}");
    }
}

#[test]
fn corrupted_array_data_is_reported_with_its_key() {
    // Flip bytes inside the largest array's data: the zip CRC check catches it on read.
    let mut bytes = std::fs::read(&reference().1).unwrap();
    let mid = bytes.len() / 3;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let path = scratch("flipped.npz");
    std::fs::write(&path, bytes).unwrap();
    match load_err(&path) {
        Error::Corrupt { reason, .. } => assert!(reason.contains("array `resnet/"), "{reason}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn missing_key_is_named() {
    let gone = "resnet/block2/unit01/b/group_norm/beta";
    let path = rewrite("missing.npz", |key, shape, v| {
        if key == gone {
            vec![]
        } else {
            keep(key, shape, v)
        }
    });
    match load_err(&path) {
        Error::MissingKey { key, .. } => assert_eq!(key, gone),
        other => panic!("expected MissingKey, got {other:?}"),
    }
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let target = "resnet/block3/unit01/c/standardized_conv2d/kernel";
    let path = rewrite("shape.npz", |key, shape, v| {
        if key == target {
            let half = v.len() / 2;
            vec![(
                key.into(),
                vec![1, 1, 256, 512],
                Array::F32(v[..half].to_vec()),
            )]
        } else {
            keep(key, shape, v)
        }
    });
    let err = load_err(&path);
    match &err {
        Error::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(key, target);
            assert_eq!(
                (expected.as_slice(), found.as_slice()),
                ([1, 1, 256, 1024].as_slice(), [1, 1, 256, 512].as_slice())
            );
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("[1, 1, 256, 1024]"), "{err}");
}

#[test]
fn float64_array_is_a_dtype_error() {
    let target = "resnet/block1/unit02/a/group_norm/gamma";
    let path = rewrite("f64.npz", |key, shape, v| {
        let array = if key == target {
            Array::F64(v.into_iter().map(f64::from).collect())
        } else {
            Array::F32(v)
        };
        vec![(key.into(), shape.to_vec(), array)]
    });
    match load_err(&path) {
        Error::DType { key, found, .. } => {
            assert_eq!((key.as_str(), found.as_str()), (target, "<f8"))
        }
        other => panic!("expected DType, got {other:?}"),
    }
}

#[test]
fn two_spellings_of_one_kernel_are_ambiguous() {
    let target = "resnet/block4/unit01/b/standardized_conv2d/kernel";
    let path = rewrite("duplicate.npz", |key, shape, v| {
        let mut out = keep(key, shape, v.clone());
        if key == target {
            out.push((
                key.replace("conv2d/", "conv2d_1/"),
                shape.to_vec(),
                Array::F32(v),
            ));
        }
        out
    });
    assert!(matches!(load_err(&path), Error::DuplicateKey { .. }));
}

#[test]
fn gap_in_unit_numbering_is_not_bit() {
    let path = rewrite("gap.npz", |key, shape, v| {
        keep(&key.replace("block1/unit02", "block1/unit03"), shape, v)
    });
    match load_err(&path) {
        Error::Architecture { reason, .. } => assert!(reason.contains("block1"), "{reason}"),
        other => panic!("expected Architecture, got {other:?}"),
    }
}

#[test]
fn headless_checkpoint_loads_only_with_a_new_head() {
    let path = rewrite("headless.npz", |key, shape, v| {
        if key.starts_with("resnet/head/") {
            vec![]
        } else {
            keep(key, shape, v)
        }
    });
    assert_eq!(NpzCheckpoint::open(&path).unwrap().head_size(), None);
    assert!(matches!(load_err(&path), Error::MissingKey { .. }));
    let model = ResNetV2::from_npz_with_zero_head(&path, 3, &Device::flex()).unwrap();
    assert_eq!(logits(&model, input()), vec![0.0; 6]);
}

#[test]
fn safetensors_round_trip_is_exact() {
    let (model, _) = reference();
    let path = scratch("model.safetensors");
    model.save_safetensors(&path).unwrap();
    model.save_safetensors(&path).unwrap(); // overwriting is fine
    let loaded = ResNetV2::from_safetensors(&path, &Device::flex()).unwrap();
    assert_eq!(loaded.config(), model.config());
    let x = input();
    assert_eq!(logits(&loaded, x.clone()), logits(model, x));
}

#[test]
fn safetensors_errors_are_typed() {
    let dir_missing = scratch("no-such-dir").join("model.safetensors");
    assert!(matches!(
        reference().0.save_safetensors(&dir_missing),
        Err(Error::Save { .. })
    ));
    let npz_as_safetensors = ResNetV2::from_safetensors(&reference().1, &Device::flex());
    assert!(matches!(npz_as_safetensors, Err(Error::Corrupt { .. })));
    let absent = ResNetV2::from_safetensors(scratch("absent.safetensors"), &Device::flex());
    assert!(matches!(absent, Err(Error::Io { .. })));
    // Metadata is checked, not trusted: a negative standardization epsilon is refused.
    let bad_eps = scratch("bad-eps.safetensors");
    let mut model = ResNetV2Config::new([1, 1, 1, 1], 1, 5).init(&Device::flex());
    model.root.conv.eps = -1.0; // what the file's configuration metadata is made from
    model.save_safetensors(&bad_eps).unwrap();
    let refused = ResNetV2::from_safetensors(&bad_eps, &Device::flex()).unwrap_err();
    assert!(refused.to_string().contains("std_conv_eps -1"), "{refused}");
    // A forged configuration of a trillion parameters is refused before the model is built
    // (it used to abort on the allocation of a billion units).
    let forged = scratch("forged-units.safetensors");
    ResNetV2Config::new([1, 1, 1, 1], 1, 5)
        .init(&Device::flex())
        .save_safetensors(&forged)
        .unwrap();
    let bytes = std::fs::read(&forged).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let (units, forged_units) = (
        r#"\"block_units\": [\n    1,"#,
        r#"\"block_units\": [\n    1000000000,"#,
    );
    assert!(header.contains(units), "{header}");
    let header = header.replace(units, forged_units);
    let mut rewritten = (header.len() as u64).to_le_bytes().to_vec();
    rewritten.extend_from_slice(header.as_bytes());
    rewritten.extend_from_slice(&bytes[8 + header_len..]);
    std::fs::write(&forged, rewritten).unwrap();
    let refused = ResNetV2::from_safetensors(&forged, &Device::flex()).unwrap_err();
    assert!(refused.to_string().contains("parameters"), "{refused}");
}

#[test]
fn a_bit_flipped_in_a_safetensors_body_is_refused_naming_the_file() {
    let path = scratch("flipped.safetensors");
    let model = ResNetV2Config::new([1, 1, 1, 1], 1, 5).init(&Device::flex());
    model.save_safetensors(&path).unwrap();
    let intact = std::fs::read(&path).unwrap();
    let mut flipped = intact.clone();
    let middle = flipped.len() - 1000; // the tensor data, after the header
    flipped[middle] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    match ResNetV2::from_safetensors(&path, &Device::flex()) {
        Err(e @ Error::Corrupt { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&path.display().to_string()) && message.contains("damaged"),
                "{message}"
            );
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|m| m.config())),
    }
    // The intact file loads, and its digest is in its metadata.
    std::fs::write(&path, &intact).unwrap();
    let (_, metadata) = ResNetV2::from_safetensors_with_metadata(&path, &Device::flex()).unwrap();
    assert_eq!(metadata[bit_model::SHA256_METADATA_KEY].len(), 64);
}

#[test]
fn npz_save_failure_is_typed_and_leaves_no_file() {
    let dst = scratch("no-such-dir").join("model.npz");
    assert!(matches!(
        reference().0.save_npz(&dst),
        Err(Error::Save { .. })
    ));
    assert!(!dst.exists());
}

#[test]
fn non_finite_weights_are_refused_by_name() {
    let (npz, safetensors) = (scratch("nan.npz"), scratch("nan.safetensors"));
    let mut model = ResNetV2Config::new([1, 1, 1, 1], 1, 5).init(&Device::flex());
    let bias = model.head.fc.bias.take().unwrap().val();
    model.head.fc.bias = Some(burn::module::Param::from_tensor(
        bias.full_like(f32::INFINITY),
    ));
    model.save_npz(&npz).unwrap();
    model.save_safetensors(&safetensors).unwrap();
    for err in [
        ResNetV2::from_npz(&npz, &Device::flex()).unwrap_err(),
        ResNetV2::from_safetensors(&safetensors, &Device::flex()).unwrap_err(),
    ] {
        match &err {
            Error::NonFinite { parameters, .. } => {
                assert_eq!(parameters, &vec!["head.fc.bias".to_string()])
            }
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert!(err.to_string().contains("head.fc.bias"), "{err}");
    }
    // The body alone is fine: a new head replaces the broken one.
    assert!(ResNetV2::from_npz_with_zero_head(&npz, 3, &Device::flex()).is_ok());
}

#[test]
fn an_entry_larger_than_its_array_is_refused_before_it_is_read() {
    use std::io::Write;
    // The reference with its head bias replaced by a valid 5-value array followed by 64 MiB of
    // deflated zeros: a decompression bomb the size of a small file.
    let mut src = NpzArchive::open(&reference().1).unwrap();
    let names: Vec<String> = src.array_names().map(String::from).collect();
    let dst = scratch("bomb.npz");
    let mut out = NpzWriter::create(&dst).unwrap();
    for key in names {
        let npy = src.by_name(&key).unwrap().unwrap();
        let shape = npy.shape().to_vec();
        let values: Vec<f32> = npy.into_vec().unwrap();
        if key != "resnet/head/conv2d/bias" {
            write_array(&mut out, &key, &shape, values);
            continue;
        }
        let mut bytes = Vec::new();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut bytes)
            .begin_nd()
            .unwrap();
        w.extend(values).unwrap();
        w.finish().unwrap();
        bytes.resize(bytes.len() + (64 << 20), 0);
        let options = npyz::zip::write::FileOptions::default()
            .compression_method(npyz::zip::CompressionMethod::Deflated);
        let zip = out.zip_writer();
        zip.start_file(format!("{key}.npy"), options).unwrap();
        zip.write_all(&bytes).unwrap();
    }
    out.zip_writer().finish().unwrap();
    assert!(std::fs::metadata(&dst).unwrap().len() < 64 << 20);
    match load_err(&dst) {
        Error::Corrupt { reason, .. } => {
            assert!(reason.contains("bytes where shape [5]"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn absurd_widths_no_input_channels_and_empty_heads_are_not_bit() {
    for (name, edit) in [
        // Width 65: past what any ResNetV2 checkpoint describes (BiT's widest is 4).
        ("wide.npz", [7u64, 7, 3, 64 * 65]),
        ("no-input.npz", [7, 7, 0, 64]),
    ] {
        let path = rewrite(name, |key, shape, v| {
            if key == "resnet/root_block/standardized_conv2d/kernel" {
                let n = edit.iter().product::<u64>() as usize;
                vec![(key.into(), edit.to_vec(), Array::F32(vec![0.5; n]))]
            } else {
                keep(key, shape, v)
            }
        });
        assert!(
            matches!(NpzCheckpoint::open(&path), Err(Error::Architecture { .. })),
            "{name}"
        );
    }
    let empty_head = rewrite("empty-head.npz", |key, shape, v| match key {
        "resnet/head/conv2d/bias" => vec![(key.into(), vec![0], Array::F32(vec![]))],
        "resnet/head/conv2d/kernel" => {
            vec![(key.into(), vec![1, 1, shape[2], 0], Array::F32(vec![]))]
        }
        _ => keep(key, shape, v),
    });
    assert!(matches!(
        NpzCheckpoint::open(&empty_head),
        Err(Error::Architecture { .. })
    ));
}
