//! Reading the official BiT `.npz` checkpoints.
//!
//! A checkpoint is a zip of `<key>.npy` arrays in TensorFlow layouts: conv kernels are HWIO,
//! norm parameters 1-D, the head kernel `[1, 1, features, classes]`. Keys follow
//! `resnet/block{1-4}/unit{NN}/{a,b,c}/{group_norm,standardized_conv2d}/...`; some released
//! files spell the conv `standardized_conv2d_<n>`, which is read as `standardized_conv2d`
//! (as big_vision's converter does).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use npyz::npz::NpzArchive;
use npyz::{DType, NpyFile, Order, WriterBuilder};

use crate::backend::host_values;
use crate::error::{Error, Result};
use crate::group_norm::GroupNormRelu;
use crate::resnet::{Architecture, ResNetV2, ResNetV2Config};
use crate::slots::{MAX_WIDTH_FACTOR, Place, Slot, body_slots, set_param};
use crate::std_conv::StdConv2d;

const ROOT_KERNEL: &str = "resnet/root_block/standardized_conv2d/kernel";
const HEAD_KERNEL: &str = "resnet/head/conv2d/kernel";
const HEAD_BIAS: &str = "resnet/head/conv2d/bias";

/// An opened BiT `.npz` checkpoint whose architecture has been read from its keys and shapes
/// (headers only: no weights are read until [`load`](Self::load)).
///
/// ```no_run
/// use bit_model::NpzCheckpoint;
/// use burn::tensor::Device;
///
/// let ckpt = NpzCheckpoint::open("BiT-M-R50x1.npz")?;
/// println!("{:?} x{}, head {:?}", ckpt.block_units(), ckpt.width_factor(), ckpt.head_size());
/// // Fine-tuning starts from the body with a fresh zero head, like `zero_head=True`.
/// let model = ckpt.load_with_zero_head(10, &Device::flex())?;
/// # Ok::<(), bit_model::Error>(())
/// ```
pub struct NpzCheckpoint {
    path: PathBuf,
    archive: NpzArchive<BufReader<File>>,
    /// Normalised key -> array name as stored.
    keys: BTreeMap<String, String>,
    block_units: [usize; 4],
    width_factor: usize,
    in_channels: usize,
    head_size: Option<usize>,
}

