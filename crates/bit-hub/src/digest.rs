//! SHA-256 digests of what the project writes, so that a file damaged after it was written (a
//! flipped bit on disk, a partial copy) is refused on load instead of silently shifting
//! predictions.

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The SHA-256 of `bytes`, as 64 lowercase hex digits.
///
/// ```
/// assert_eq!(
///     bit_hub::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The SHA-256 of the file at `path`, read in 1 MiB pieces.
///
/// ```
/// let path = std::env::temp_dir().join("bit_hub_doc_sha256.txt");
/// std::fs::write(&path, b"abc")?;
/// assert_eq!(bit_hub::sha256_file(&path)?, bit_hub::sha256_hex(b"abc"));
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}
