//! Class-folder datasets on generated PNG and JPEG files, and their bad inputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bit_data::{
    BatchStream, DataError, DatasetName, FolderDataset, ImageDataset, LoaderConfig, NonImagePolicy,
    load_train_valid,
};
use image::{Rgb, RgbImage};

fn scratch(name: &str) -> PathBuf {
    let dir = bit_testkit::scratch_root("bit-data-folders").join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `root/<class>/<i>.{png,jpg}` with a solid colour per class.
fn make_split(root: &Path, classes: &[&str], per_class: usize) {
    for (c, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = RgbImage::from_pixel(40 + i as u32, 30, Rgb([(c * 80) as u8, 20, 200]));
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            img.save(dir.join(format!("{i:03}.{ext}"))).unwrap();
        }
    }
}

#[test]
fn imagenet_layout_loads_sorted_classes_from_png_and_jpeg() {
    let root = scratch("imagenet");
    make_split(&root.join("train"), &["n02", "n01", "n03"], 4);
    make_split(&root.join("val"), &["n01", "n02", "n03"], 2);
    let splits = load_train_valid(DatasetName::Imagenet2012, &root, NonImagePolicy::Error).unwrap();
    assert_eq!(splits.train.classes(), ["n01", "n02", "n03"]);
    assert_eq!((splits.train.len(), splits.valid.len()), (12, 6));
    assert_eq!(splits.train.label(4), 1);
    assert_eq!(splits.train.image(5).unwrap().dimensions(), (41, 30));
    // Class n03 is red 160 whatever the codec.
    let px = splits.valid.image(5).unwrap().get_pixel(3, 3).0;
    assert!(
        px[0].abs_diff(160) <= 3 && px[2].abs_diff(200) <= 3,
        "{px:?}"
    );
    assert_eq!(splits.train.image_size(), Some((30, 42)));
}

