//! [`HfHub`] against a local server that speaks the hub's API and resolve URLs: the listing,
//! `huggingface_hub`'s cache layout, resume of a cut transfer, SHA-256 checks, the token, and
//! the cache serving when the hub does not answer.

use std::path::PathBuf;

use bit_hub::{FetchError, HfHub, HfRepo, sha256_hex};
use bit_testkit::HttpServer;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn scratch(name: &str) -> PathBuf {
    let dir = bit_testkit::scratch_root("bit-hub-hf").join(name);
    std::fs::remove_dir_all(&dir).ok();
    dir
}

/// A repository `org/tiny` at `main` = [`COMMIT`]: a large (LFS) weights file and a small
/// config, listed as the hub's API lists them.
fn serve(server: &HttpServer, weights: &[u8], listed_sha: &str) {
    let listing = serde_json::json!({
        "id": "org/tiny",
        "sha": COMMIT,
        "siblings": [
            {"rfilename": "config.json", "size": 2, "blobId": "9e26dfeeb6e641a33dae4961196235bdb965b21b"},
            {"rfilename": "model.safetensors", "size": weights.len(),
             "blobId": "aaaa", "lfs": {"sha256": listed_sha, "size": weights.len()}},
            {"rfilename": "README.md", "size": 5, "blobId": "bbbb"},
        ],
    });
    server.put(
        "api/models/org/tiny/revision/main?blobs=true",
        listing.to_string().into_bytes(),
    );
    server.put(
        &format!("org/tiny/resolve/{COMMIT}/config.json"),
        b"{}".to_vec(),
    );
    server.put(
        &format!("org/tiny/resolve/{COMMIT}/model.safetensors"),
        weights.to_vec(),
    );
}

fn wanted(files: &[bit_hub::HfFile]) -> Vec<String> {
    files
        .iter()
        .filter(|f| f.name != "README.md")
        .map(|f| f.name.clone())
        .collect()
}

#[test]
fn a_revision_is_downloaded_once_into_the_python_tools_cache_layout() {
    let server = HttpServer::start();
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    serve(&server, &weights, &sha256_hex(&weights));
    let cache = scratch("layout");
    let hub = HfHub::new(server.base_url(), &cache).with_token(Some("hf_secret".into()));
    let repo: HfRepo = "org/tiny".parse().unwrap();

    // An earlier run was killed half-way through the weights: the transfer resumes there.
    let repo_dir = cache.join("models--org--tiny");
    let part = repo_dir.join(format!("blobs/{}.part", sha256_hex(&weights)));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &weights[..100_000]).unwrap();
    let dir = hub.snapshot(&repo, &wanted).unwrap();
    assert!(server.ranges().contains(&Some(100_000)), "resumed");

    assert_eq!(dir, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), b"{}");
    assert!(!dir.join("README.md").exists());
    // Links into blobs/ named by SHA-256 (large files) or git blob id, and refs/main: what
    // huggingface_hub writes, so that either side finds the other's downloads.
    let link = std::fs::read_link(dir.join("model.safetensors")).unwrap();
    assert_eq!(
        link,
        PathBuf::from(format!("../../blobs/{}", sha256_hex(&weights)))
    );
    assert!(
        repo_dir
            .join("blobs/9e26dfeeb6e641a33dae4961196235bdb965b21b")
            .is_file()
    );
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    // Every request carried the token; files came from the listed commit.
    assert!(
        server
            .authorizations()
            .iter()
            .all(|a| a.as_deref() == Some("Bearer hf_secret"))
    );
    assert!(
        server
            .paths()
            .iter()
            .all(|p| p.starts_with("/api/") || p.contains(COMMIT))
    );

    // Cached: only the listing is asked again. Without an answer, the cache serves.
    let before = server.hits();
    assert_eq!(hub.snapshot(&repo, &wanted).unwrap(), dir);
    assert_eq!(server.hits(), before + 1);
    let dead = HfHub::new("http://127.0.0.1:9", &cache);
    assert_eq!(dead.snapshot(&repo, &wanted).unwrap(), dir);
    let offline = HfHub::new("http://127.0.0.1:9", &cache).with_offline(true);
    assert_eq!(offline.snapshot(&repo, &wanted).unwrap(), dir);
    let other: HfRepo = "org/other".parse().unwrap();
    assert!(matches!(
        offline.snapshot(&other, &wanted),
        Err(FetchError::Offline(_))
    ));
}

#[test]
fn a_file_that_differs_from_its_listed_checksum_is_not_kept() {
    let server = HttpServer::start();
    let weights = vec![7u8; 10_000];
    serve(&server, &weights, &sha256_hex(b"something else"));
    let cache = scratch("damaged");
    let hub = HfHub::new(server.base_url(), &cache);
    let err = hub
        .snapshot(&"org/tiny".parse().unwrap(), &wanted)
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Integrity { what, .. } if *what == "SHA-256"),
        "{err}"
    );
    let blobs = cache.join("models--org--tiny/blobs");
    let kept: Vec<_> = std::fs::read_dir(&blobs)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        kept.iter().all(|n| !n
            .to_string_lossy()
            .starts_with(&sha256_hex(b"something else"))),
        "{kept:?}"
    );
}

#[test]
fn unknown_and_private_repositories_are_named_errors() {
    let server = HttpServer::start();
    let hub = HfHub::new(server.base_url(), scratch("missing"));
    let err = hub
        .snapshot(&"org/nothing@v2".parse().unwrap(), &wanted)
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Hub { status: Some(404), repo, .. } if repo == "org/nothing@v2"),
        "{err}"
    );
    // A file the caller needs that the repository lacks.
    serve(&server, b"x", &sha256_hex(b"x"));
    let err = hub
        .snapshot(&"org/tiny".parse().unwrap(), &|_| {
            vec!["pytorch_model.bin".into()]
        })
        .unwrap_err();
    assert!(matches!(err, FetchError::NotInRepo { .. }), "{err}");
    for bad in ["org", "a/b/c", "org/../x", "org/name@", "org/na me"] {
        assert!(bad.parse::<HfRepo>().is_err(), "{bad}");
    }
}