impl NpzCheckpoint {
    /// Opens the archive and infers the architecture from it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let archive = NpzArchive::new(BufReader::new(file)).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut keys = BTreeMap::new();
        for name in archive.array_names() {
            let key = normalize_key(name);
            if let Some(first) = keys.insert(key.clone(), name.to_string()) {
                return Err(Error::DuplicateKey {
                    path,
                    key,
                    first,
                    second: name.to_string(),
                });
            }
        }
        let mut ckpt = Self {
            path,
            archive,
            keys,
            block_units: [0; 4],
            width_factor: 0,
            in_channels: 0,
            head_size: None,
        };
        ckpt.infer_architecture()?;
        Ok(ckpt)
    }

    fn infer_architecture(&mut self) -> Result<()> {
        let root = self.shape(ROOT_KERNEL)?;
        let (in_channels, width) = match root[..] {
            [7, 7, c, w] if c > 0 && w > 0 && w % 64 == 0 && w / 64 <= MAX_WIDTH_FACTOR => {
                (c, w / 64)
            }
            _ => {
                return Err(self.not_bit(format!(
                    "root kernel `{ROOT_KERNEL}` has shape {root:?}, expected [7, 7, in, 64 * \
                     width] with at least one input channel and a width of 1 to \
                     {MAX_WIDTH_FACTOR}"
                )));
            }
        };
        self.in_channels = in_channels;
        self.width_factor = width;
        for b in 0..4 {
            let prefix = format!("resnet/block{}/unit", b + 1);
            let units: BTreeSet<usize> = self
                .keys
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix)?.split_once('/')?.0.parse().ok())
                .collect();
            let n = units.len();
            if n == 0 || units.iter().copied().ne(1..=n) {
                return Err(self.not_bit(format!(
                    "block{} has units {units:?}, expected unit01..unitNN without gaps",
                    b + 1
                )));
            }
            self.block_units[b] = n;
        }
        self.head_size = match (
            self.keys.contains_key(HEAD_BIAS),
            self.keys.contains_key(HEAD_KERNEL),
        ) {
            (true, _) => Some(self.shape(HEAD_BIAS)?.first().copied().unwrap_or(0)),
            (false, true) => self.shape(HEAD_KERNEL)?.last().copied(),
            (false, false) => None,
        };
        if self.head_size == Some(0) {
            return Err(self.not_bit("the head has no classes".into()));
        }
        Ok(())
    }

    /// The file this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Units per block, counted from the keys.
    pub fn block_units(&self) -> [usize; 4] {
        self.block_units
    }

    /// Width factor, from the root kernel.
    pub fn width_factor(&self) -> usize {
        self.width_factor
    }

    /// Input channels, from the root kernel (3 for every released model).
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Classes of the stored head, if the file has one.
    pub fn head_size(&self) -> Option<usize> {
        self.head_size
    }

    /// The released architecture this is, if it is one.
    pub fn architecture(&self) -> Option<Architecture> {
        Architecture::from_shape(self.block_units, self.width_factor)
    }

    /// Names of the arrays in the file, as stored.
    pub fn array_names(&self) -> impl Iterator<Item = &str> {
        self.keys.values().map(String::as_str)
    }

    /// The model configuration with a head of `head_size` classes.
    pub fn config_with_head(&self, head_size: usize) -> ResNetV2Config {
        ResNetV2Config::new(self.block_units, self.width_factor, head_size)
            .with_in_channels(self.in_channels)
    }

    /// Loads every weight, the head included, onto `device`.
    pub fn load(mut self, device: &Device) -> Result<ResNetV2> {
        let head_size = self.head_size.ok_or_else(|| self.missing(HEAD_BIAS))?;
        let mut model = self.config_with_head(head_size).try_init(device)?;
        let mut used = BTreeSet::new();
        self.load_body(&mut model, &mut used)?;
        self.load_linear_head(&mut model.head.fc, &mut used)?;
        self.warn_unused(&used);
        self.finite(model)
    }

    /// Loads the body and the pre-head norm, and starts a new zero head of `head_size`
    /// classes; the stored head is not read (and need not exist).
    pub fn load_with_zero_head(mut self, head_size: usize, device: &Device) -> Result<ResNetV2> {
        let mut model = self
            .config_with_head(head_size)
            .with_zero_head(true)
            .try_init(device)?;
        let mut used = BTreeSet::from([HEAD_KERNEL.to_string(), HEAD_BIAS.to_string()]);
        self.load_body(&mut model, &mut used)?;
        self.warn_unused(&used);
        self.finite(model)
    }

    /// The model, unless a weight is NaN or infinite.
    fn finite(&self, model: ResNetV2) -> Result<ResNetV2> {
        crate::native::refuse_non_finite(&self.path, model)
    }

    fn load_body(&mut self, model: &mut ResNetV2, used: &mut BTreeSet<String>) -> Result<()> {
        for (place, slot) in body_slots(model) {
            let key = npz_key(place);
            match slot {
                Slot::Conv(conv) => self.load_conv(conv, &key, used)?,
                Slot::Norm(gn) => self.load_group_norm(gn, &key, used)?,
            }
        }
        Ok(())
    }

    /// HWIO kernel -> OIHW parameter.
    fn load_conv(
        &mut self,
        conv: &mut StdConv2d,
        key: &str,
        used: &mut BTreeSet<String>,
    ) -> Result<()> {
        let [o, i, kh, kw] = conv.weight.lazy_shape().dims();
        let hwio = self.read(key, &[kh, kw, i, o], used)?;
        let device = conv.weight.lazy_device();
        let hwio = Tensor::<4>::from_data(TensorData::new(hwio, [kh, kw, i, o]), &device);
        // The inverse of saving's permutation, HWIO (the release's TF layout) to OIHW, stored
        // contiguously.
        set_param(&mut conv.weight, hwio.permute([3, 2, 0, 1]).into_data());
        Ok(())
    }

    fn load_group_norm(
        &mut self,
        gn: &mut GroupNormRelu,
        prefix: &str,
        used: &mut BTreeSet<String>,
    ) -> Result<()> {
        let c = gn.channels();
        for (param, name) in [(&mut gn.gamma, "gamma"), (&mut gn.beta, "beta")] {
            let data = self.read(&format!("{prefix}/{name}"), &[c], used)?;
            set_param(param, TensorData::new(data, [c]));
        }
        Ok(())
    }

    /// `[1, 1, features, classes]` kernel -> `[features, classes]` Linear weight, unchanged.
    fn load_linear_head(&mut self, fc: &mut Linear, used: &mut BTreeSet<String>) -> Result<()> {
        let [features, classes] = fc.weight.lazy_shape().dims();
        let kernel = self.read(HEAD_KERNEL, &[1, 1, features, classes], used)?;
        set_param(&mut fc.weight, TensorData::new(kernel, [features, classes]));
        let bias = self.read(HEAD_BIAS, &[classes], used)?;
        if let Some(param) = &mut fc.bias {
            set_param(param, TensorData::new(bias, [classes]));
        }
        Ok(())
    }

    /// Reads one float32 array of the given shape, in C order. The whole zip entry is read
    /// first, so its CRC is checked: a damaged download fails here instead of loading garbage.
    fn read(
        &mut self,
        key: &str,
        expected: &[usize],
        used: &mut BTreeSet<String>,
    ) -> Result<Vec<f32>> {
        let name = self.stored_name(key)?.to_string();
        // The array needs 4 bytes per value plus a small header: an entry that holds (or
        // decompresses to) more is refused before it is read into memory.
        let limit = (expected.iter().product::<usize>() as u64)
            .saturating_mul(4)
            .saturating_add(MAX_NPY_HEADER);
        let mut bytes = Vec::new();
        let read = self
            .archive
            .zip_archive()
            .by_name(&npyz::npz::file_name_from_array_name(&name))
            .map_err(|e| e.to_string())
            .and_then(|entry| {
                if entry.size() > limit {
                    return Err(format!(
                        "{} bytes where shape {expected:?} needs at most {limit}",
                        entry.size()
                    ));
                }
                let mut entry = entry.take(limit + 1);
                entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                if bytes.len() as u64 > limit {
                    return Err(format!("more than the {limit} bytes its size declares"));
                }
                Ok(())
            });
        read.map_err(|reason| self.corrupt_array(key, &reason))?;
        let npy = NpyFile::new(&bytes[..]).map_err(|e| self.corrupt_array(key, &e.to_string()))?;
        let found: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let dtype = type_string(&npy.dtype());
        if !matches!(dtype.as_str(), "<f4" | ">f4") {
            return Err(Error::DType {
                path: self.path.clone(),
                key: key.to_string(),
                found: dtype,
            });
        }
        if found != expected {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                key: key.to_string(),
                expected: expected.to_vec(),
                found,
            });
        }
        let fortran = npy.order() == Order::Fortran;
        let data = npy
            .into_vec::<f32>()
            .map_err(|e| self.corrupt_array(key, &e.to_string()))?;
        used.insert(key.to_string());
        Ok(if fortran {
            fortran_to_c(data, &found)
        } else {
            data
        })
    }

    /// The shape in an array's header (the data is not read).
    fn shape(&mut self, key: &str) -> Result<Vec<usize>> {
        let name = self.stored_name(key)?.to_string();
        let shape = match self.archive.by_name(&name) {
            Ok(Some(npy)) => Ok(npy.shape().iter().map(|&d| d as usize).collect()),
            Ok(None) => Err(None),
            Err(e) => Err(Some(e.to_string())),
        };
        shape.map_err(|e| match e {
            Some(reason) => self.corrupt_array(key, &reason),
            None => self.missing(key),
        })
    }

    fn stored_name(&self, key: &str) -> Result<&str> {
        self.keys
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    fn corrupt_array(&self, key: &str, e: &str) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            reason: format!("array `{key}`: {e}"),
        }
    }

    fn not_bit(&self, reason: String) -> Error {
        Error::Architecture {
            path: self.path.clone(),
            reason,
        }
    }

    fn warn_unused(&self, used: &BTreeSet<String>) {
        for (key, name) in &self.keys {
            if !used.contains(key) {
                tracing::warn!(file = %self.path.display(), array = %name, "ignoring array the model does not use");
            }
        }
    }
}

