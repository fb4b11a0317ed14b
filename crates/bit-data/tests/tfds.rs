//! TFDS prepared directories and VTAB-1k tasks, on files the tests write: records and labels
//! read back in order, every kind of damage an error naming the file, and the VTAB slices,
//! derived labels and image scaling of the task registry.

use std::path::Path;

use bit_data::{
    DatasetName, Example, ImageDataset, ImageFeature, NonImagePolicy, TfdsDataset, TfdsSplit,
    VtabTask, load_train_valid, write_tfds_split,
};
use bit_testkit::ScratchDir;

/// A `size` x `size` grey PNG of one value.
fn png(size: u32, value: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::GrayImage::from_pixel(size, size, image::Luma([value]))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// An image whose grey value encodes `i`, labelled `label`.
fn example(i: usize, label: i64) -> Example {
    Example::default()
        .with_bytes("image", vec![png(8, (i % 251) as u8)])
        .with_int64s("label", vec![label])
}

fn label(e: &Example) -> Result<usize, String> {
    Ok(e.int64s("label")?[0] as usize)
}

fn classes(n: usize) -> Vec<String> {
    (0..n).map(|c| c.to_string()).collect()
}

fn open(split: &TfdsSplit, range: std::ops::Range<usize>, n: usize) -> Result<TfdsDataset, String> {
    TfdsDataset::open(
        &[(split, range)],
        &ImageFeature::new("image"),
        &label,
        classes(n),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn a_written_split_reads_back_in_order() {
    let dir = ScratchDir::new("tfds-roundtrip");
    let examples: Vec<Example> = (0..10).map(|i| example(i, (i % 3) as i64)).collect();
    write_tfds_split(&dir, "toy", "train", &examples, 3).unwrap();
    let split = TfdsSplit::open(&dir, "train").unwrap();
    assert_eq!(split.len(), 10);
    let ds = open(&split, 2..9, 3).unwrap();
    assert_eq!(ds.len(), 7);
    for i in 0..7 {
        assert_eq!(ds.label(i), (i + 2) % 3);
        // The grey value, expanded to RGB.
        assert_eq!(ds.image(i).unwrap().get_pixel(3, 3).0, [(i + 2) as u8; 3]);
    }
    assert_eq!(ds.image_size(), Some((8, 8)));
    assert!(open(&split, 5..11, 3).unwrap_err().contains("which has 10"));
    let missing = TfdsSplit::open(&dir, "test").unwrap_err().to_string();
    assert!(missing.contains("no `test` split"), "{missing}");
}

/// The first shard of `dir`'s train split.
fn first_shard(dir: &Path) -> std::path::PathBuf {
    dir.join("toy-train.tfrecord-00000-of-00002")
}

fn damaged(name: &str, damage: impl FnOnce(&Path, &mut Vec<u8>)) -> (ScratchDir, String) {
    let dir = ScratchDir::new(name);
    let examples: Vec<Example> = (0..6).map(|i| example(i, 0)).collect();
    write_tfds_split(&dir, "toy", "train", &examples, 2).unwrap();
    let shard = first_shard(&dir);
    let mut bytes = std::fs::read(&shard).unwrap();
    damage(&dir, &mut bytes);
    std::fs::write(&shard, bytes).unwrap();
    let error = TfdsSplit::open(&dir, "train")
        .and_then(|split| {
            TfdsDataset::open(
                &[(&split, 0..6)],
                &ImageFeature::new("image"),
                &label,
                classes(1),
            )
        })
        .map(|_| ())
        .unwrap_err()
        .to_string();
    (dir, error)
}

#[test]
fn damaged_files_are_errors_that_name_the_file_and_record() {
    let (_dir, error) = damaged("tfds-truncated", |_, bytes| bytes.truncate(bytes.len() - 3));
    assert!(
        error.contains("toy-train.tfrecord-00000-of-00002"),
        "{error}"
    );
    assert!(error.contains("truncated"), "{error}");
    // Cut inside a header.
    let (_dir, error) = damaged("tfds-torn-header", |_, bytes| {
        let first = 12 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 4;
        bytes.truncate(first + 5);
    });
    assert!(error.contains("12-byte header (truncated)"), "{error}");
    // A flipped bit in an image: the header is fine, the data's checksum is not.
    let (_dir, error) = damaged("tfds-bad-crc", |_, bytes| bytes[40] ^= 0x10);
    assert!(error.contains("fails its checksum"), "{error}");
    // A damaged length.
    let (_dir, error) = damaged("tfds-bad-length", |_, bytes| bytes[1] ^= 0x01);
    assert!(error.contains("length's checksum"), "{error}");
    // A missing shard.
    let (_dir, error) = damaged("tfds-missing-shard", |dir, _| {
        std::fs::remove_file(dir.join("toy-train.tfrecord-00001-of-00002")).unwrap()
    });
    assert!(error.contains("shard 00001 of 00002"), "{error}");
    // Fewer records than dataset_info.json lists (a shard from an older, smaller copy).
    let (_dir, error) = damaged("tfds-short-shard", |_, bytes| {
        let first = 12 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 4;
        bytes.truncate(first);
    });
    assert!(error.contains("dataset_info.json says"), "{error}");
    // Not a protocol buffer (a valid record of garbage).
    let dir = ScratchDir::new("tfds-not-example");
    let mut file = std::fs::File::create(dir.join("toy-train.tfrecord-00000-of-00001")).unwrap();
    bit_data::write_record(&mut file, &[0xff; 9]).unwrap();
    drop(file);
    let split = TfdsSplit::open(&dir, "train").unwrap();
    let error = open(&split, 0..1, 1).unwrap_err();
    assert!(error.contains("not a tf.train.Example"), "{error}");
}

#[test]
fn wrong_features_are_errors_that_say_what_is_wrong() {
    let case = |name: &str, e: Example| {
        let dir = ScratchDir::new(name);
        write_tfds_split(&dir, "toy", "train", &[example(0, 0), e], 1).unwrap();
        let split = TfdsSplit::open(&dir, "train").unwrap();
        open(&split, 0..2, 3).unwrap_err()
    };
    let float_label = example(1, 0).with_floats("label", vec![1.0]);
    let error = case("tfds-float-label", float_label);
    assert!(
        error.contains("`label` is a float list, expected int64"),
        "{error}"
    );
    let no_image = Example::default().with_int64s("label", vec![0]);
    let error = case("tfds-no-image", no_image);
    assert!(
        error.contains("no feature `image` (the record has: label)"),
        "{error}"
    );
    let error = case("tfds-label-range", example(1, 3));
    assert!(
        error.contains("label 3, but the dataset has 3 classes"),
        "{error}"
    );
    let two_images = example(1, 0).with_bytes("image", vec![png(8, 0), png(8, 1)]);
    let error = case("tfds-two-images", two_images);
    assert!(error.contains("holds 2 images"), "{error}");
    // An undecodable image is an error when it is read, naming the record.
    let dir = ScratchDir::new("tfds-bad-image");
    let broken = example(0, 0).with_bytes("image", vec![b"not an image".to_vec()]);
    write_tfds_split(&dir, "toy", "train", &[example(0, 0), broken], 1).unwrap();
    let ds = open(&TfdsSplit::open(&dir, "train").unwrap(), 0..2, 1).unwrap();
    let error = ds.image(1).unwrap_err().to_string();
    assert!(error.contains("record at byte"), "{error}");
}

#[test]
fn a_task_takes_train800_val200_and_its_test_split_from_the_newest_version() {
    let data = ScratchDir::new("vtab-dmlab");
    let dir = data.join("dmlab/2.0.1");
    let labelled = |offset: usize, n: usize| -> Vec<Example> {
        (0..n)
            .map(|i| example(offset + i, ((offset + i) % 6) as i64))
            .collect()
    };
    write_tfds_split(&dir, "dmlab", "train", &labelled(0, 850), 2).unwrap();
    write_tfds_split(&dir, "dmlab", "validation", &labelled(1000, 230), 1).unwrap();
    write_tfds_split(&dir, "dmlab", "test", &labelled(2000, 40), 1).unwrap();
    std::fs::create_dir_all(data.join("dmlab/1.9.9")).unwrap(); // an older, empty version
    let task: DatasetName = "vtab/dmlab".parse().unwrap();
    let pair = load_train_valid(task, &data, NonImagePolicy::Error).unwrap();
    assert_eq!((pair.train.len(), pair.valid.len()), (1000, 40));
    assert_eq!(pair.train.classes().len(), 6);
    // train[:800], then validation[:200]; the test split whole.
    let value = |ds: &dyn ImageDataset, i: usize| ds.image(i).unwrap().get_pixel(0, 0).0[0];
    assert_eq!(
        (value(&*pair.train, 799), pair.train.label(799)),
        ((799 % 251) as u8, 799 % 6)
    );
    assert_eq!(value(&*pair.train, 800), (1000 % 251) as u8);
    assert_eq!(pair.train.label(800), 1000 % 6);
    assert_eq!(value(&*pair.valid, 39), (2039 % 251) as u8);
    // Too little data for the benchmark's slices is an error, not a smaller benchmark.
    write_tfds_split(&dir, "dmlab", "validation", &labelled(1000, 150), 1).unwrap();
    let error = load_train_valid(task, &data, NonImagePolicy::Error)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(error.contains("too few examples"), "{error}");
    // And a missing dataset says where it was looked for.
    let error = VtabTask::Dtd
        .open(&data)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("dtd/train800val200.txt") && error.contains("/dtd"),
        "{error}"
    );
}

#[test]
fn clevr_and_dsprites_labels_are_derived_and_sprites_scaled() {
    let data = ScratchDir::new("vtab-derived");
    // clevr: val200 = train[1800:2000] of 2000, the test split is `validation`.
    let scene = |i: usize| {
        let objects = 3 + i % 8;
        example(i, 0)
            .with_int64s("objects/size", vec![0; objects])
            .with_floats(
                "objects/pixel_coords",
                (0..objects)
                    .flat_map(|o| [0.0, 0.0, 8.2 + o as f32])
                    .collect(),
            )
    };
    let dir = data.join("clevr/3.1.0");
    write_tfds_split(
        &dir,
        "clevr",
        "train",
        &(0..2000).map(scene).collect::<Vec<_>>(),
        4,
    )
    .unwrap();
    write_tfds_split(
        &dir,
        "clevr",
        "validation",
        &(0..10).map(scene).collect::<Vec<_>>(),
        1,
    )
    .unwrap();
    let count = VtabTask::ClevrCount.open(&data).unwrap();
    assert_eq!((count.train.len(), count.valid.len()), (1000, 10));
    assert_eq!(count.train.label(5), 5); // 8 objects: class 5 of 3..10
    assert_eq!(count.train.label(800), 1800 % 8); // train[1800]
    let distance = VtabTask::ClevrDistance.open(&data).unwrap();
    assert_eq!(distance.train.label(0), 1); // closest at 8.2: the bin (8.0, 8.5]
    // dSprites: 0/1 masks scaled to 0/255, x positions of 32 binned into 16.
    let sprite = |i: usize| {
        Example::default()
            .with_bytes("image", vec![png(8, (i % 2) as u8)])
            .with_int64s("label_x_position", vec![(i % 32) as i64])
            .with_int64s("label_orientation", vec![(i % 40) as i64])
    };
    let dir = data.join("dsprites/2.0.0");
    write_tfds_split(
        &dir,
        "dsprites",
        "train",
        &(0..1000).map(sprite).collect::<Vec<_>>(),
        2,
    )
    .unwrap();
    let xpos = VtabTask::DspritesXpos.open(&data).unwrap();
    assert_eq!((xpos.train.len(), xpos.valid.len()), (1000, 100)); // test = train[900:]
    assert_eq!(xpos.train.image(1).unwrap().get_pixel(0, 0).0, [255; 3]);
    assert_eq!(xpos.train.image(2).unwrap().get_pixel(0, 0).0, [0; 3]);
    assert_eq!(xpos.train.label(31), 15);
    assert_eq!(xpos.valid.label(0), (900 % 32) / 2);
}

#[test]
fn an_image_list_bundle_takes_precedence() {
    let data = ScratchDir::new("vtab-bundle");
    let bundle = data.join("eurosat");
    std::fs::create_dir_all(bundle.join("img")).unwrap();
    for i in 0..4 {
        image::RgbImage::new(64, 64)
            .save(bundle.join(format!("img/{i}.png")))
            .unwrap();
    }
    let lines = |n: usize| -> String {
        (0..n)
            .map(|i| format!("img/{}.png {}\n", i % 4, i % 10))
            .collect()
    };
    std::fs::write(bundle.join("train800val200.txt"), lines(1000)).unwrap();
    std::fs::write(bundle.join("test.txt"), lines(30)).unwrap();
    let pair = VtabTask::Eurosat.open(&data).unwrap();
    assert_eq!(
        (pair.train.len(), pair.valid.len(), pair.train.label(13)),
        (1000, 30, 3)
    );
    assert_eq!(pair.train.image_size(), Some((64, 64)));
    std::fs::write(bundle.join("test.txt"), "img/0.png 10\n").unwrap();
    let error = VtabTask::Eurosat
        .open(&data)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("test.txt: line 1: label 10, but there are 10 classes"),
        "{error}"
    );
}
