//! Test fixtures shared by the big-transfer-rs crates.

use std::path::PathBuf;

/// The reference vectors (`shared/golden`): `$BIT_GOLDEN_DIR`, else `../shared/golden` beside
/// the checkout. Panics when they are absent, so numerical tests fail instead of skipping.
pub fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("BIT_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden")
        });
    assert!(
        dir.join("README.md").is_file(),
        "golden vectors not found at {} (set BIT_GOLDEN_DIR); these tests must not be skipped",
        dir.display()
    );
    dir
}

/// A file of [`golden_dir`], which must exist.
pub fn golden_file(name: &str) -> PathBuf {
    let path = golden_dir().join(name);
    assert!(path.is_file(), "missing golden file {}", path.display());
    path
}