impl ResNetV2 {
    /// Loads an official BiT `.npz` checkpoint (any released architecture, or any custom
    /// `block_units` / width / head, all read from the file itself).
    ///
    /// ```no_run
    /// use bit_model::ResNetV2;
    /// use burn::tensor::Device;
    ///
    /// let model = ResNetV2::from_npz("BiT-M-R50x1.npz", &Device::flex())?;
    /// assert_eq!(model.config().head_size, 21843);
    /// # Ok::<(), bit_model::Error>(())
    /// ```
    pub fn from_npz(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        NpzCheckpoint::open(path)?.load(device)
    }

    /// Loads a checkpoint's body and pre-head norm under a new, zero-initialised head of
    /// `head_size` classes, as the reference fine-tuning does (`zero_head=True`).
    pub fn from_npz_with_zero_head(
        path: impl AsRef<Path>,
        head_size: usize,
        device: &Device,
    ) -> Result<Self> {
        NpzCheckpoint::open(path)?.load_with_zero_head(head_size, device)
    }
}

impl ResNetV2 {
    /// Writes the model as an official BiT `.npz` checkpoint (the layout
    /// [`from_npz`](Self::from_npz) and the reference code read: HWIO kernels, `resnet/...`
    /// keys, float32, uncompressed like `numpy.savez`). The archive is written to a temporary
    /// sibling and renamed into place.
    ///
    /// ```
    /// use bit_model::{ResNetV2, ResNetV2Config};
    /// use burn::tensor::Device;
    ///
    /// let device = Device::flex();
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device);
    /// let path = std::env::temp_dir().join("bit_model_doc_export.npz");
    /// model.save_npz(&path)?;
    /// assert_eq!(ResNetV2::from_npz(&path, &device)?.config(), model.config());
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), bit_model::Error>(())
    /// ```
    pub fn save_npz(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let save_error = |e: io::Error| Error::Save {
            path: path.to_path_buf(),
            source: Box::new(e),
        };
        bit_hub::write_atomically(path, |file| {
            let mut npz = npyz::npz::NpzWriter::new(file);
            for (key, shape, data) in self.bit_arrays() {
                let options = npyz::zip::write::FileOptions::default()
                    .compression_method(npyz::zip::CompressionMethod::Stored)
                    .large_file(data.len() * 4 >= u32::MAX as usize);
                let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
                let mut writer = npz
                    .array::<f32>(&key, options)?
                    .default_dtype()
                    .shape(&shape)
                    .begin_nd()?;
                writer.extend(data)?;
                writer.finish()?;
            }
            npz.zip_writer().finish()?;
            Ok(())
        })
        .map_err(save_error)
    }

    /// Every parameter under its BiT key, in the checkpoint's layout.
    fn bit_arrays(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let conv = |key: String, conv: &StdConv2d| {
            let w = conv.weight.val();
            let [o, i, kh, kw] = w.dims();
            // OIHW (Burn) to HWIO (the TF layout of the release).
            (
                key,
                vec![kh, kw, i, o],
                host_values(w.permute([2, 3, 1, 0])),
            )
        };
        let norm = |prefix: &str, gn: &GroupNormRelu| {
            [(&gn.gamma, "gamma"), (&gn.beta, "beta")].map(|(p, name)| {
                let v = host_values(p.val());
                (format!("{prefix}/{name}"), vec![v.len()], v)
            })
        };
        // The same table of keys as loading reads, walked over a (cheap, shared-storage) clone.
        let mut model = self.clone();
        let mut arrays = Vec::new();
        for (place, slot) in body_slots(&mut model) {
            let key = npz_key(place);
            match slot {
                Slot::Conv(c) => arrays.push(conv(key, c)),
                Slot::Norm(gn) => arrays.extend(norm(&key, gn)),
            }
        }
        let [features, classes] = self.head.fc.weight.dims();
        arrays.push((
            HEAD_KERNEL.to_string(),
            vec![1, 1, features, classes],
            host_values(self.head.fc.weight.val()),
        ));
        if let Some(bias) = &self.head.fc.bias {
            arrays.push((
                HEAD_BIAS.to_string(),
                vec![classes],
                host_values(bias.val()),
            ));
        }
        arrays
    }
}

