//! MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST), raw or gzip-compressed. Grey images
//! are expanded to RGB when read.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Split;
use crate::dataset::InMemoryDataset;
use crate::error::{DataError, Result};

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Loads `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` from `dir`, with the given class
/// names (MNIST's digits when `None`).
pub fn load_idx(dir: &Path, split: Split, classes: Option<&[&str]>) -> Result<InMemoryDataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Valid => "t10k",
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (dims, pixels) = read_idx(&images_path, 0x08, 3)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::Format {
            path: images_path,
            reason: format!("images of {}x{} pixels", dims[1], dims[2]),
        });
    }
    let (label_dims, labels) = read_idx(&labels_path, 0x08, 1)?;
    if label_dims[0] != dims[0] {
        return Err(DataError::Format {
            path: labels_path,
            reason: format!("{} labels for {} images", label_dims[0], dims[0]),
        });
    }
    let classes: Vec<String> = match classes {
        Some(c) => c.iter().map(|s| s.to_string()).collect(),
        None => (0..10).map(|d| d.to_string()).collect(),
    };
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
        return Err(DataError::Format {
            path: labels_path,
            reason: format!("label {bad} out of range"),
        });
    }
    let labels = labels.into_iter().map(usize::from).collect();
    InMemoryDataset::new(classes, [dims[1], dims[2], 1], pixels, labels)
}

/// `name.gz` or `name` in `dir`.
fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    [format!("{name}.gz"), name.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::Io {
            path: dir.join(format!("{name}[.gz]")),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        })
}

/// The largest IDX payload this reader accepts (MNIST-style files are tens of MB): a header
/// that declares more is refused before anything is allocated for it.
const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads an unsigned-byte IDX file of `rank` dimensions: (dims, data). The header is read
/// first; the data must then be exactly the size it declares (checked arithmetic, and never
/// more read than declared, so a gzip bomb cannot exhaust memory).
fn read_idx(path: &Path, dtype: u8, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let file = std::fs::File::open(path).map_err(DataError::io(path))?;
    let mut file = std::io::BufReader::new(file);
    let gzip = {
        let head = std::io::BufRead::fill_buf(&mut file).map_err(DataError::io(path))?;
        head.starts_with(&[0x1f, 0x8b])
    };
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let bad = |reason: String| DataError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let stream = |e: std::io::Error| bad(format!("unreadable data: {e}"));
    let mut header = vec![0u8; 4 + 4 * rank];
    reader.read_exact(&mut header).map_err(|_| {
        bad(format!(
            "not an IDX file of unsigned bytes with {rank} dimensions (too short)"
        ))
    })?;
    if header[..2] != [0, 0] || header[2] != dtype || header[3] as usize != rank {
        return Err(bad(format!(
            "not an IDX file of unsigned bytes with {rank} dimensions"
        )));
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "dimensions {dims:?} declare more than the {MAX_IDX_BYTES} bytes this reader accepts"
            ))
        })?;
    let mut data = Vec::new();
    reader
        .by_ref()
        .take(expected)
        .read_to_end(&mut data)
        .map_err(stream)?;
    let mut extra = [0u8; 1];
    let trailing = reader.read(&mut extra).map_err(stream)?;
    if data.len() as u64 != expected || trailing != 0 {
        return Err(bad(format!(
            "{}{} data bytes, expected {expected} for dimensions {dims:?}",
            data.len(),
            if trailing != 0 { " or more" } else { "" }
        )));
    }
    Ok((dims, data))
}
