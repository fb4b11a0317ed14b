//! TensorFlow Datasets prepared directories (`{data_dir}/{name}[/{config}]/{version}/`), read
//! directly: `dataset_info.json` for the split's shards and their lengths,
//! `{name}-{split}.tfrecord-NNNNN-of-MMMMM` shards of `tf.train.Example` records, and
//! `{feature}.labels.txt` for class names.

use std::fs::File;
use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};

use image::RgbImage;
use rayon::prelude::*;

use crate::dataset::ImageDataset;
use crate::error::{DataError, Result};
use crate::folder::decode_bytes;
use crate::tfrecord::{Example, RecordSpan, decode_example, read_record_from, record_spans};

/// One split of a TFDS prepared directory: its shards, in order, and their records.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("bit-doc-tfds-split-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let mut file = std::fs::File::create(dir.join("toy-train.tfrecord-00000-of-00001"))?;
/// # for _ in 0..3 { bit_data::write_record(&mut file, b"")?; }
/// use bit_data::TfdsSplit;
///
/// let split = TfdsSplit::open(&dir, "train")?;
/// assert_eq!(split.len(), 3);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct TfdsSplit {
    dir: PathBuf,
    split: String,
    shards: Vec<(PathBuf, Vec<RecordSpan>)>,
}

impl TfdsSplit {
    /// Finds the shards of `split` in `dir` (all `MMMMM` of them, or an error naming the
    /// missing one) and indexes their records; where `dataset_info.json` lists the split's shard
    /// lengths, every shard must have exactly that many records (a partly written directory is
    /// an error, not a smaller dataset).
    pub fn open(dir: &Path, split: &str) -> Result<Self> {
        let format = |reason: String| DataError::Format {
            path: dir.to_path_buf(),
            reason,
        };
        let marker = format!("-{split}.tfrecord-");
        let mut found: Vec<(usize, usize, PathBuf)> = Vec::new();
        let mut array_records = false;
        for entry in std::fs::read_dir(dir).map_err(DataError::io(dir))? {
            let path = entry.map_err(DataError::io(dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            array_records |= name.contains(&format!("-{split}.array_record-"));
            let Some((_, numbers)) = name.split_once(&marker) else {
                continue;
            };
            let parsed = numbers
                .split_once("-of-")
                .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)));
            match parsed {
                Some((i, n)) => found.push((i, n, path)),
                None => return Err(format(format!("unexpected shard name {name}"))),
            }
        }
        if found.is_empty() {
            let hint = match array_records {
                true => {
                    " (only ArrayRecord files: prepare the dataset with \
                     file_format=\"tfrecord\")"
                }
                false => "",
            };
            return Err(format(format!(
                "no `{split}` split: no *-{split}.tfrecord-NNNNN-of-MMMMM files{hint}"
            )));
        }
        found.sort();
        let total = found[0].1;
        if let Some(i) = (0..total).find(|&i| !found.iter().any(|f| f.0 == i && f.1 == total)) {
            return Err(format(format!(
                "shard {i:05} of {total:05} of the `{split}` split is missing"
            )));
        }
        if found.len() != total {
            return Err(format(format!(
                "the `{split}` split's shards disagree on how many there are"
            )));
        }
        let shards = found
            .into_par_iter()
            .map(|(_, _, path)| Ok((record_spans(&path)?, path)))
            .map(|r: Result<_>| r.map(|(spans, path)| (path, spans)))
            .collect::<Result<Vec<_>>>()?;
        if let Some(lengths) = shard_lengths(dir, split)? {
            let counted: Vec<usize> = shards.iter().map(|(_, s)| s.len()).collect();
            if lengths != counted {
                return Err(format(format!(
                    "the `{split}` shards hold {counted:?} records, dataset_info.json says \
                     {lengths:?} (an incomplete copy?)"
                )));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            shards,
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|(_, s)| s.len()).sum()
    }

    /// Whether the split has no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shard index and record span of each record in `range`, in order.
    fn locate(&self, range: Range<usize>) -> Result<Vec<(usize, RecordSpan)>> {
        if range.end > self.len() || range.start > range.end {
            return Err(DataError::InvalidArgument(format!(
                "{}: records {}..{} of the `{}` split, which has {}",
                self.dir.display(),
                range.start,
                range.end,
                self.split,
                self.len()
            )));
        }
        Ok(self
            .shards
            .iter()
            .enumerate()
            .flat_map(|(s, (_, spans))| spans.iter().map(move |&span| (s, span)))
            .skip(range.start)
            .take(range.len())
            .collect())
    }
}

