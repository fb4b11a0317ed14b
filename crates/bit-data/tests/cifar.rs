//! CIFAR through the real download path: generated archives in the official binary format,
//! served over HTTP on 127.0.0.1.

use std::io::Read;
use std::path::Path;

use bit_data::{Cifar, DataError, FetchError, ImageDataset, RemoteFile, Split};
use bit_testkit::{HttpServer, ScratchDir};

/// A fresh directory, removed with everything in it when dropped (the release-size files are
/// large).
fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("data-cifar-{name}"))
}

/// Pixel `p` of channel `c` of record `r`: a recognisable pattern.
fn pixel(r: usize, c: usize, p: usize) -> u8 {
    (r * 31 + c * 7 + p) as u8
}

/// A CIFAR archive with the official member files: `per_file` records in each, except CIFAR-100's
/// `train.bin`, five times as long as in the release.
fn cifar_archive(kind: Cifar, per_file: usize, extra: Option<(&str, &[u8])>) -> Vec<u8> {
    let (dir, files, names_file, classes, label_bytes) = match kind {
        Cifar::Cifar10 => (
            "cifar-10-batches-bin",
            vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
                "test_batch.bin",
            ],
            "batches.meta.txt",
            10,
            1,
        ),
        Cifar::Cifar100 => (
            "cifar-100-binary",
            vec!["train.bin", "test.bin"],
            "fine_label_names.txt",
            100,
            2,
        ),
    };
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append_data(&mut header, path, data).unwrap();
    };
    for file in &files {
        let mut data = Vec::new();
        let records = if *file == "train.bin" {
            5 * per_file
        } else {
            per_file
        };
        for r in 0..records {
            if label_bytes == 2 {
                data.push((r % 20) as u8); // coarse
            }
            data.push((r % classes) as u8); // fine / only label
            for c in 0..3 {
                data.extend((0..1024).map(|p| pixel(r, c, p)));
            }
        }
        add(&format!("{dir}/{file}"), &data);
    }
    let names: String = (0..classes).map(|i| format!("class_{i}\n")).collect();
    add(&format!("{dir}/{names_file}"), names.as_bytes());
    if let Some((path, data)) = extra {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        // `append_data` refuses `..`; write the raw name like a malicious archive would.
        let name = header.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        tar.append(&header, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Records per file in the release (CIFAR-10 files, CIFAR-100 test): the loader accepts exactly
/// these sizes.
const RELEASE_RECORDS: usize = 10_000;

/// A full-size CIFAR-10 archive, built once for the tests that load it (~180 MB of records).
fn release_cifar10() -> &'static [u8] {
    static ARCHIVE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ARCHIVE.get_or_init(|| cifar_archive(Cifar::Cifar10, RELEASE_RECORDS, None))
}

fn serve(name: &str, body: Vec<u8>, cut_first: bool) -> HttpServer {
    let server = HttpServer::start();
    server.put(name, body);
    if cut_first {
        server.cut_next(1);
    }
    server
}

fn remote_for(base: &str, name: &str, body: &[u8]) -> RemoteFile {
    use md5::Digest;
    let md5 = md5::Md5::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    RemoteFile {
        url: format!("{base}/{name}"),
        size: Some(body.len() as u64),
        md5: Some(md5),
        ..Default::default()
    }
}

/// Checks sizes, names, and record 3 of the second file (`per_file` must exceed 3).
fn check_cifar10(ds: &dyn ImageDataset, per_file: usize, files: usize) {
    assert!(per_file > 3);
    assert_eq!(ds.len(), per_file * files);
    assert_eq!(ds.classes().len(), 10);
    assert_eq!(ds.classes()[3], "class_3");
    assert_eq!(ds.label(per_file + 3), 3);
    let img = ds.image(per_file + 3).unwrap();
    assert_eq!(img.dimensions(), (32, 32));
    // Planar records become HWC pixels: (x=5, y=2) is plane offset 2*32+5.
    assert_eq!(
        img.get_pixel(5, 2).0,
        [pixel(3, 0, 69), pixel(3, 1, 69), pixel(3, 2, 69)]
    );
}

#[test]
fn downloads_verifies_extracts_and_parses_cifar10() {
    let body = release_cifar10().to_vec();
    let server = serve("cifar-10-binary.tar.gz", body.clone(), false);
    let dir = scratch("download");
    let remote = remote_for(server.base_url(), "cifar-10-binary.tar.gz", &body);
    let train = Cifar::Cifar10
        .load_from(&dir, Split::Train, &remote)
        .unwrap();
    check_cifar10(&train, RELEASE_RECORDS, 5);
    let test = Cifar::Cifar10
        .load_from(&dir, Split::Valid, &remote)
        .unwrap();
    assert_eq!(test.len(), RELEASE_RECORDS);
    assert_eq!(server.hits(), 1, "the archive is downloaded once");
    assert!(dir.join("cifar-10-binary.tar.gz").is_file());
    // Offline afterwards: the extracted folder is enough.
    let offline = RemoteFile {
        url: "http://127.0.0.1:9/none".into(),
        size: None,
        md5: None,
        ..Default::default()
    };
    assert_eq!(
        Cifar::Cifar10
            .load_from(&dir, Split::Train, &offline)
            .unwrap()
            .len(),
        5 * RELEASE_RECORDS
    );
}

#[test]
fn interrupted_download_resumes_with_a_range_request() {
    let body = release_cifar10().to_vec();
    let server = serve("cifar-10-binary.tar.gz", body.clone(), true);
    let dir = scratch("resume");
    let remote = remote_for(server.base_url(), "cifar-10-binary.tar.gz", &body);
    let first = Cifar::Cifar10
        .load_from(&dir, Split::Train, &remote)
        .unwrap_err();
    assert!(
        matches!(first, DataError::Fetch(FetchError::Download { .. })),
        "{first:?}"
    );
    assert!(first.to_string().contains("resume"), "{first}");
    let part = dir.join("cifar-10-binary.tar.gz.part");
    assert_eq!(
        std::fs::metadata(&part).unwrap().len() as usize,
        body.len() / 2
    );
    check_cifar10(
        &Cifar::Cifar10
            .load_from(&dir, Split::Train, &remote)
            .unwrap(),
        RELEASE_RECORDS,
        5,
    );
    assert_eq!(server.hits(), 2);
    assert!(!part.exists());
}

#[test]
fn cifar100_uses_fine_labels() {
    let body = cifar_archive(Cifar::Cifar100, RELEASE_RECORDS, None);
    let dir = scratch("c100");
    std::fs::write(dir.join("cifar-100-binary.tar.gz"), &body).unwrap();
    let remote = remote_for("http://127.0.0.1:9", "cifar-100-binary.tar.gz", &body);
    let ds = Cifar::Cifar100
        .load_from(&dir, Split::Train, &remote)
        .unwrap();
    assert_eq!((ds.len(), ds.classes().len()), (5 * RELEASE_RECORDS, 100));
    assert_eq!(ds.label(25), 25); // the coarse label of record 25 is 5
}

#[test]
fn wrong_checksum_is_an_integrity_error_and_the_file_is_discarded() {
    let body = cifar_archive(Cifar::Cifar10, 2, None);
    let server = serve("cifar-10-binary.tar.gz", body.clone(), false);
    let dir = scratch("md5");
    let mut remote = remote_for(server.base_url(), "cifar-10-binary.tar.gz", &body);
    remote.md5 = Some("0".repeat(32));
    match Cifar::Cifar10
        .load_from(&dir, Split::Train, &remote)
        .unwrap_err()
    {
        DataError::Fetch(FetchError::Integrity { what, .. }) => assert_eq!(what, "MD5"),
        other => panic!("expected Integrity, got {other:?}"),
    }
    assert!(!dir.join("cifar-10-binary.tar.gz").exists());
    assert!(!dir.join("cifar-10-binary.tar.gz.part").exists());
}

#[test]
fn official_sizes_reject_a_foreign_file_at_a_mirror() {
    let body = cifar_archive(Cifar::Cifar10, 2, None);
    let server = serve("cifar-10-binary.tar.gz", body, false);
    let dir = scratch("official");
    let official = Cifar::Cifar10.remote(server.base_url());
    let err = Cifar::Cifar10
        .load_from(&dir, Split::Train, &official)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Fetch(FetchError::Integrity { what: "size", .. })
        ),
        "{err:?}"
    );
    assert_eq!(server.hits(), 1);
}

