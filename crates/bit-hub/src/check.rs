//! Format checks run on a downloaded file before it is used: a whole file of the right kind,
//! not merely a file of the right length.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::error::{FetchError, Result};

/// Reads every member of an `.npz` (a zip of `.npy` arrays) to its end, which makes the zip
/// reader check each member's CRC-32, and checks every member is a `.npy` array. A truncated
/// download, a flipped byte or an HTML error page saved under the file's name all fail here.
///
/// ```no_run
/// bit_hub::verify_npz("BiT-M-R50x1.npz".as_ref())?;
/// # Ok::<(), bit_hub::FetchError>(())
/// ```
pub fn verify_npz(path: &Path) -> Result<()> {
    let bad = |found: String| FetchError::Integrity {
        path: path.to_path_buf(),
        what: "npz archive",
        expected: "a zip of .npy arrays with valid CRCs".into(),
        found,
    };
    let file = File::open(path).map_err(FetchError::io(path))?;
    let mut archive =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|e| bad(format!("not a zip ({e})")))?;
    if archive.is_empty() {
        return Err(bad("an empty archive".into()));
    }
    let mut buf = vec![0u8; 1 << 16];
    for i in 0..archive.len() {
        let mut member = archive
            .by_index(i)
            .map_err(|e| bad(format!("member {i} unreadable ({e})")))?;
        let name = member.name().to_owned();
        if !name.ends_with(".npy") {
            return Err(bad(format!("a member `{name}` that is not .npy")));
        }
        let mut magic = [0u8; 6];
        member
            .read_exact(&mut magic)
            .map_err(|e| bad(format!("`{name}` too short ({e})")))?;
        if &magic != b"\x93NUMPY" {
            return Err(bad(format!("`{name}` without the .npy magic")));
        }
        loop {
            match member.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(bad(format!("`{name}` damaged ({e})"))),
            }
        }
    }
    Ok(())
}

/// Checks a text file has exactly `expected` non-empty lines (a label file: one class per
/// line, in head order).
///
/// ```
/// let path = std::env::temp_dir().join("bit_hub_doc_lines.txt");
/// std::fs::write(&path, "tench\ngoldfish\n")?;
/// bit_hub::verify_lines(&path, 2)?;
/// assert!(bit_hub::verify_lines(&path, 1000).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify_lines(path: &Path, expected: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(FetchError::io(path))?;
    let found = text.lines().filter(|l| !l.trim().is_empty()).count();
    if found != expected {
        return Err(FetchError::Integrity {
            path: path.to_path_buf(),
            what: "line count",
            expected: expected.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}