/// `splits[name == split].shardLengths` of the directory's `dataset_info.json`, if it says.
fn shard_lengths(dir: &Path, split: &str) -> Result<Option<Vec<usize>>> {
    let path = dir.join("dataset_info.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataError::io(&path)(e)),
    };
    let info: serde_json::Value = serde_json::from_str(&text).map_err(|e| DataError::Format {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let entry = info["splits"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == split));
    let Some(lengths) = entry.and_then(|e| e["shardLengths"].as_array()) else {
        return Ok(None);
    };
    // Protocol-buffer JSON writes 64-bit integers as strings.
    lengths
        .iter()
        .map(|l| {
            l.as_u64()
                .or_else(|| l.as_str()?.parse().ok())
                .map(|l| l as usize)
        })
        .collect::<Option<Vec<_>>>()
        .map(Some)
        .ok_or_else(|| DataError::Format {
            path,
            reason: format!("the `{split}` split's shardLengths are not integers"),
        })
}

/// How an image is stored in a record: an encoded image (PNG, JPEG, ...) under `key`, whose
/// values are multiplied by `scale` (dSprites stores 0/1 masks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFeature {
    /// The bytes feature holding the encoded image.
    pub key: String,
    /// Pixel multiplier (saturating), 1 for ordinary images.
    pub scale: u8,
}

impl ImageFeature {
    /// An ordinary image under `key`.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            scale: 1,
        }
    }
}

/// A record's label, or why it has none.
pub type LabelOf<'a> = dyn Fn(&Example) -> std::result::Result<usize, String> + Sync + 'a;

/// Labelled images from slices of the splits of a TFDS directory. Labels are computed once at
/// opening (every selected record is read and checked then); images are decoded when asked for.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("bit-doc-tfds-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let mut png = Vec::new();
/// # image::RgbImage::new(8, 6).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
/// # let mut file = std::fs::File::create(dir.join("toy-train.tfrecord-00000-of-00001"))?;
/// # for label in [0, 1, 1, 0] {
/// #     let example = bit_data::Example::default().with_bytes("image", vec![png.clone()]).with_int64s("label", vec![label]);
/// #     bit_data::write_record(&mut file, &prost::Message::encode_to_vec(&example))?;
/// # }
/// use bit_data::{ImageDataset, ImageFeature, TfdsDataset, TfdsSplit};
///
/// let train = TfdsSplit::open(&dir, "train")?;
/// let label = |e: &bit_data::Example| Ok(e.int64s("label")?[0] as usize);
/// let classes = vec!["no".to_string(), "yes".to_string()];
/// let ds = TfdsDataset::open(&[(&train, 1..4)], &ImageFeature::new("image"), &label, classes)?;
/// assert_eq!((ds.len(), ds.label(0), ds.label(2)), (3, 1, 0));
/// assert_eq!(ds.image(0)?.dimensions(), (8, 6));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct TfdsDataset {
    files: Vec<PathBuf>,
    items: Vec<(usize, RecordSpan)>,
    labels: Vec<usize>,
    classes: Vec<String>,
    image: ImageFeature,
    image_size: Option<(usize, usize)>,
}

impl TfdsDataset {
    /// The records `range` of each split in `slices`, concatenated, labelled by `label`
    /// (which must give a label below `classes.len()`), with images under `image`.
    pub fn open(
        slices: &[(&TfdsSplit, Range<usize>)],
        image: &ImageFeature,
        label: &LabelOf,
        classes: Vec<String>,
    ) -> Result<Self> {
        let (mut files, mut items) = (Vec::new(), Vec::new());
        for (split, range) in slices {
            let first = files.len();
            files.extend(split.shards.iter().map(|(p, _)| p.clone()));
            items.extend(
                split
                    .locate(range.clone())?
                    .into_iter()
                    .map(|(s, span)| (first + s, span)),
            );
        }
        // Read every record once, a chunk per thread with its own file handles.
        let labels = items
            .par_chunks(256)
            .map(|chunk| {
                let mut open: Option<(usize, File)> = None;
                chunk
                    .iter()
                    .map(|&(f, span)| {
                        let example = read_example(&files, f, span, &mut open)?;
                        example
                            .bytes(&image.key)
                            .and_then(|b| match b.len() {
                                1 => Ok(()),
                                n => Err(format!("feature `{}` holds {n} images", image.key)),
                            })
                            .and_then(|()| label(&example))
                            .and_then(|l| match l < classes.len() {
                                true => Ok(l),
                                false => Err(format!(
                                    "label {l}, but the dataset has {} classes",
                                    classes.len()
                                )),
                            })
                            .map_err(|reason| record_error(&files[f], span, reason))
                    })
                    .collect::<Result<Vec<usize>>>()
            })
            .collect::<Result<Vec<Vec<usize>>>>()?
            .concat();
        let mut dataset = Self {
            files,
            items,
            labels,
            classes,
            image: image.clone(),
            image_size: None,
        };
        dataset.image_size = dataset.typical_size();
        Ok(dataset)
    }

