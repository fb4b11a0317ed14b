//! Class names of a head, and matching a labelled dataset's classes to them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bit_data::ImageDataset;
use image::RgbImage;

use crate::error::{InferError, Result};

/// Reads a label file: one class name per line, in head order; it must have `head_size`
/// non-empty lines.
///
/// ```
/// let path = std::env::temp_dir().join("bit_infer_doc_labels.txt");
/// std::fs::write(&path, "cat\ndog\n")?;
/// assert_eq!(bit_infer::read_label_file(&path, 2)?, ["cat", "dog"]);
/// assert!(bit_infer::read_label_file(&path, 3).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_label_file(path: &Path, head_size: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(InferError::io(path))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != head_size {
        return Err(InferError::Labels {
            path: path.to_path_buf(),
            reason: format!(
                "{} class names for a {head_size}-way head; one per line is expected",
                names.len()
            ),
        });
    }
    Ok(names)
}

/// Reads a class map: `<dataset class> <head index>` per line (the class may contain spaces,
/// the index is the last field; `#` starts a comment).
///
/// ```
/// let path = std::env::temp_dir().join("bit_infer_doc_map.txt");
/// std::fs::write(&path, "# folder index\nair liner 404\ntench 0\n")?;
/// let map = bit_infer::read_class_map(&path)?;
/// assert_eq!((map["air liner"], map["tench"]), (404, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_class_map(path: &Path) -> Result<HashMap<String, usize>> {
    let text = std::fs::read_to_string(path).map_err(InferError::io(path))?;
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| InferError::Labels {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", n + 1),
        };
        let (class, index) = line
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| bad(format!("`{line}` is not `<class> <index>`")))?;
        let index = index
            .parse()
            .map_err(|e| bad(format!("`{index}` is not a class index ({e})")))?;
        if map.insert(class.trim().to_string(), index).is_some() {
            return Err(bad(format!("`{}` is mapped twice", class.trim())));
        }
    }
    Ok(map)
}

/// `Tabby_Cat` / `tabby-cat` -> `tabby cat`.
fn normalise(name: &str) -> String {
    name.trim()
        .to_lowercase()
        .replace(['_', '-'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A WordNet id such as `n01440764`.
fn is_wordnet_id(s: &str) -> bool {
    s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// The head index of every dataset class. With a `class_map`, it decides; otherwise each class
/// is matched against the head's `names`: the whole name, a WordNet id (`n01440764`) or any of
/// the comma-separated lemmas (case, `_` and `-` ignored). Without names, a dataset with as
/// many classes as the head maps in order (a model fine-tuned on these very folders).
///
/// ```
/// let names = vec!["tench, Tinca tinca".to_string(), "goldfish, Carassius auratus".into()];
/// let map = bit_infer::map_classes(&["Goldfish".into(), "tench".into()], 2, Some(&names), None)?;
/// assert_eq!(map, vec![1, 0]);
/// # Ok::<(), bit_infer::InferError>(())
/// ```
pub fn map_classes(
    classes: &[String],
    head_size: usize,
    names: Option<&[String]>,
    class_map: Option<&HashMap<String, usize>>,
) -> Result<Vec<usize>> {
    if let Some(map) = class_map {
        let mut out = Vec::with_capacity(classes.len());
        let mut missing = Vec::new();
        for class in classes {
            match map.get(class) {
                Some(&i) if i < head_size => out.push(i),
                Some(&i) => {
                    return Err(InferError::ClassMapping(format!(
                        "`{class}` is mapped to {i}, beyond the {head_size}-way head"
                    )));
                }
                None => missing.push(class.as_str()),
            }
        }
        if !missing.is_empty() {
            return Err(InferError::ClassMapping(format!(
                "the class map has no line for {}",
                list(&missing)
            )));
        }
        return Ok(out);
    }
    let Some(names) = names else {
        if classes.len() == head_size {
            return Ok((0..head_size).collect());
        }
        return Err(InferError::ClassMapping(format!(
            "the model's classes have no names and the dataset has {} classes for a {head_size}-way \
             head; pass a class map (`<class> <index>` per line)",
            classes.len()
        )));
    };
    // Every spelling of every head class, normalised.
    let mut index: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let mut keys = vec![name.clone(), normalise(name)];
        let mut rest = name.as_str();
        if let Some((first, tail)) = name.split_once(' ')
            && is_wordnet_id(first)
        {
            keys.push(first.to_string());
            rest = tail;
        }
        keys.extend(rest.split(',').map(normalise));
        keys.sort();
        keys.dedup();
        for key in keys {
            index.entry(key).or_default().push(i);
        }
    }
    let (mut out, mut missing, mut ambiguous) = (Vec::new(), Vec::new(), Vec::new());
    for class in classes {
        let hits = index
            .get(class.as_str())
            .or_else(|| index.get(&normalise(class)));
        match hits.map(Vec::as_slice) {
            Some([i]) => out.push(*i),
            Some(many) => ambiguous.push(format!("`{class}` ({} head classes)", many.len())),
            None => missing.push(class.as_str()),
        }
    }
    if missing.is_empty() && ambiguous.is_empty() {
        return Ok(out);
    }
    let mut reasons = Vec::new();
    if !missing.is_empty() {
        reasons.push(format!("no head class is called {}", list(&missing)));
    }
    if !ambiguous.is_empty() {
        reasons.push(format!("ambiguous: {}", ambiguous.join(", ")));
    }
    Err(InferError::ClassMapping(format!(
        "{}; pass a class map (`<class> <index>` per line)",
        reasons.join("; ")
    )))
}

fn list(items: &[&str]) -> String {
    let shown: Vec<String> = items.iter().take(10).map(|c| format!("`{c}`")).collect();
    match items.len() {
        n if n > 10 => format!("{} and {} more", shown.join(", "), n - 10),
        _ => shown.join(", "),
    }
}

/// A dataset whose labels are re-numbered into a model's head (see [`map_classes`]).
///
/// ```
/// use std::sync::Arc;
/// use bit_data::{ImageDataset, InMemoryDataset};
/// use bit_infer::Relabelled;
///
/// let data = InMemoryDataset::new(vec!["dog".into(), "cat".into()], [1, 1, 3], vec![0; 6], vec![0, 1])?;
/// let head: Vec<String> = ["cat", "x", "dog"].map(String::from).to_vec();
/// let r = Relabelled::new(Arc::new(data), vec![2, 0], head);
/// assert_eq!((r.label(0), r.label(1)), (2, 0));
/// # Ok::<(), bit_data::DataError>(())
/// ```
pub struct Relabelled {
    inner: Arc<dyn ImageDataset>,
    map: Vec<usize>,
    classes: Vec<String>,
}

impl Relabelled {
    /// `inner` with label `l` read as `map[l]`, out of the head's `classes`.
    pub fn new(inner: Arc<dyn ImageDataset>, map: Vec<usize>, classes: Vec<String>) -> Self {
        Self {
            inner,
            map,
            classes,
        }
    }
}

impl ImageDataset for Relabelled {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn label(&self, index: usize) -> usize {
        self.map[self.inner.label(index)]
    }

    fn image(&self, index: usize) -> bit_data::Result<RgbImage> {
        self.inner.image(index)
    }

    fn image_size(&self) -> Option<(usize, usize)> {
        self.inner.image_size()
    }
}
