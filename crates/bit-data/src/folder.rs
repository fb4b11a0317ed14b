//! Folders of class sub-directories: ImageNet-2012's `train/<wnid>/*.JPEG` and any custom
//! dataset laid out the same way. Classes are the sub-directory names, sorted.

use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};

/// File extensions (case-insensitive) read as images.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff", "jfif",
];

/// What to do with a file that is not an image (by its extension) inside a class folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonImagePolicy {
    /// Fail with [`DataError::NotAnImage`] naming the file (the default: nothing is dropped
    /// silently).
    #[default]
    Error,
    /// Skip it, with a warning in the log naming every skipped file.
    SkipWithWarning,
}

impl NonImagePolicy {
    /// The policy of a `--skip_non_images` flag: skip when set, fail otherwise.
    ///
    /// ```
    /// use bit_data::NonImagePolicy;
    ///
    /// assert_eq!(NonImagePolicy::from_skip_flag(true), NonImagePolicy::SkipWithWarning);
    /// assert_eq!(NonImagePolicy::from_skip_flag(false), NonImagePolicy::Error);
    /// ```
    pub fn from_skip_flag(skip_non_images: bool) -> Self {
        if skip_non_images {
            Self::SkipWithWarning
        } else {
            Self::Error
        }
    }
}

/// Labelled image files: a folder of class sub-directories, or a `path label` list
/// ([`from_list`](Self::from_list)); images are decoded when asked for.
///
/// ```
/// # let root = std::env::temp_dir().join(format!("bit-data-doc-folder-{}", std::process::id()));
/// # for (class, n) in [("cat", 2), ("dog", 1)] {
/// #     std::fs::create_dir_all(root.join(class)).unwrap();
/// #     for i in 0..n { image::RgbImage::new(8, 6).save(root.join(class).join(format!("{i}.png"))).unwrap(); }
/// # }
/// use bit_data::{FolderDataset, ImageDataset, NonImagePolicy};
///
/// let ds = FolderDataset::open(&root, NonImagePolicy::Error)?;
/// assert_eq!(ds.classes(), ["cat", "dog"]);
/// assert_eq!((ds.len(), ds.label(2)), (3, 1));
/// assert_eq!(ds.image(0)?.dimensions(), (8, 6));
/// # std::fs::remove_dir_all(&root).ok();
/// # Ok::<(), bit_data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FolderDataset {
    pub(crate) root: PathBuf,
    pub(crate) classes: Vec<String>,
    pub(crate) items: Vec<(PathBuf, usize)>,
    pub(crate) skipped: Vec<PathBuf>,
    pub(crate) image_size: Option<(usize, usize)>,
}

impl FolderDataset {
    /// Scans `root/<class>/<file>` (one level; files sorted by name within a class). Only
    /// regular files (or links to them) with an image extension are images: anything else (a
    /// FIFO named `.png` included, which would block a reader) is a non-image, an error or
    /// skipped by `non_images`. Class folders whose names are not UTF-8 are read all the same
    /// (their class name is the lossy conversion).
    pub fn open(root: impl AsRef<Path>, non_images: NonImagePolicy) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        // Sorted by directory name, as the reference's ImageFolder does.
        let class_dirs: Vec<PathBuf> = sorted_entries(&root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        if class_dirs.is_empty() {
            return Err(DataError::NoClasses { path: root });
        }
        let classes: Vec<String> = class_dirs
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let (mut items, mut skipped) = (Vec::new(), Vec::new());
        for (label, (dir, class)) in class_dirs.iter().zip(&classes).enumerate() {
            let before = items.len();
            for path in sorted_entries(dir)? {
                let metadata = std::fs::metadata(&path).map_err(DataError::io(&path))?;
                if metadata.is_dir() {
                    continue;
                }
                if metadata.is_file() && is_image(&path) {
                    items.push((path, label));
                } else if non_images == NonImagePolicy::Error {
                    return Err(DataError::NotAnImage { path });
                } else {
                    tracing::warn!(file = %path.display(), "skipping a file that is not an image");
                    skipped.push(path);
                }
            }
            if items.len() == before {
                return Err(DataError::EmptyClass {
                    path: dir.clone(),
                    class: class.clone(),
                });
            }
        }
        let image_size = typical_size(&items);
        Ok(Self {
            root,
            classes,
            items,
            skipped,
            image_size,
        })
    }

    /// The scanned directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of example `index`.
    pub fn path(&self, index: usize) -> &Path {
        &self.items[index].0
    }
}

impl ImageDataset for FolderDataset {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> usize {
        self.items[index].1
    }

    fn image(&self, index: usize) -> Result<RgbImage> {
        decode_rgb(&self.items[index].0)
    }

    fn image_size(&self) -> Option<(usize, usize)> {
        self.image_size
    }

    fn skipped(&self) -> &[PathBuf] {
        &self.skipped
    }
}

/// A list of image files without labels (every label is 0, of one class `unlabelled`), in
/// the given order: the input of prediction and feature extraction.
///
/// ```
/// use bit_data::{ImageDataset, ImageFiles};
///
/// let path = std::env::temp_dir().join("bit_data_doc_image_files.png");
/// image::RgbImage::new(8, 6).save(&path)?;
/// let files = ImageFiles::new(vec![path.clone()])?;
/// assert_eq!(files.image(0)?.dimensions(), (8, 6));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ImageFiles {
    paths: Vec<PathBuf>,
    classes: Vec<String>,
    image_size: Option<(usize, usize)>,
    skipped: Vec<PathBuf>,
}

