//! The download and cache paths against a local HTTP server serving real BiT-format `.npz`
//! files (the golden checkpoints): completion, resume, damaged transfers, damaged cache,
//! offline.

use std::path::PathBuf;

use bit_hub::{Cache, FetchError, RemoteFile, verify_lines, verify_npz};
use bit_testkit::HttpServer;

fn scratch(name: &str) -> PathBuf {
    let dir = bit_testkit::scratch_root("bit-hub").join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny() -> Vec<u8> {
    std::fs::read(bit_testkit::golden_file("tiny.weights.npz")).unwrap()
}

/// Flips one byte in the middle of the file: inside an array's data, so only the CRC sees it.
fn flipped(mut bytes: Vec<u8>) -> Vec<u8> {
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    bytes
}

fn serve(path: &str, body: Vec<u8>) -> HttpServer {
    let server = HttpServer::start();
    server.put(path, body);
    server
}

#[test]
fn downloads_verifies_and_then_uses_the_cache() {
    let server = serve("models/BiT-M-R50x1.npz", tiny());
    let cache = Cache::new(scratch("cache"));
    let remote = RemoteFile::new(format!("{}/models/BiT-M-R50x1.npz", server.base_url()));
    let path = cache
        .fetch(&remote, "models/BiT-M-R50x1.npz", &verify_npz)
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), tiny());
    assert!(cache.is_verified("models/BiT-M-R50x1.npz"));
    assert!(!path.with_extension("npz.part").exists());
    // Cached: no second request.
    cache
        .fetch(&remote, "models/BiT-M-R50x1.npz", &verify_npz)
        .unwrap();
    assert_eq!(server.hits(), 1);
}

#[test]
fn an_interrupted_transfer_resumes_with_a_range_request() {
    let body = tiny();
    let server = serve("m.npz", body.clone());
    server.cut_next(1);
    let cache = Cache::new(scratch("resume"));
    let remote = RemoteFile::new(format!("{}/m.npz", server.base_url()));
    let err = cache.fetch(&remote, "m.npz", &verify_npz).unwrap_err();
    assert!(
        matches!(&err, FetchError::Download { source, .. } if source.to_string().contains("resume")),
        "{err}"
    );
    let part = cache.path("m.npz.part");
    assert_eq!(
        std::fs::metadata(&part).unwrap().len() as usize,
        body.len() / 2
    );
    assert!(
        !cache.path("m.npz").exists(),
        "nothing half-written at the final path"
    );

    let path = cache.fetch(&remote, "m.npz", &verify_npz).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(server.ranges(), vec![None, Some(body.len() as u64 / 2)]);
    assert!(!part.exists());
}

#[test]
fn a_server_without_range_support_restarts_the_transfer() {
    let body = tiny();
    let server = serve("m.npz", body.clone());
    server.cut_next(1);
    let cache = Cache::new(scratch("norange"));
    let remote = RemoteFile::new(format!("{}/m.npz", server.base_url()));
    cache.fetch(&remote, "m.npz", &verify_npz).unwrap_err();
    server.ignore_ranges();
    // The 200 answer to the range request replaces the partial file instead of being appended.
    let path = cache.fetch(&remote, "m.npz", &verify_npz).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(server.ranges(), vec![None, Some(body.len() as u64 / 2)]);
}

#[test]
fn a_damaged_download_is_rejected_and_not_kept() {
    let server = serve("m.npz", flipped(tiny()));
    let cache = Cache::new(scratch("damaged"));
    let remote = RemoteFile::new(format!("{}/m.npz", server.base_url()));
    match cache.fetch(&remote, "m.npz", &verify_npz).unwrap_err() {
        FetchError::Integrity { what, found, .. } => {
            assert_eq!(what, "npz archive");
            assert!(
                found.contains("damaged") || found.contains("CRC") || found.contains("checksum"),
                "{found}"
            );
        }
        other => panic!("expected Integrity, got {other:?}"),
    }
    assert!(!cache.path("m.npz").exists());
    assert!(
        !cache.path("m.npz.part").exists(),
        "a bad transfer must not be resumed from"
    );

    // The server is fixed: the next attempt starts afresh and succeeds.
    server.put("m.npz", tiny());
    cache.fetch(&remote, "m.npz", &verify_npz).unwrap();
    assert_eq!(server.ranges(), vec![None, None]);
}