#[test]
fn non_image_file_is_an_error_or_an_explicit_skip() {
    let root = scratch("nonimage");
    make_split(&root, &["a", "b"], 2);
    std::fs::write(root.join("b").join("notes.txt"), "not a picture").unwrap();
    match FolderDataset::open(&root, NonImagePolicy::Error).unwrap_err() {
        DataError::NotAnImage { path } => assert!(path.ends_with("b/notes.txt")),
        other => panic!("expected NotAnImage, got {other:?}"),
    }
    assert_eq!(
        FolderDataset::open(&root, NonImagePolicy::SkipWithWarning)
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn unreadable_image_fails_the_batch_naming_the_file() {
    let root = scratch("corrupt");
    make_split(&root, &["a", "b"], 2);
    std::fs::write(root.join("a").join("001.jpg"), b"\xff\xd8\xff garbage").unwrap();
    let ds = Arc::new(FolderDataset::open(&root, NonImagePolicy::Error).unwrap());
    let err = ds.image(1).unwrap_err();
    assert!(
        matches!(&err, DataError::Decode { path, .. } if path.ends_with("a/001.jpg")),
        "{err:?}"
    );
    let mut stream = BatchStream::eval(ds, 16, LoaderConfig::new(4).with_workers(2)).unwrap();
    let err = stream.next().unwrap().unwrap_err();
    assert!(err.to_string().contains("001.jpg"), "{err}");
    assert!(stream.next().is_none(), "the stream stops after an error");
}

#[test]
fn empty_class_and_empty_root_are_reported() {
    let root = scratch("empty");
    assert!(matches!(
        FolderDataset::open(&root, NonImagePolicy::Error),
        Err(DataError::NoClasses { .. })
    ));
    make_split(&root, &["full"], 1);
    std::fs::create_dir_all(root.join("hollow")).unwrap();
    match FolderDataset::open(&root, NonImagePolicy::Error).unwrap_err() {
        DataError::EmptyClass { class, .. } => assert_eq!(class, "hollow"),
        other => panic!("expected EmptyClass, got {other:?}"),
    }
    let missing = FolderDataset::open(root.join("nope"), NonImagePolicy::Error).unwrap_err();
    assert!(matches!(missing, DataError::Io { .. }), "{missing:?}");
}

#[test]
fn validation_classes_must_match_training() {
    let root = scratch("mismatch");
    make_split(&root.join("train"), &["a", "b"], 1);
    make_split(&root.join("test"), &["a", "c"], 1);
    let err = load_train_valid(DatasetName::Folder, &root, NonImagePolicy::Error)
        .err()
        .unwrap();
    assert!(matches!(err, DataError::ClassMismatch { .. }), "{err:?}");
}

#[test]
fn fifos_non_utf8_class_names_and_skipped_files() {
    use std::os::unix::ffi::OsStrExt;
    let root = scratch("special-files");
    make_split(&root, &["cats"], 2);
    // A class folder whose name is not UTF-8.
    let odd = root.join(std::ffi::OsStr::from_bytes(b"d\xffgs"));
    std::fs::create_dir_all(&odd).unwrap();
    RgbImage::new(8, 8).save(odd.join("a.png")).unwrap();
    // A FIFO named like an image: opening it would block forever.
    let fifo = root.join("cats").join("pipe.png");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    match FolderDataset::open(&root, NonImagePolicy::Error) {
        Err(DataError::NotAnImage { path }) => assert_eq!(path, fifo),
        other => panic!("expected NotAnImage, got {other:?}"),
    }
    let ds = FolderDataset::open(&root, NonImagePolicy::SkipWithWarning).unwrap();
    assert_eq!(ds.skipped(), [fifo]);
    assert_eq!(ds.classes(), ["cats", "d\u{fffd}gs"]);
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.image(2).unwrap().dimensions(), (8, 8));
}

#[test]
fn unlabelled_images_are_found_at_any_depth_without_following_linked_folders() {
    let root = scratch("images");
    make_split(&root.join("train"), &["a", "b/deeper"], 2);
    RgbImage::new(8, 8)
        .save(root.join("train/top.png"))
        .unwrap();
    std::fs::write(root.join("train/b/notes.txt"), b"x").unwrap();
    // A link back up the tree would loop forever if followed.
    std::os::unix::fs::symlink(root.join("train"), root.join("train/a/loop")).unwrap();
    make_split(&root.join("val"), &["x"], 1);
    let err = load_train_valid(DatasetName::Images, &root, NonImagePolicy::Error).err();
    assert!(
        matches!(&err, Some(DataError::NotAnImage { path }) if path.ends_with("notes.txt")),
        "{err:?}"
    );
    let data = load_train_valid(DatasetName::Images, &root, NonImagePolicy::SkipWithWarning)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((data.train.len(), data.valid.len()), (5, 1));
    assert_eq!(data.train.classes(), ["unlabelled"]);
    assert!(data.train.skipped()[0].ends_with("notes.txt"));
    assert!((0..5).all(|i| data.train.label(i) == 0));
    // A tree without images is an error naming it.
    let empty = scratch("no-images");
    std::fs::create_dir_all(empty.join("train/sub")).unwrap();
    std::fs::create_dir_all(empty.join("val")).unwrap();
    assert!(matches!(
        load_train_valid(DatasetName::Images, &empty, NonImagePolicy::Error),
        Err(DataError::NoImages { .. })
    ));
}

/// A dataset whose decoder panics on one image, like a bug in a codec.
struct Panicking;

impl ImageDataset for Panicking {
    fn len(&self) -> usize {
        10
    }
    fn classes(&self) -> &[String] {
        &[]
    }
    fn label(&self, _: usize) -> usize {
        0
    }
    fn image(&self, index: usize) -> bit_data::Result<RgbImage> {
        assert_ne!(index, 7, "decoder bug on image 7");
        Ok(RgbImage::new(4, 4))
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        None
    }
}

#[test]
fn a_panicking_worker_is_an_error_not_a_short_stream() {
    let stream = BatchStream::eval(Arc::new(Panicking), 8, LoaderConfig::new(3)).unwrap();
    let items: Vec<_> = stream.collect();
    assert_eq!(items.len(), 3, "two good batches, then the error");
    assert!(items[..2].iter().all(Result::is_ok));
    match &items[2] {
        Err(DataError::Loader(message)) => assert!(message.contains("decoder bug"), "{message}"),
        other => panic!("expected a loader error, got {other:?}"),
    }
    let too_many = LoaderConfig::new(3).with_workers(bit_data::MAX_WORKERS + 1);
    assert!(matches!(
        BatchStream::eval(Arc::new(Panicking), 8, too_many),
        Err(DataError::InvalidArgument(_))
    ));
}

#[test]
fn truncated_jpegs_are_errors_naming_the_file() {
    let root = scratch("truncated-jpeg");
    let class = root.join("a");
    std::fs::create_dir_all(&class).unwrap();
    let img = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 90]));
    img.save(class.join("0_whole.jpg")).unwrap();
    let whole = std::fs::read(class.join("0_whole.jpg")).unwrap();
    // Bytes after the end marker (as some cameras write) are harmless.
    let mut padded = whole.clone();
    padded.extend_from_slice(&[0; 64]);
    std::fs::write(class.join("1_padded.jpg"), &padded).unwrap();
    for (i, percent) in [30, 70, 99].into_iter().enumerate() {
        let cut = &whole[..whole.len() * percent / 100];
        std::fs::write(class.join(format!("{}_cut{percent}.jpg", i + 2)), cut).unwrap();
    }
    let ds = FolderDataset::open(&root, NonImagePolicy::Error).unwrap();
    assert_eq!(ds.image(0).unwrap().dimensions(), (64, 48));
    assert_eq!(ds.image(1).unwrap(), ds.image(0).unwrap());
    for i in 2..5 {
        let error = ds.image(i).unwrap_err().to_string();
        assert!(
            error.contains("_cut") && error.contains("truncated"),
            "{error}"
        );
    }
}
