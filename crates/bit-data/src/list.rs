//! Image lists: a text file of `path label` lines (paths relative to the list's directory),
//! the form VTAB-1k's splits are often shared in (`train800val200.txt`, `test.txt`).

use std::path::Path;

use crate::error::{DataError, Result};
use crate::folder::{FolderDataset, typical_size};

impl FolderDataset {
    /// The images of a `path label` list, decoded when asked for (the list's directory is the
    /// [`root`](Self::root)): every line of the list at `path` must be `<image path> <label>`,
    /// the path relative to the list and a file, the label below `classes` (classes are named
    /// `0`, `1`, ...). Blank lines are skipped; a path may contain spaces (the label is the last
    /// field).
    ///
    /// ```
    /// let dir = std::env::temp_dir().join(format!("bit-doc-list-{}", std::process::id()));
    /// std::fs::create_dir_all(dir.join("images"))?;
    /// image::RgbImage::new(8, 6).save(dir.join("images/a.png"))?;
    /// std::fs::write(dir.join("train.txt"), "images/a.png 2\nimages/a.png 0\n")?;
    /// use bit_data::{FolderDataset, ImageDataset};
    ///
    /// let list = FolderDataset::from_list(&dir.join("train.txt"), 3)?;
    /// assert_eq!((list.len(), list.label(0), list.classes().len()), (2, 2, 3));
    /// assert_eq!(list.image(1)?.dimensions(), (8, 6));
    /// assert!(FolderDataset::from_list(&dir.join("train.txt"), 2).is_err()); // label 2 of 2 classes
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_list(path: &Path, classes: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(DataError::io(path))?;
        let root = path.parent().unwrap_or(Path::new("."));
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let bad = |reason: String| DataError::Format {
                path: path.to_path_buf(),
                reason: format!("line {}: {reason}", n + 1),
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (file, label) = line
                .rsplit_once(char::is_whitespace)
                .ok_or_else(|| bad(format!("`{line}` is not `<image path> <label>`")))?;
            let label: usize = label
                .parse()
                .map_err(|_| bad(format!("label `{label}` is not a non-negative integer")))?;
            if label >= classes {
                return Err(bad(format!(
                    "label {label}, but there are {classes} classes"
                )));
            }
            let file = root.join(file.trim_end());
            if !file.is_file() {
                return Err(bad(format!("{} is not a file", file.display())));
            }
            items.push((file, label));
        }
        if items.is_empty() {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                reason: "the list names no images".into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            classes: (0..classes).map(|c| c.to_string()).collect(),
            image_size: typical_size(&items),
            items,
            skipped: Vec::new(),
        })
    }
}
