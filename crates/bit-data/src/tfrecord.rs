//! TFRecord files and the `tf.train.Example` records in them: the storage of TensorFlow
//! Datasets' prepared directories, read without TensorFlow.
//!
//! A TFRecord file is a sequence of records, each
//! `length: u64 LE | masked CRC32C(length bytes): u32 LE | data | masked CRC32C(data): u32 LE`,
//! where the mask is TensorFlow's `((crc >> 15) | (crc << 17)) + 0xa282ead8`. Both checksums are
//! checked: a flipped bit or a torn file is an error naming the file and the record, never a
//! wrong label.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use prost::Message;

use crate::error::{DataError, Result};

/// `tf.train.Example`: named features, each a list of byte strings, floats or integers.
///
/// ```
/// use bit_data::Example;
/// use prost::Message;
///
/// let example = Example::default()
///     .with_bytes("image", vec![b"...png...".to_vec()])
///     .with_int64s("label", vec![7])
///     .with_floats("objects/pixel_coords", vec![1.0, 2.0, 9.5]);
/// let decoded = Example::decode(&example.encode_to_vec()[..])?;
/// assert_eq!(decoded.int64s("label"), Ok(&[7][..]));
/// assert_eq!(decoded.floats("objects/pixel_coords").unwrap()[2], 9.5);
/// assert!(decoded.int64s("image").is_err()); // a byte list, not integers
/// # Ok::<(), prost::DecodeError>(())
/// ```
#[derive(Clone, PartialEq, Message)]
pub struct Example {
    /// The features, by name.
    #[prost(message, optional, tag = "1")]
    pub features: Option<Features>,
}

/// `tf.train.Features`.
#[derive(Clone, PartialEq, Message)]
pub struct Features {
    /// Feature name to value list (TFDS flattens nested features as `outer/inner`).
    #[prost(map = "string, message", tag = "1")]
    pub feature: HashMap<String, Feature>,
}

/// `tf.train.Feature`: one of three list types.
#[derive(Clone, PartialEq, Message)]
pub struct Feature {
    /// The list.
    #[prost(oneof = "FeatureList", tags = "1, 2, 3")]
    pub kind: Option<FeatureList>,
}

/// The value list of a [`Feature`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum FeatureList {
    /// `bytes_list` (encoded images, strings).
    #[prost(message, tag = "1")]
    BytesList(BytesList),
    /// `float_list`.
    #[prost(message, tag = "2")]
    FloatList(FloatList),
    /// `int64_list` (labels).
    #[prost(message, tag = "3")]
    Int64List(Int64List),
}

/// `tf.train.BytesList`.
#[derive(Clone, PartialEq, Message)]
pub struct BytesList {
    /// The values.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub value: Vec<Vec<u8>>,
}

/// `tf.train.FloatList`.
#[derive(Clone, PartialEq, Message)]
pub struct FloatList {
    /// The values.
    #[prost(float, repeated, tag = "1")]
    pub value: Vec<f32>,
}

/// `tf.train.Int64List`.
#[derive(Clone, PartialEq, Message)]
pub struct Int64List {
    /// The values.
    #[prost(int64, repeated, tag = "1")]
    pub value: Vec<i64>,
}

impl Example {
    /// Adds (or replaces) a byte-string feature.
    pub fn with_bytes(self, key: &str, value: Vec<Vec<u8>>) -> Self {
        self.with(key, FeatureList::BytesList(BytesList { value }))
    }

    /// Adds (or replaces) a float feature.
    pub fn with_floats(self, key: &str, value: Vec<f32>) -> Self {
        self.with(key, FeatureList::FloatList(FloatList { value }))
    }

    /// Adds (or replaces) an integer feature.
    pub fn with_int64s(self, key: &str, value: Vec<i64>) -> Self {
        self.with(key, FeatureList::Int64List(Int64List { value }))
    }

    fn with(mut self, key: &str, list: FeatureList) -> Self {
        let feature = Feature { kind: Some(list) };
        self.features
            .get_or_insert_with(Features::default)
            .feature
            .insert(key.to_string(), feature);
        self
    }

    /// The byte strings of feature `key`; an error says whether it is missing or of another
    /// type.
    pub fn bytes(&self, key: &str) -> std::result::Result<&[Vec<u8>], String> {
        match self.list(key)? {
            FeatureList::BytesList(l) => Ok(&l.value),
            other => Err(wrong_type(key, "bytes", other)),
        }
    }

    /// The floats of feature `key`.
    pub fn floats(&self, key: &str) -> std::result::Result<&[f32], String> {
        match self.list(key)? {
            FeatureList::FloatList(l) => Ok(&l.value),
            other => Err(wrong_type(key, "float", other)),
        }
    }

    /// The integers of feature `key`.
    pub fn int64s(&self, key: &str) -> std::result::Result<&[i64], String> {
        match self.list(key)? {
            FeatureList::Int64List(l) => Ok(&l.value),
            other => Err(wrong_type(key, "int64", other)),
        }
    }