/// A body place's key in the release: its conv kernel, or its norm's prefix (of `gamma` and
/// `beta`).
fn npz_key(place: Place) -> String {
    let unit = |block: usize, unit: usize| format!("resnet/block{}/unit{:02}", block + 1, unit + 1);
    let abc = |layer: usize| ["a", "b", "c"][layer - 1];
    match place {
        Place::Root => ROOT_KERNEL.to_string(),
        Place::Norm {
            block,
            unit: u,
            layer,
        } => {
            format!("{}/{}/group_norm", unit(block, u), abc(layer))
        }
        Place::Conv {
            block,
            unit: u,
            layer,
        } => {
            format!(
                "{}/{}/standardized_conv2d/kernel",
                unit(block, u),
                abc(layer)
            )
        }
        Place::Projection { block, unit: u } => {
            format!("{}/a/proj/standardized_conv2d/kernel", unit(block, u))
        }
        Place::PreHeadNorm => "resnet/group_norm".to_string(),
    }
}

/// Room for an `.npy` header (they are a few hundred bytes).
const MAX_NPY_HEADER: u64 = 64 * 1024;

/// `.../standardized_conv2d_<n>/...` -> `.../standardized_conv2d/...`.
fn normalize_key(name: &str) -> String {
    name.split('/')
        .map(|part| match part.strip_prefix("standardized_conv2d_") {
            Some(n) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => {
                "standardized_conv2d"
            }
            _ => part,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn type_string(dtype: &DType) -> String {
    match dtype {
        DType::Plain(ts) => ts.to_string(),
        other => format!("{other:?}"),
    }
}

/// Reorders column-major data of `shape` into row-major order: column-major data is row-major
/// data of the reversed shape, whose axes a permutation puts back. The release's arrays have
/// one axis (norms, biases) or four (kernels).
fn fortran_to_c(data: Vec<f32>, shape: &[usize]) -> Vec<f32> {
    fn reversed_axes<const D: usize>(data: Vec<f32>, shape: &[usize]) -> Vec<f32> {
        let stored: [usize; D] = std::array::from_fn(|d| shape[D - 1 - d]);
        let tensor = Tensor::<D>::from_data(TensorData::new(data, stored), &Device::flex());
        host_values(tensor.permute(std::array::from_fn::<usize, D, _>(|d| D - 1 - d)))
    }
    match shape.len() {
        2 => reversed_axes::<2>(data, shape),
        3 => reversed_axes::<3>(data, shape),
        4 => reversed_axes::<4>(data, shape),
        // One axis (or none): both orders are the same.
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_numbered_conv_names() {
        assert_eq!(
            normalize_key("resnet/block1/unit01/a/standardized_conv2d_3/kernel"),
            "resnet/block1/unit01/a/standardized_conv2d/kernel"
        );
        assert_eq!(
            normalize_key("resnet/head/conv2d/kernel"),
            "resnet/head/conv2d/kernel"
        );
        assert_eq!(
            normalize_key("x/standardized_conv2d_/k"),
            "x/standardized_conv2d_/k"
        );
    }

    #[test]
    fn fortran_order_is_transposed() {
        // A 2x3 array [[0, 1, 2], [3, 4, 5]] stored column-major.
        assert_eq!(
            fortran_to_c(vec![0., 3., 1., 4., 2., 5.], &[2, 3]),
            [0., 1., 2., 3., 4., 5.]
        );
        // A 2x1x3x2 kernel: element (a, b, c, d) stored at a + 2 (b + 1 (c + 3 d)).
        let shape = [2, 1, 3, 2];
        let fortran: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let c = fortran_to_c(fortran, &shape);
        for (i, v) in c.iter().enumerate() {
            let (a, rest) = (i / 6, i % 6);
            let (c3, d) = (rest / 2, rest % 2);
            assert_eq!(*v, (a + 2 * (3 * d + c3)) as f32, "element {i}");
        }
    }
}