#[test]
fn a_cached_file_damaged_later_is_fetched_again() {
    let server = serve("m.npz", tiny());
    let cache = Cache::new(scratch("recache"));
    let remote = RemoteFile::new(format!("{}/m.npz", server.base_url()));
    let path = cache.fetch(&remote, "m.npz", &verify_npz).unwrap();
    // Cut short by a bad copy: length and time change, so the stamp no longer vouches for it.
    let bytes = tiny();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    assert!(!cache.is_verified("m.npz"));
    let again = cache.fetch(&remote, "m.npz", &verify_npz).unwrap();
    assert_eq!(std::fs::read(again).unwrap(), bytes);
    assert_eq!(server.hits(), 2);
}

#[test]
fn a_hand_placed_file_is_checked_once_and_kept() {
    let cache = Cache::new(scratch("byhand"));
    let path = cache.path("models/BiT-S-R50x1.npz");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, tiny()).unwrap();
    // Offline: the hand-placed copy passes its checks and no request is made.
    let offline = RemoteFile::new("http://127.0.0.1:9/BiT-S-R50x1.npz");
    let got = cache
        .fetch(&offline, "models/BiT-S-R50x1.npz", &verify_npz)
        .unwrap();
    assert_eq!(got, path);
    assert!(cache.is_verified("models/BiT-S-R50x1.npz"));
}

#[test]
fn html_instead_of_a_checkpoint_is_rejected() {
    let server = serve("m.npz", b"<html>quota exceeded</html>".to_vec());
    let cache = Cache::new(scratch("html"));
    let remote = RemoteFile::new(format!("{}/m.npz", server.base_url()));
    let err = cache.fetch(&remote, "m.npz", &verify_npz).unwrap_err();
    assert!(matches!(err, FetchError::Integrity { .. }), "{err:?}");
}

#[test]
fn offline_and_missing_files_name_the_url_and_where_to_put_the_file() {
    let cache = Cache::new(scratch("offline"));
    let offline = RemoteFile::new("http://127.0.0.1:9/BiT-M-R50x1.npz");
    let err = cache
        .fetch(&offline, "models/BiT-M-R50x1.npz", &verify_npz)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::Download { .. }), "{err:?}");
    assert!(
        text.contains("http://127.0.0.1:9/BiT-M-R50x1.npz"),
        "{text}"
    );
    assert!(
        text.contains(&cache.path("models/BiT-M-R50x1.npz").display().to_string()),
        "{text}"
    );

    let server = HttpServer::start();
    let missing = RemoteFile::new(format!("{}/nothing.npz", server.base_url()));
    let err = cache
        .fetch(&missing, "nothing.npz", &verify_npz)
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}

#[test]
fn published_size_and_md5_are_checked() {
    let body = tiny();
    let server = serve("m.npz", body.clone());
    let dir = scratch("md5");
    let mut remote = RemoteFile::new(format!("{}/m.npz", server.base_url()));
    remote.size = Some(body.len() as u64 + 1);
    let err = remote.fetch(&dir.join("m.npz")).unwrap_err();
    assert!(
        matches!(err, FetchError::Integrity { what: "size", .. }),
        "{err:?}"
    );
    remote.size = Some(body.len() as u64);
    remote.md5 = Some("0".repeat(32));
    let err = remote.fetch(&dir.join("m.npz")).unwrap_err();
    assert!(
        matches!(err, FetchError::Integrity { what: "MD5", .. }),
        "{err:?}"
    );
    let path = dir.join("m.npz.copy");
    std::fs::write(&path, &body).unwrap();
    remote.md5 = Some(bit_hub::md5_file(&path).unwrap());
    remote.fetch(&dir.join("m.npz")).unwrap();
}

#[test]
fn label_files_must_have_one_line_per_class() {
    let dir = scratch("lines");
    let path = dir.join("labels.txt");
    std::fs::write(&path, "a\nb\n\nc\n").unwrap();
    verify_lines(&path, 3).unwrap();
    match verify_lines(&path, 1000).unwrap_err() {
        FetchError::Integrity {
            expected, found, ..
        } => assert_eq!((expected.as_str(), found.as_str()), ("1000", "3")),
        other => panic!("{other:?}"),
    }
}