    fn list(&self, key: &str) -> std::result::Result<&FeatureList, String> {
        let features = self.features.as_ref().map(|f| &f.feature);
        match features.and_then(|f| f.get(key)) {
            Some(Feature { kind: Some(list) }) => Ok(list),
            Some(Feature { kind: None }) => Err(format!("feature `{key}` has no value list")),
            None => {
                let mut names: Vec<&str> = features
                    .into_iter()
                    .flat_map(|f| f.keys().map(String::as_str))
                    .collect();
                names.sort_unstable();
                Err(format!(
                    "no feature `{key}` (the record has: {})",
                    names.join(", ")
                ))
            }
        }
    }
}

fn wrong_type(key: &str, wanted: &str, found: &FeatureList) -> String {
    let found = match found {
        FeatureList::BytesList(_) => "bytes",
        FeatureList::FloatList(_) => "float",
        FeatureList::Int64List(_) => "int64",
    };
    format!("feature `{key}` is a {found} list, expected {wanted}")
}

/// Where one record's data lies in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    /// Byte offset of the data (after the 12-byte header).
    pub offset: u64,
    /// Length of the data.
    pub len: u64,
}

impl RecordSpan {
    /// Byte offset of the record (its header) in the file.
    pub fn start(self) -> u64 {
        self.offset - HEADER
    }
}

const HEADER: u64 = 12;
const FOOTER: u64 = 4;

/// TensorFlow's masked CRC32C.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The records of a TFRecord file, from their headers only (each length's checksum is checked,
/// the data is skipped): how a dataset indexes millions of records without reading them.
///
/// ```
/// use bit_data::{read_record, record_spans, write_record};
///
/// let path = std::env::temp_dir().join(format!("bit-doc-{}.tfrecord", std::process::id()));
/// let mut file = std::fs::File::create(&path)?;
/// write_record(&mut file, b"first")?;
/// write_record(&mut file, b"second")?;
/// drop(file);
/// let spans = record_spans(&path)?;
/// assert_eq!(spans.len(), 2);
/// assert_eq!(read_record(&path, spans[1])?, b"second");
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn record_spans(path: &Path) -> Result<Vec<RecordSpan>> {
    let io = DataError::io;
    let file = File::open(path).map_err(io(path))?;
    let size = file.metadata().map_err(io(path))?.len();
    let mut reader = BufReader::new(file);
    let mut spans = Vec::new();
    let mut at = 0u64;
    while at < size {
        let bad = |reason: String| DataError::Format {
            path: path.to_path_buf(),
            reason: format!("record {} (byte {at}): {reason}", spans.len()),
        };
        if size - at < HEADER {
            return Err(bad(format!(
                "the file ends {} bytes into the record's 12-byte header (truncated)",
                size - at
            )));
        }
        let mut header = [0u8; HEADER as usize];
        reader.read_exact(&mut header).map_err(io(path))?;
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
        if masked_crc(&header[..8]) != crc {
            return Err(bad(
                "the length's checksum does not match (not a TFRecord file, or damaged)".into(),
            ));
        }
        let remaining = size - at - HEADER;
        if len.saturating_add(FOOTER) > remaining {
            return Err(bad(format!(
                "{len} bytes of data announced but only {remaining} bytes left (truncated)"
            )));
        }
        spans.push(RecordSpan {
            offset: at + HEADER,
            len,
        });
        at += HEADER + len + FOOTER;
        // Relative: keeps the buffer when the next header is already in it.
        reader
            .seek_relative((len + FOOTER) as i64)
            .map_err(io(path))?;
    }
    Ok(spans)
}

/// The data of the record at `span` of `path`, its checksum checked.
pub fn read_record(path: &Path, span: RecordSpan) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(DataError::io(path))?;
    read_record_from(&mut file, path, span)
}

/// [`read_record`] on an open file.
pub(crate) fn read_record_from(file: &mut File, path: &Path, span: RecordSpan) -> Result<Vec<u8>> {
    let io = DataError::io;
    file.seek(SeekFrom::Start(span.offset)).map_err(io(path))?;
    let mut data = vec![0u8; span.len as usize + FOOTER as usize];
    file.read_exact(&mut data).map_err(io(path))?;
    let crc = u32::from_le_bytes(data[span.len as usize..].try_into().expect("4 bytes"));
    data.truncate(span.len as usize);
    if masked_crc(&data) != crc {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "the record at byte {} fails its checksum (damaged data)",
                span.start()
            ),
        });
    }
    Ok(data)
}

/// Appends one record to a TFRecord stream.
pub fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// Decodes a record as a `tf.train.Example`, naming the file and record on failure.
pub(crate) fn decode_example(data: &[u8], path: &Path, span: RecordSpan) -> Result<Example> {
    Example::decode(data).map_err(|e| DataError::Format {
        path: path.to_path_buf(),
        reason: format!(
            "the record at byte {} is not a tf.train.Example: {e}",
            span.start()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_tensorflows() {
        // TensorFlow's crc32c_test.cc: Mask(Value("foo")) round-trips, and the CRC32C of 32
        // zero bytes is 0x8a9136aa.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        let crc = crc32c::crc32c(b"foo");
        let masked = masked_crc(b"foo");
        let unmasked = masked.wrapping_sub(0xa282_ead8).rotate_left(15);
        assert_eq!(unmasked, crc);
        assert_ne!(masked, crc);
    }

    #[test]
    fn an_empty_record_is_valid() {
        let mut bytes = Vec::new();
        write_record(&mut bytes, b"").unwrap();
        assert_eq!(bytes.len(), 16);
    }
}