#[test]
fn truncated_archive_is_reported() {
    let body = cifar_archive(Cifar::Cifar10, 3, None);
    let dir = scratch("truncated");
    let cut = &body[..body.len() * 2 / 3];
    std::fs::write(dir.join("cifar-10-binary.tar.gz"), cut).unwrap();
    let remote = RemoteFile {
        url: "http://127.0.0.1:9/x".into(),
        size: None,
        md5: None,
        ..Default::default()
    };
    let err = Cifar::Cifar10
        .load_from(&dir, Split::Train, &remote)
        .unwrap_err();
    assert!(
        matches!(err, DataError::Archive { .. } | DataError::Format { .. }),
        "{err:?}"
    );
}

#[test]
fn path_traversal_is_refused() {
    let body = cifar_archive(Cifar::Cifar10, 1, Some(("../escape.txt", b"gotcha")));
    let dir = scratch("traversal");
    let inner = dir.join("data");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(inner.join("cifar-10-binary.tar.gz"), &body).unwrap();
    let remote = RemoteFile {
        url: "http://127.0.0.1:9/x".into(),
        size: None,
        md5: None,
        ..Default::default()
    };
    let err = Cifar::Cifar10
        .load_from(&inner, Split::Train, &remote)
        .unwrap_err();
    assert!(
        matches!(err, DataError::UnsafeArchiveEntry { .. }),
        "{err:?}"
    );
    assert!(!dir.join("escape.txt").exists());
}

