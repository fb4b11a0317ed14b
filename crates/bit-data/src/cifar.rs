//! CIFAR-10 and CIFAR-100 from the official binary archives.

use std::path::{Component, Path, PathBuf};

use crate::Split;
use crate::dataset::InMemoryDataset;
use crate::error::{DataError, Result};
use bit_hub::RemoteFile;

/// Where the official archives are published.
pub const CIFAR_BASE_URL: &str = "https://www.cs.toronto.edu/~kriz";
/// Environment variable that overrides [`CIFAR_BASE_URL`] (mirrors, tests).
pub const CIFAR_BASE_URL_ENV: &str = "BIT_CIFAR_BASE_URL";

const IMAGE_BYTES: usize = 32 * 32 * 3;

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    /// 10 classes.
    Cifar10,
    /// 100 classes; the fine labels are used.
    Cifar100,
}

impl Cifar {
    /// The archive's file name.
    pub fn archive_name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-binary.tar.gz",
            Self::Cifar100 => "cifar-100-binary.tar.gz",
        }
    }

    /// The published archive at `base_url`.
    pub fn remote(self, base_url: &str) -> RemoteFile {
        let (size, md5) = match self {
            Self::Cifar10 => (170_052_171, "c32a1d4ab5d03f1284b67883e8d87530"),
            Self::Cifar100 => (168_513_733, "03b5dce01913d631647c71ecec9e9cb8"),
        };
        RemoteFile {
            url: format!("{}/{}", base_url.trim_end_matches('/'), self.archive_name()),
            size: Some(size),
            md5: Some(md5.to_string()),
            ..Default::default()
        }
    }

    /// The directory the archive extracts to.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar-10-batches-bin",
            Self::Cifar100 => "cifar-100-binary",
        }
    }

    /// The record files of `split` in the extracted directory ([`dir_name`](Self::dir_name)),
    /// as the release names them.
    ///
    /// ```
    /// use bit_data::{Cifar, Split};
    ///
    /// assert_eq!(Cifar::Cifar10.files(Split::Train).len(), 5);
    /// assert_eq!(Cifar::Cifar100.files(Split::Valid), ["test.bin"]);
    /// ```
    pub fn files(self, split: Split) -> Vec<&'static str> {
        match (self, split) {
            (Self::Cifar10, Split::Train) => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            (Self::Cifar10, Split::Valid) => vec!["test_batch.bin"],
            (Self::Cifar100, Split::Train) => vec!["train.bin"],
            (Self::Cifar100, Split::Valid) => vec!["test.bin"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "CIFAR-10",
            Self::Cifar100 => "CIFAR-100",
        }
    }

    /// How many records each of the split's files holds in the official release.
    fn records_per_file(self, split: Split) -> usize {
        match (self, split) {
            (Self::Cifar100, Split::Train) => 50_000,
            _ => 10_000,
        }
    }

    /// The file of class names in the extracted directory, one per line.
    pub fn names_file(self) -> &'static str {
        match self {
            Self::Cifar10 => "batches.meta.txt",
            Self::Cifar100 => "fine_label_names.txt",
        }
    }

    fn num_classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }

    /// Loads a split from `datadir`, in this order of preference: the extracted directory,
    /// the archive (verified, then extracted), a download of the archive (from
    /// `$BIT_CIFAR_BASE_URL`, else the official site) into `datadir`.
    pub fn load(self, datadir: &Path, split: Split) -> Result<InMemoryDataset> {
        let base = std::env::var(CIFAR_BASE_URL_ENV).unwrap_or_else(|_| CIFAR_BASE_URL.to_string());
        self.load_from(datadir, split, &self.remote(&base))
    }

    /// [`load`](Self::load) with an explicit source for the archive.
    pub fn load_from(
        self,
        datadir: &Path,
        split: Split,
        remote: &RemoteFile,
    ) -> Result<InMemoryDataset> {
        let dir = datadir.join(self.dir_name());
        let extracted = self
            .files(split)
            .iter()
            .chain([&self.names_file()])
            .all(|f| dir.join(f).is_file());
        if !extracted {
            let archive = datadir.join(self.archive_name());
            remote.fetch(&archive)?;
            extract_tar_gz(&archive, datadir)?;
        }
        self.parse(&dir, split)
    }

    fn parse(self, dir: &Path, split: Split) -> Result<InMemoryDataset> {
        let names_path = dir.join(self.names_file());
        let classes: Vec<String> = std::fs::read_to_string(&names_path)
            .map_err(DataError::io(&names_path))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if classes.len() != self.num_classes() {
            return Err(DataError::Format {
                path: names_path,
                reason: format!(
                    "{} class names, expected {}",
                    classes.len(),
                    self.num_classes()
                ),
            });
        }
        // CIFAR-100 records carry (coarse, fine) labels; CIFAR-10 one label.
        let label_bytes = match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        };
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        let record = label_bytes + IMAGE_BYTES;
        let expected = self.records_per_file(split);
        for file in self.files(split) {
            let path = dir.join(file);
            // The exact size of the release's file, checked before reading it: a file cut at a
            // record boundary (or padded) is as wrong as one cut mid-record, and training on
            // part of CIFAR is silent data loss.
            let len = std::fs::metadata(&path)
                .map_err(DataError::io(&path))?
                .len();
            if len != (expected * record) as u64 {
                let whole = if len % record as u64 == 0 {
                    format!("{} records", len / record as u64)
                } else {
                    "not a whole number of records".to_string()
                };
                return Err(DataError::Format {
                    path,
                    reason: format!(
                        "{len} bytes ({whole}); the release's file holds exactly {expected} \
                         {record}-byte records: truncated, or not {}",
                        self.name()
                    ),
                });
            }
            let bytes = std::fs::read(&path).map_err(DataError::io(&path))?;
            if bytes.len() != expected * record {
                return Err(DataError::Format {
                    path,
                    reason: "changed while being read".to_string(),
                });
            }
            for rec in bytes.chunks_exact(record) {
                let label = rec[label_bytes - 1] as usize;
                if label >= classes.len() {
                    return Err(DataError::Format {
                        path,
                        reason: format!("label {label} out of range"),
                    });
                }
                labels.push(label);
                // Records are planar (1024 R, 1024 G, 1024 B); store HWC.
                let planes = &rec[label_bytes..];
                pixels.extend(
                    (0..1024).flat_map(|i| [planes[i], planes[1024 + i], planes[2048 + i]]),
                );
            }
        }
        InMemoryDataset::new(classes, [32, 32, 3], pixels, labels)
    }
}

/// Extracts a `.tar.gz` into `dest`, refusing absolute paths, `..` and links.
pub fn extract_tar_gz(archive: &Path, dest: &Path) -> Result<()> {
    let bad = |reason: String| DataError::Archive {
        path: archive.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(archive).map_err(DataError::io(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path: PathBuf = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let kind = entry.header().entry_type();
        let safe = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe || !(kind.is_file() || kind.is_dir()) {
            return Err(DataError::UnsafeArchiveEntry {
                path: archive.to_path_buf(),
                entry: path.display().to_string(),
            });
        }
        let target = dest.join(&path);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(DataError::io(&target))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(DataError::io(parent))?;
        }
        entry
            .unpack(&target)
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}