    /// Median `(height, width)` over up to 16 images spread through the dataset, from their
    /// headers.
    fn typical_size(&self) -> Option<(usize, usize)> {
        let step = self.items.len().div_ceil(16).max(1);
        let mut sizes: Vec<(usize, usize)> = (0..self.items.len())
            .step_by(step)
            .filter_map(|i| {
                let bytes = self.encoded(i).ok()?;
                let (w, h) = image::ImageReader::new(Cursor::new(bytes))
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

    /// The encoded image of example `index`.
    fn encoded(&self, index: usize) -> Result<Vec<u8>> {
        let (f, span) = self.items[index];
        let mut example = read_example(&self.files, f, span, &mut None)?;
        let features = example.features.as_mut().map(|f| &mut f.feature);
        match features
            .and_then(|f| f.remove(&self.image.key))
            .and_then(|f| f.kind)
        {
            Some(crate::tfrecord::FeatureList::BytesList(mut l)) if l.value.len() == 1 => {
                Ok(l.value.remove(0))
            }
            _ => Err(record_error(
                &self.files[f],
                span,
                format!("no image under `{}`", self.image.key),
            )),
        }
    }
}

fn read_example(
    files: &[PathBuf],
    f: usize,
    span: RecordSpan,
    open: &mut Option<(usize, File)>,
) -> Result<Example> {
    let path = &files[f];
    if open.as_ref().is_none_or(|(g, _)| *g != f) {
        *open = Some((f, File::open(path).map_err(DataError::io(path))?));
    }
    let (_, file) = open.as_mut().expect("opened above");
    let data = read_record_from(file, path, span)?;
    decode_example(&data, path, span)
}

fn record_error(path: &Path, span: RecordSpan, reason: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        reason: format!("the record at byte {}: {reason}", span.start()),
    }
}

impl ImageDataset for TfdsDataset {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> usize {
        self.labels[index]
    }

    fn image(&self, index: usize) -> Result<RgbImage> {
        let bytes = self.encoded(index)?;
        let (f, span) = self.items[index];
        let name = format!(
            "{} (record at byte {})",
            self.files[f].display(),
            span.start()
        );
        let mut rgb = decode_bytes(&bytes, Path::new(&name))?;
        if self.image.scale != 1 {
            rgb.iter_mut()
                .for_each(|v| *v = v.saturating_mul(self.image.scale));
        }
        Ok(rgb)
    }

    fn image_size(&self) -> Option<(usize, usize)> {
        self.image_size
    }
}

/// The class names TFDS wrote for a class-label feature (`{dir}/{feature}.labels.txt`), if
/// the file exists.
pub fn tfds_class_names(dir: &Path, feature: &str) -> Result<Option<Vec<String>>> {
    let path = dir.join(format!("{feature}.labels.txt"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.lines().map(str::to_string).collect())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DataError::io(&path)(e)),
    }
}

/// Writes `examples` as the split `split` of a TFDS prepared directory `dir` of the dataset
/// `name`: `shards` files `{name}-{split}.tfrecord-NNNNN-of-MMMMM` (each written atomically)
/// and the split's entry in `dataset_info.json` (created or updated). How tests, and anyone
/// converting a dataset for `bit vtab`, make a directory that [`TfdsSplit`] reads.
///
/// ```
/// use bit_data::{Example, TfdsSplit, write_tfds_split};
///
/// let dir = std::env::temp_dir().join(format!("bit-doc-write-tfds-{}", std::process::id()));
/// let examples = vec![Example::default().with_int64s("label", vec![1]); 5];
/// write_tfds_split(&dir, "toy", "test", &examples, 2)?;
/// assert_eq!(TfdsSplit::open(&dir, "test")?.len(), 5);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), bit_data::DataError>(())
/// ```
pub fn write_tfds_split(
    dir: &Path,
    name: &str,
    split: &str,
    examples: &[Example],
    shards: usize,
) -> Result<()> {
    use prost::Message;
    if shards == 0 || shards > examples.len().max(1) {
        return Err(DataError::InvalidArgument(format!(
            "{shards} shards for {} examples",
            examples.len()
        )));
    }
    std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
    let per_shard = examples.len().div_ceil(shards).max(1);
    let mut lengths = Vec::new();
    for s in 0..shards {
        let part = examples.chunks(per_shard).nth(s).unwrap_or(&[]);
        let path = dir.join(format!("{name}-{split}.tfrecord-{s:05}-of-{shards:05}"));
        bit_hub::write_atomically(&path, |file| {
            part.iter()
                .try_for_each(|e| crate::tfrecord::write_record(file, &e.encode_to_vec()))
        })
        .map_err(DataError::io(&path))?;
        lengths.push(part.len().to_string());
    }
    let path = dir.join("dataset_info.json");
    let mut info: serde_json::Value = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| DataError::Format {
            path: path.clone(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({"name": name}),
        Err(e) => return Err(DataError::io(&path)(e)),
    };
    let entry = serde_json::json!({"name": split, "shardLengths": lengths});
    match info["splits"].as_array_mut() {
        Some(splits) => {
            splits.retain(|s| s["name"] != split);
            splits.push(entry);
        }
        None => info["splits"] = serde_json::json!([entry]),
    }
    let text = serde_json::to_string_pretty(&info).expect("JSON values serialize");
    bit_hub::write_atomically(&path, |file| {
        std::io::Write::write_all(file, text.as_bytes())
    })
    .map_err(DataError::io(&path))
}