impl ImageFiles {
    /// The files `paths`, which must exist and be regular files (they are decoded when read).
    pub fn new(paths: Vec<PathBuf>) -> Result<Self> {
        for path in &paths {
            if !std::fs::metadata(path)
                .map_err(DataError::io(path))?
                .is_file()
            {
                return Err(DataError::NotAnImage { path: path.clone() });
            }
        }
        let items: Vec<(PathBuf, usize)> = paths.iter().map(|p| (p.clone(), 0)).collect();
        Ok(Self {
            image_size: typical_size(&items),
            paths,
            classes: vec!["unlabelled".into()],
            skipped: Vec::new(),
        })
    }

    /// Every image under `root`, at any depth (class folders or none: labels are not read),
    /// in path order. Only regular files with an image extension are images; anything else is
    /// an error or skipped by `non_images`. Linked directories are not followed (no cycles).
    ///
    /// ```
    /// use bit_data::{ImageDataset, ImageFiles, NonImagePolicy};
    ///
    /// let root = std::env::temp_dir().join("bit_data_doc_image_tree");
    /// std::fs::create_dir_all(root.join("any/depth"))?;
    /// image::RgbImage::new(8, 6).save(root.join("a.png"))?;
    /// image::RgbImage::new(8, 6).save(root.join("any/depth/b.png"))?;
    /// let files = ImageFiles::under(&root, NonImagePolicy::Error)?;
    /// assert_eq!((files.len(), files.classes().len()), (2, 1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn under(root: impl AsRef<Path>, non_images: NonImagePolicy) -> Result<Self> {
        let root = root.as_ref();
        let (mut paths, mut skipped) = (Vec::new(), Vec::new());
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for path in sorted_entries(&dir)?.into_iter().rev() {
                let link = std::fs::symlink_metadata(&path).map_err(DataError::io(&path))?;
                if link.is_dir() {
                    pending.push(path);
                    continue;
                }
                let metadata = std::fs::metadata(&path).map_err(DataError::io(&path))?;
                if metadata.is_file() && is_image(&path) {
                    paths.push(path);
                } else if metadata.is_dir() {
                    continue;
                } else if non_images == NonImagePolicy::Error {
                    return Err(DataError::NotAnImage { path });
                } else {
                    tracing::warn!(file = %path.display(), "skipping a file that is not an image");
                    skipped.push(path);
                }
            }
        }
        if paths.is_empty() {
            return Err(DataError::NoImages {
                path: root.to_path_buf(),
            });
        }
        paths.sort();
        let items: Vec<(PathBuf, usize)> = paths.iter().map(|p| (p.clone(), 0)).collect();
        Ok(Self {
            image_size: typical_size(&items),
            paths,
            classes: vec!["unlabelled".into()],
            skipped,
        })
    }

    /// The file of example `index`.
    pub fn path(&self, index: usize) -> &Path {
        &self.paths[index]
    }
}

impl ImageDataset for ImageFiles {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, _index: usize) -> usize {
        0
    }

    fn image(&self, index: usize) -> Result<RgbImage> {
        decode_rgb(&self.paths[index])
    }

    fn image_size(&self) -> Option<(usize, usize)> {
        self.image_size
    }

    fn skipped(&self) -> &[PathBuf] {
        &self.skipped
    }
}

/// Decodes any supported image file (format guessed from its bytes) to 8-bit RGB.
fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(DataError::io(path))?;
    decode_bytes(&bytes, path)
}

/// Decodes an encoded image (format guessed from its bytes) to 8-bit RGB; `path` names it in
/// errors. A JPEG without its end marker is refused: the decoder would fill the missing part
/// of a truncated file with grey and return a wrong image without a word.
pub(crate) fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let decode_error = |source| DataError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(DataError::io(path))?;
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(decode_error(image::ImageError::Decoding(
            image::error::DecodingError::new(
                image::ImageFormat::Jpeg.into(),
                "the file ends before the JPEG's end-of-image marker (truncated)",
            ),
        )));
    }
    Ok(reader.decode().map_err(decode_error)?.into_rgb8())
}

/// Whether a JPEG's last start-of-scan marker (`FF DA`) is followed by the end-of-image
/// marker (`FF D9`): inside the entropy-coded data a `FF` byte is always followed by `00` or
/// a restart marker, so `FF D9` there is the real end; the last scan, not the first `FF D9`,
/// because an EXIF thumbnail before the image has an end marker of its own.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    let end = bytes.windows(2).rposition(|w| w == [0xff, 0xd9]);
    matches!((last_scan, end), (Some(s), Some(e)) if e > s)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(DataError::io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(DataError::io(dir))?;
    entries.sort();
    Ok(entries)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Median `(height, width)` over up to 64 images spread through the dataset, from their
/// headers only.
pub(crate) fn typical_size(items: &[(PathBuf, usize)]) -> Option<(usize, usize)> {
    let step = items.len().div_ceil(64).max(1);
    let mut sizes: Vec<(usize, usize)> = items
        .iter()
        .step_by(step)
        .filter_map(|(p, _)| {
            let (w, h) = image::ImageReader::open(p)
                .ok()?
                .with_guessed_format()
                .ok()?
                .into_dimensions()
                .ok()?;
            Some((h as usize, w as usize))
        })
        .collect();
    sizes.sort_by_key(|&(h, w)| h * w);
    sizes.get(sizes.len() / 2).copied()
}