#[test]
fn offline_error_names_url_and_destination() {
    let dir = scratch("offline");
    // Port 9 (discard) has no listener here: the connection is refused.
    let remote = RemoteFile {
        url: "http://127.0.0.1:9/cifar-10-binary.tar.gz".into(),
        size: Some(10),
        md5: None,
        ..Default::default()
    };
    let err = Cifar::Cifar10
        .load_from(&dir, Split::Train, &remote)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, DataError::Fetch(FetchError::Download { .. })),
        "{err:?}"
    );
    assert!(
        text.contains("127.0.0.1:9") && text.contains("cifar-10-binary.tar.gz"),
        "{text}"
    );
}

#[test]
fn corrupt_record_file_is_a_format_error() {
    let dir = scratch("records");
    let inner: &Path = &dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(inner).unwrap();
    for f in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ] {
        release_size(&inner.join(f), 0);
    }
    std::fs::write(inner.join("data_batch_3.bin"), vec![0u8; 3073 + 100]).unwrap();
    std::fs::write(
        inner.join("batches.meta.txt"),
        (0..10).map(|i| format!("c{i}\n")).collect::<String>(),
    )
    .unwrap();
    let remote = RemoteFile {
        url: "http://127.0.0.1:9/x".into(),
        size: None,
        md5: None,
        ..Default::default()
    };
    let load = || Cifar::Cifar10.load_from(&dir, Split::Train, &remote);
    match load().unwrap_err() {
        DataError::Format { path, reason } => {
            assert!(path.ends_with("data_batch_3.bin"), "{path:?}");
            assert!(reason.contains("not a whole number"), "{reason}");
        }
        other => panic!("expected Format, got {other:?}"),
    }
    // Cut at a record boundary, or one record too many: whole records, but not the release's.
    for (delta, records) in [(-1, "9999 records"), (1, "10001 records")] {
        release_size(&inner.join("data_batch_3.bin"), delta);
        match load().unwrap_err() {
            DataError::Format { path, reason } => {
                assert!(path.ends_with("data_batch_3.bin"), "{path:?}");
                assert!(
                    reason.contains(records) && reason.contains("exactly 10000"),
                    "{reason}"
                );
            }
            other => panic!("expected Format, got {other:?}"),
        }
    }
    release_size(&inner.join("data_batch_3.bin"), 0);
    assert_eq!(load().unwrap().len(), 5 * RELEASE_RECORDS);
    // Loading never modifies the files.
    let mut bytes = Vec::new();
    std::fs::File::open(inner.join("data_batch_1.bin"))
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert_eq!(bytes.len(), 3073 * RELEASE_RECORDS);
}

/// Makes `path` a (sparse, all-zero) CIFAR-10 batch file of `RELEASE_RECORDS + delta` records.
fn release_size(path: &Path, delta: isize) {
    let records = RELEASE_RECORDS.checked_add_signed(delta).unwrap();
    let file = std::fs::File::create(path).unwrap();
    file.set_len((3073 * records) as u64).unwrap();
}
