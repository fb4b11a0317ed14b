//! The two layouts BiT is published in on the Hugging Face hub, read and written:
//!
//! - **timm** (`timm/resnetv2_50x1_bit.goog_in21k`, ...): `stem.conv.weight`,
//!   `stages.{i}.blocks.{j}.{norm1,conv1,norm2,conv2,norm3,conv3}.*`,
//!   `stages.{i}.blocks.0.downsample.conv.weight`, `norm.*`, and the head `head.fc.*` as a 1x1
//!   convolution `[classes, features, 1, 1]`; a `config.json` whose `pretrained_cfg` gives the
//!   input size and mean/std, and `label_names`.
//! - **transformers** (`google/bit-50`, `BitForImageClassification`):
//!   `bit.embedder.convolution.weight`, `bit.encoder.stages.{i}.layers.{j}.*`, `bit.norm.*`,
//!   the head `classifier.1.*` as `[classes, features]`; a `config.json` (`depths`,
//!   `layer_type`, `global_padding`, `id2label`, ...) and a `preprocessor_config.json`.
//!
//! Kernels are OIHW in both, as in the model. Weights come as `model.safetensors` or as a
//! PyTorch state dict (`pytorch_model.bin`, `.pth`, `.pt`, read by Burn's `pytorch-reader`,
//! also when wrapped in a training checkpoint's `state_dict`/`model` dict or DataParallel's
//! `module.`), in f32, f16, bf16 or f64. The architecture is read from the tensor shapes; the
//! configuration files only add what shapes cannot say, and refuse variants this model does
//! not compute (transformers' dynamic `SAME` padding or non-pre-activation layers, timm's
//! other stems).
//!
//! Both libraries standardize kernels with eps [`HUB_STD_CONV_EPS`] = 1e-8 where BiT's own code
//! uses 1e-10: a model loaded from a hub layout computes with 1e-8, so that it gives what
//! timm or transformers give for the same file (a model fine-tuned there was trained with
//! it); a model from the release's `.npz` keeps 1e-10. On BiT's weights the two differ by
//! about 1e-6 in the logits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::nn::Linear;
use burn::tensor::{Device, TensorData};
use serde_json::{Value, json};

use crate::backend::host_values;
use crate::error::{Error, Result};
use crate::group_norm::{GROUPS, GroupNormRelu};
use crate::resnet::{Architecture, ResNetV2, ResNetV2Config};
use crate::slots::{MAX_WIDTH_FACTOR, Place, Slot, body_slots, set_param};
use crate::std_conv::StdConv2d;
use crate::storage::WeightDType;

/// The weight-standardization epsilon of timm's and transformers' BiT modules, used for
/// models loaded from their layouts (see the [module docs](self)).
pub const HUB_STD_CONV_EPS: f64 = 1e-8;

/// The weights file a hub directory holds, in the order they are looked for.
pub const HUB_WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// One of the two layouts of BiT checkpoints on the Hugging Face hub.
///
/// ```
/// use bit_model::HubLayout;
///
/// assert_eq!("hf".parse::<HubLayout>()?, HubLayout::Transformers);
/// assert_eq!(HubLayout::Timm.to_string(), "timm");
/// # Ok::<(), bit_model::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HubLayout {
    /// timm's `ResNetV2` (`resnetv2_50x1_bit`, ...).
    Timm,
    /// Hugging Face transformers' `BitForImageClassification` / `BitModel`.
    Transformers,
}

impl fmt::Display for HubLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timm => "timm",
            Self::Transformers => "transformers",
        })
    }
}

impl FromStr for HubLayout {
    type Err = Error;

    /// `timm`, or `hf` / `transformers`.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "timm" => Ok(Self::Timm),
            "hf" | "transformers" => Ok(Self::Transformers),
            _ => Err(Error::InvalidConfig(format!(
                "unknown hub layout `{s}`: expected timm or hf"
            ))),
        }
    }
}

impl HubLayout {
    const ALL: [Self; 2] = [Self::Timm, Self::Transformers];

    /// The stem convolution's key below the body prefix: how a layout is recognised.
    fn root_key(self) -> &'static str {
        match self {
            Self::Timm => "stem.conv.weight",
            Self::Transformers => "embedder.convolution.weight",
        }
    }

    /// The prefix of stage `block`'s units below the body prefix (the unit index follows).
    fn units(self, block: usize) -> String {
        match self {
            Self::Timm => format!("stages.{block}.blocks."),
            Self::Transformers => format!("encoder.stages.{block}.layers."),
        }
    }

    /// A body place's key below the body prefix: a convolution's weight, or a norm's prefix
    /// (of `.weight` and `.bias`).
    fn key(self, place: Place) -> String {
        match place {
            Place::Root => self.root_key().to_string(),
            Place::Norm { block, unit, layer } => {
                format!("{}{unit}.norm{layer}", self.units(block))
            }
            Place::Conv { block, unit, layer } => {
                format!("{}{unit}.conv{layer}.weight", self.units(block))
            }
            Place::Projection { block, unit } => {
                format!("{}{unit}.downsample.conv.weight", self.units(block))
            }
            Place::PreHeadNorm => "norm".to_string(),
        }
    }

    /// The classifier's prefix (of `.weight` and `.bias`) for a body prefix: timm's head is a
    /// part of the network, transformers' sits beside `bit.`.
    fn head(self, prefix: &str) -> String {
        match self {
            Self::Timm => format!("{prefix}head.fc"),
            Self::Transformers => {
                format!(
                    "{}classifier.1",
                    prefix.strip_suffix("bit.").unwrap_or(prefix)
                )
            }
        }
    }

    /// The body prefix of the files this crate writes.
    fn written_prefix(self) -> &'static str {
        match self {
            Self::Timm => "",
            Self::Transformers => "bit.",
        }
    }
}

/// What a hub checkpoint's configuration files say beside the weights (and what
/// [`ResNetV2::save_hub`] writes into them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HubInfo {
    /// Side of the square input: timm's `pretrained_cfg.input_size`, transformers' crop size.
    pub resolution: Option<usize>,
    /// One name per head output: timm's `label_names`, transformers' `id2label` (unless the
    /// placeholders `LABEL_0`, ...).
    pub class_names: Option<Vec<String>>,
    /// Per-channel mean and standard deviation images are normalized with, on the `[0, 1]`
    /// scale (BiT: 0.5 and 0.5, i.e. `[-1, 1]`).
    pub mean_std: Option<([f64; 3], [f64; 3])>,
}

/// A timm- or transformers-layout checkpoint, opened: layout and architecture read from the
/// tensor names and shapes and the configuration files beside them (no weight is read until
/// [`load`](Self::load)).
///
/// ```no_run
/// use bit_model::{HubCheckpoint, HubLayout};
/// use burn::tensor::Device;
///
/// // A directory downloaded from the hub, or its model.safetensors / pytorch_model.bin.
/// let ckpt = HubCheckpoint::open("resnetv2_50x1_bit.goog_in21k")?;
/// assert_eq!(ckpt.layout(), HubLayout::Timm);
/// println!("{:?} at {:?}", ckpt.config_with_head(10).block_units, ckpt.info().resolution);
/// let model = ckpt.load_with_zero_head(10, &Device::flex())?;
/// # Ok::<(), bit_model::Error>(())
/// ```
pub struct HubCheckpoint {
    state: StateDict,
    layout: HubLayout,
    /// What precedes the layout's body keys (`""`, `"bit."`, `"module."`, `"state_dict."`).
    prefix: String,
    block_units: [usize; 4],
    width_factor: usize,
    in_channels: usize,
    head_size: Option<usize>,
    info: HubInfo,
}

impl HubCheckpoint {
    /// Opens `path`: a directory holding one of [`HUB_WEIGHT_FILES`], or a weights file
    /// (`.safetensors`, or a PyTorch `.bin`/`.pth`/`.pt`); a `config.json` (and transformers'
    /// `preprocessor_config.json`) beside it is read when present.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = if path.is_dir() {
            HUB_WEIGHT_FILES
                .iter()
                .map(|name| path.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| Error::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no {} in this directory", HUB_WEIGHT_FILES.join(" or ")),
                    ),
                })?
        } else {
            path.to_path_buf()
        };
        let state = StateDict::open(&file)?;
        let (layout, prefix) = state.layout()?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut ckpt = Self {
            state,
            layout,
            prefix,
            block_units: [0; 4],
            width_factor: 0,
            in_channels: 0,
            head_size: None,
            info: HubInfo::default(),
        };
        ckpt.infer_architecture()?;
        ckpt.info = ckpt.read_configs(&dir)?;
        Ok(ckpt)
    }

    /// The weights file.
    pub fn path(&self) -> &Path {
        &self.state.path
    }

    /// Which hub layout the file is in.
    pub fn layout(&self) -> HubLayout {
        self.layout
    }

    /// Classes of the stored head, if the file has one.
    pub fn head_size(&self) -> Option<usize> {
        self.head_size
    }

    /// What the configuration files say (resolution, class names, normalization).
    pub fn info(&self) -> &HubInfo {
        &self.info
    }

    /// The model configuration with a head of `head_size` classes (and the hub layouts'
    /// standardization epsilon, [`HUB_STD_CONV_EPS`]).
    pub fn config_with_head(&self, head_size: usize) -> ResNetV2Config {
        ResNetV2Config::new(self.block_units, self.width_factor, head_size)
            .with_in_channels(self.in_channels)
            .with_std_conv_eps(HUB_STD_CONV_EPS)
    }

    /// Loads every weight, the head included, onto `device`.
    pub fn load(mut self, device: &Device) -> Result<ResNetV2> {
        let head = self.layout.head(&self.prefix);
        let head_size = self
            .head_size
            .ok_or_else(|| self.missing(&format!("{head}.weight")))?;
        let mut model = self.config_with_head(head_size).try_init(device)?;
        let mut used = self.load_body(&mut model)?;
        self.load_head(&mut model.head.fc, &head, &mut used)?;
        self.refuse_unused(&used)?;
        crate::native::refuse_non_finite(self.path(), model)
    }

    /// Loads the body and the pre-head norm under a new zero head of `head_size` classes; the
    /// stored head is not read (and need not exist).
    pub fn load_with_zero_head(mut self, head_size: usize, device: &Device) -> Result<ResNetV2> {
        let mut model = self
            .config_with_head(head_size)
            .with_zero_head(true)
            .try_init(device)?;
        let mut used = self.load_body(&mut model)?;
        let head = self.layout.head(&self.prefix);
        used.extend([format!("{head}.weight"), format!("{head}.bias")]);
        self.refuse_unused(&used)?;
        crate::native::refuse_non_finite(self.path(), model)
    }

    fn key(&self, place: Place) -> String {
        format!("{}{}", self.prefix, self.layout.key(place))
    }

    fn infer_architecture(&mut self) -> Result<()> {
        let root = self.key(Place::Root);
        let shape = self.state.shape(&root)?;
        (self.width_factor, self.in_channels) = match shape[..] {
            [w, c, 7, 7] if c > 0 && w > 0 && w % 64 == 0 && w / 64 <= MAX_WIDTH_FACTOR => {
                (w / 64, c)
            }
            _ => {
                return Err(self.not_bit(format!(
                    "stem kernel `{root}` has shape {shape:?}, expected [64 * width, in, 7, 7] \
                     with a width of 1 to {MAX_WIDTH_FACTOR}"
                )));
            }
        };
        for block in 0..5 {
            let units_prefix = format!("{}{}", self.prefix, self.layout.units(block));
            let units: BTreeSet<usize> = self
                .state
                .names()
                .filter_map(|k| {
                    k.strip_prefix(&units_prefix)?
                        .split_once('.')?
                        .0
                        .parse()
                        .ok()
                })
                .collect();
            if block == 4 {
                if !units.is_empty() {
                    return Err(self.not_bit("it has a fifth stage; BiT has four".into()));
                }
                break;
            }
            let n = units.len();
            if n == 0 || units.iter().copied().ne(0..n) {
                return Err(self.not_bit(format!(
                    "stage {block} has units {units:?}, expected 0..N without gaps"
                )));
            }
            self.block_units[block] = n;
        }
        let head = self.layout.head(&self.prefix);
        self.head_size = match self.state.shape(&format!("{head}.weight")) {
            Ok(shape) => match shape[..] {
                [n, _] | [n, _, 1, 1] if n > 0 => Some(n),
                _ => {
                    return Err(self.not_bit(format!(
                        "classifier `{head}.weight` has shape {shape:?}, expected [classes, \
                         features] or [classes, features, 1, 1]"
                    )));
                }
            },
            Err(Error::MissingKey { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(())
    }

    fn load_body(&mut self, model: &mut ResNetV2) -> Result<BTreeSet<String>> {
        let mut used = BTreeSet::new();
        for (place, slot) in body_slots(model) {
            let key = self.key(place);
            match slot {
                Slot::Conv(conv) => self.load_conv(conv, key, &mut used)?,
                Slot::Norm(gn) => self.load_group_norm(gn, &key, &mut used)?,
            }
        }
        Ok(used)
    }

    /// OIHW in the file, OIHW in the model.
    fn load_conv(
        &mut self,
        conv: &mut StdConv2d,
        key: String,
        used: &mut BTreeSet<String>,
    ) -> Result<()> {
        let shape = conv.weight.lazy_shape().dims::<4>();
        let data = self.state.read(&key, &shape)?;
        set_param(&mut conv.weight, TensorData::new(data, shape));
        used.insert(key);
        Ok(())
    }

    fn load_group_norm(
        &mut self,
        gn: &mut GroupNormRelu,
        prefix: &str,
        used: &mut BTreeSet<String>,
    ) -> Result<()> {
        let c = gn.channels();
        for (param, name) in [(&mut gn.gamma, "weight"), (&mut gn.beta, "bias")] {
            let key = format!("{prefix}.{name}");
            let data = self.state.read(&key, &[c])?;
            set_param(param, TensorData::new(data, [c]));
            used.insert(key);
        }
        Ok(())
    }

    /// `[classes, features]` (or timm's `[classes, features, 1, 1]`) -> the `[features,
    /// classes]` Linear weight.
    fn load_head(
        &mut self,
        fc: &mut Linear,
        head: &str,
        used: &mut BTreeSet<String>,
    ) -> Result<()> {
        let [features, classes] = fc.weight.lazy_shape().dims();
        let key = format!("{head}.weight");
        let stored = match self.state.shape(&key)?.len() {
            4 => vec![classes, features, 1, 1],
            _ => vec![classes, features],
        };
        let rows = self.state.read(&key, &stored)?;
        let mut weight = vec![0.0; rows.len()];
        for (class, row) in rows.chunks_exact(features).enumerate() {
            for (feature, &v) in row.iter().enumerate() {
                weight[feature * classes + class] = v;
            }
        }
        set_param(&mut fc.weight, TensorData::new(weight, [features, classes]));
        used.insert(key);
        let key = format!("{head}.bias");
        let bias = self.state.read(&key, &[classes])?;
        if let Some(param) = &mut fc.bias {
            set_param(param, TensorData::new(bias, [classes]));
        }
        used.insert(key);
        Ok(())
    }

    /// A tensor below the model's prefixes that the model did not take belongs to another
    /// network (BatchNorm statistics of timm's non-BiT ResNetV2, a different stem, ...):
    /// loading the rest would compute something else, so it is an error. Tensors outside
    /// (an optimizer's state in a training checkpoint) are skipped.
    fn refuse_unused(&self, used: &BTreeSet<String>) -> Result<()> {
        let head = self.layout.head(&self.prefix);
        let ours = |k: &str| k.starts_with(&self.prefix) || k.starts_with(&head);
        match self.state.names().find(|k| ours(k) && !used.contains(*k)) {
            Some(key) => Err(Error::UnexpectedKey {
                path: self.path().to_path_buf(),
                key: key.to_string(),
                layout: self.layout.to_string(),
            }),
            None => Ok(()),
        }
    }

    fn missing(&self, key: &str) -> Error {
        Error::MissingKey {
            path: self.path().to_path_buf(),
            key: key.to_string(),
        }
    }

    fn not_bit(&self, reason: String) -> Error {
        Error::Architecture {
            path: self.path().to_path_buf(),
            reason,
        }
    }

    /// The configuration files beside the weights, checked for variants this model does not
    /// compute, and what they say.
    fn read_configs(&self, dir: &Path) -> Result<HubInfo> {
        let Some(config) = read_json(&dir.join("config.json"))? else {
            return Ok(HubInfo::default());
        };
        match self.layout {
            HubLayout::Timm => self.timm_info(&config),
            HubLayout::Transformers => {
                let processor = read_json(&dir.join("preprocessor_config.json"))?;
                self.transformers_info(&config, processor.as_ref())
            }
        }
    }

    fn timm_info(&self, config: &Value) -> Result<HubInfo> {
        let args = &config["model_args"];
        for (arg, bit) in [("stem_type", json!("fixed")), ("output_stride", json!(32))] {
            if !args[arg].is_null() && args[arg] != bit {
                return Err(self.not_bit(format!(
                    "config.json builds it with {arg} = {}; BiT's is {bit}",
                    args[arg]
                )));
            }
        }
        let cfg = &config["pretrained_cfg"];
        let class_names = match &config["label_names"] {
            Value::Array(names) => Some(names.iter().map(json_text).collect()),
            Value::Object(by_index) => indexed_names(by_index),
            _ => None,
        };
        Ok(HubInfo {
            resolution: cfg["input_size"]
                .get(1)
                .and_then(Value::as_u64)
                .map(|r| r as usize),
            class_names,
            mean_std: mean_std(&cfg["mean"], &cfg["std"]),
        })
    }

    fn transformers_info(&self, config: &Value, processor: Option<&Value>) -> Result<HubInfo> {
        let bit = [
            ("layer_type", json!("preactivation")),
            ("embedding_dynamic_padding", json!(false)),
            ("hidden_act", json!("relu")),
            ("num_groups", json!(GROUPS)),
            ("output_stride", json!(32)),
        ];
        for (field, value) in bit {
            if !config[field].is_null() && config[field] != value {
                return Err(self.not_bit(format!(
                    "config.json has {field} = {}; BiT's is {value}",
                    config[field]
                )));
            }
        }
        if config["global_padding"]
            .as_str()
            .is_some_and(|p| p.eq_ignore_ascii_case("same"))
        {
            return Err(self.not_bit(
                "config.json has global_padding = \"SAME\" (TensorFlow's input-dependent \
                 padding, as in ViT-hybrid backbones); BiT pads symmetrically"
                    .into(),
            ));
        }
        let class_names = config["id2label"]
            .as_object()
            .and_then(indexed_names)
            .filter(|names| {
                !names
                    .iter()
                    .enumerate()
                    .all(|(i, n)| *n == format!("LABEL_{i}"))
            });
        let mut info = HubInfo {
            class_names,
            ..HubInfo::default()
        };
        if let Some(p) = processor {
            let crops = p["do_center_crop"].as_bool().unwrap_or(true);
            let side = if crops { &p["crop_size"] } else { &p["size"] };
            info.resolution = [&side["height"], &side["shortest_edge"], side]
                .into_iter()
                .find_map(Value::as_u64)
                .map(|r| r as usize);
            info.mean_std = mean_std(&p["image_mean"], &p["image_std"]);
        }
        Ok(info)
    }
}

/// `{"0": name, "1": name, ...}` in index order, if it has exactly the indices 0..N.
fn indexed_names(by_index: &serde_json::Map<String, Value>) -> Option<Vec<String>> {
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    for (index, name) in by_index {
        names.insert(index.parse().ok()?, json_text(name));
    }
    names
        .keys()
        .copied()
        .eq(0..names.len())
        .then(|| names.into_values().collect())
}

fn json_text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), String::from)
}

fn mean_std(mean: &Value, std: &Value) -> Option<([f64; 3], [f64; 3])> {
    let three = |v: &Value| -> Option<[f64; 3]> {
        let v: Vec<f64> = v.as_array()?.iter().filter_map(Value::as_f64).collect();
        v.try_into().ok()
    };
    Some((three(mean)?, three(std)?))
}

/// A JSON file, `None` if there is none.
fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("not valid JSON: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ResNetV2 {
    /// Writes the model in a hub `layout` into the directory `dir` (created if needed):
    /// `model.safetensors` (weights as `dtype`, `format: pt` as both libraries write it) and
    /// `config.json`
    /// (transformers also a `preprocessor_config.json`), with `info`'s resolution (224 if
    /// none) and class names, and BiT's normalization. timm loads the directory with
    /// `create_model("local-dir:DIR", pretrained=True)`, transformers with
    /// `BitForImageClassification.from_pretrained(DIR)` (checked by `scripts/hub_layouts.py
    /// check`). Each file is written atomically.
    ///
    /// ```
    /// use bit_model::{HubCheckpoint, HubInfo, HubLayout, ResNetV2Config, WeightDType};
    /// use burn::tensor::Device;
    ///
    /// let device = Device::flex();
    /// let model = ResNetV2Config::new([1, 1, 1, 1], 1, 3).init(&device);
    /// let dir = std::env::temp_dir().join("bit_model_doc_save_hub");
    /// model.save_hub(&dir, HubLayout::Transformers, &HubInfo::default(), WeightDType::F32)?;
    /// let again = HubCheckpoint::open(&dir)?;
    /// assert_eq!((again.layout(), again.head_size()), (HubLayout::Transformers, Some(3)));
    /// # std::fs::remove_dir_all(&dir).ok();
    /// # Ok::<(), bit_model::Error>(())
    /// ```
    pub fn save_hub(
        &self,
        dir: impl AsRef<Path>,
        layout: HubLayout,
        info: &HubInfo,
        dtype: WeightDType,
    ) -> Result<()> {
        let dir = dir.as_ref();
        if dtype == WeightDType::Int8 {
            return Err(Error::InvalidConfig(format!(
                "{layout} cannot read int8 weights with per-channel scales: write them as f32, \
                 f16 or bf16"
            )));
        }
        let save_error =
            |path: &Path, source: Box<dyn std::error::Error + Send + Sync>| Error::Save {
                path: path.to_path_buf(),
                source,
            };
        std::fs::create_dir_all(dir).map_err(|e| save_error(dir, e.into()))?;
        let tensors = self.hub_tensors(layout);
        let views = tensors
            .iter()
            .map(|(key, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|view| (key.clone(), view))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| save_error(dir, e.into()))?;
        let metadata = Some(std::collections::HashMap::from([(
            "format".to_string(),
            "pt".to_string(),
        )]));
        let bytes =
            safetensors::serialize(views, metadata).map_err(|e| save_error(dir, e.into()))?;
        let bytes = crate::storage::narrow(&bytes, dtype).map_err(|e| save_error(dir, e.into()))?;
        let weights = dir.join(HUB_WEIGHT_FILES[0]);
        bit_hub::write_atomically(&weights, |file| std::io::Write::write_all(file, &bytes))
            .map_err(|e| save_error(&weights, e.into()))?;
        for (name, json) in self.hub_configs(layout, info) {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&json).expect("JSON values serialise");
            bit_hub::write_atomically(&path, |file| {
                std::io::Write::write_all(file, text.as_bytes())
            })
            .map_err(|e| save_error(&path, e.into()))?;
        }
        Ok(())
    }

    /// Every parameter under its `layout` key, as little-endian f32 bytes.
    fn hub_tensors(&self, layout: HubLayout) -> Vec<(String, Vec<usize>, Vec<u8>)> {
        let bytes = |values: Vec<f32>| values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let prefix = layout.written_prefix();
        let mut model = self.clone();
        let mut tensors = Vec::new();
        for (place, slot) in body_slots(&mut model) {
            let key = format!("{prefix}{}", layout.key(place));
            match slot {
                Slot::Conv(conv) => {
                    let w = conv.weight.val();
                    tensors.push((key, w.dims().to_vec(), bytes(host_values(w))));
                }
                Slot::Norm(gn) => {
                    for (param, name) in [(&gn.gamma, "weight"), (&gn.beta, "bias")] {
                        let v = host_values(param.val());
                        tensors.push((format!("{key}.{name}"), vec![v.len()], bytes(v)));
                    }
                }
            }
        }
        let head = layout.head(prefix);
        let [features, classes] = self.head.fc.weight.dims();
        let shape = match layout {
            HubLayout::Timm => vec![classes, features, 1, 1],
            HubLayout::Transformers => vec![classes, features],
        };
        let weight = host_values(self.head.fc.weight.val().transpose());
        tensors.push((format!("{head}.weight"), shape, bytes(weight)));
        let bias = self.head.bias_values();
        tensors.push((format!("{head}.bias"), vec![classes], bytes(bias)));
        tensors
    }

    /// The configuration files of `layout` for this model.
    fn hub_configs(&self, layout: HubLayout, info: &HubInfo) -> Vec<(&'static str, Value)> {
        let config = self.config();
        let side = info.resolution.unwrap_or(224);
        let wf = config.width_factor;
        let classes = config.head_size;
        let half = [0.5; 3];
        match layout {
            HubLayout::Timm => {
                // timm builds its BiT models by name; a shape it has no name for is written
                // with the arguments its ResNetV2 class takes (see docs/hub.md).
                let architecture = Architecture::from_shape(config.block_units, wf).map_or_else(
                    || "resnetv2_bit".to_string(),
                    |arch| {
                        let depth = match arch.block_units() {
                            [3, 4, 6, 3] => 50,
                            [3, 4, 23, 3] => 101,
                            _ => 152,
                        };
                        format!("resnetv2_{depth}x{wf}_bit")
                    },
                );
                let mut args = json!({
                    "in_chans": config.in_channels,
                    "num_classes": classes,
                    "global_pool": "avg",
                });
                if architecture == "resnetv2_bit" {
                    args["layers"] = json!(config.block_units);
                    args["width_factor"] = json!(wf);
                    args["stem_type"] = json!("fixed");
                }
                let mut json = json!({
                    "architecture": architecture,
                    "num_classes": classes,
                    "num_features": config.feature_dim(),
                    "global_pool": "avg",
                    "model_args": args,
                    "pretrained_cfg": {
                        "tag": "bit_rs",
                        "custom_load": false,
                        "input_size": [config.in_channels, side, side],
                        "fixed_input_size": false,
                        "interpolation": "bilinear",
                        "crop_pct": 1.0,
                        "crop_mode": "center",
                        "mean": half,
                        "std": half,
                        "num_classes": classes,
                        "first_conv": "stem.conv",
                        "classifier": "head.fc",
                        "license": "apache-2.0",
                    },
                });
                if let Some(names) = &info.class_names {
                    json["label_names"] = json!(names);
                }
                vec![("config.json", json)]
            }
            HubLayout::Transformers => {
                let names: Vec<String> = info
                    .class_names
                    .clone()
                    .unwrap_or_else(|| (0..classes).map(|i| format!("LABEL_{i}")).collect());
                let id2label: serde_json::Map<String, Value> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (i.to_string(), json!(n)))
                    .collect();
                let label2id: serde_json::Map<String, Value> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), json!(i)))
                    .collect();
                let config_json = json!({
                    "architectures": ["BitForImageClassification"],
                    "model_type": "bit",
                    "layer_type": "preactivation",
                    "depths": config.block_units,
                    "hidden_sizes": [256, 512, 1024, 2048],
                    "width_factor": wf,
                    "embedding_size": 64 * wf,
                    "num_channels": config.in_channels,
                    "num_groups": GROUPS,
                    "hidden_act": "relu",
                    "global_padding": null,
                    "embedding_dynamic_padding": false,
                    "output_stride": 32,
                    "drop_path_rate": 0.0,
                    "id2label": id2label,
                    "label2id": label2id,
                    "dtype": "float32",
                });
                // A plain square resize, as `bit predict` feeds images.
                let processor = json!({
                    "image_processor_type": "BitImageProcessor",
                    "do_resize": true,
                    "size": {"height": side, "width": side},
                    "resample": 2,
                    "do_center_crop": false,
                    "crop_size": {"height": side, "width": side},
                    "do_rescale": true,
                    "rescale_factor": 1.0 / 255.0,
                    "do_normalize": true,
                    "image_mean": half,
                    "image_std": half,
                    "do_convert_rgb": true,
                });
                vec![
                    ("config.json", config_json),
                    ("preprocessor_config.json", processor),
                ]
            }
        }
    }
}

/// The tensors of a safetensors file or a PyTorch state dict, by name, read one at a time.
struct StateDict {
    path: PathBuf,
    tensors: BTreeMap<String, Stored>,
    /// The whole safetensors file (its tensors are ranges of it); empty for PyTorch.
    bytes: Vec<u8>,
}

/// One tensor of a [`StateDict`].
struct Stored {
    shape: Vec<usize>,
    float: std::result::Result<Float, String>,
    data: StoredData,
}

enum StoredData {
    /// Byte range in [`StateDict::bytes`], little-endian.
    Range(usize, usize),
    /// Read on demand by pytorch-reader, native-endian.
    Pytorch(pytorch_reader::Tensor),
}

/// The floating-point element types a hub file may store weights in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Float {
    F32,
    F16,
    BF16,
    F64,
}

impl Float {
    fn size(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 2,
            Self::F32 => 4,
            Self::F64 => 8,
        }
    }

    /// `bytes` as f32 values (f64 rounded, half types widened exactly).
    pub(crate) fn decode(self, bytes: &[u8], little_endian: bool) -> Vec<f32> {
        let chunks = bytes.chunks_exact(self.size());
        macro_rules! read {
            ($t:ty, $n:expr) => {
                chunks.map(|c| {
                    let raw: [u8; $n] = c.try_into().expect("chunks of the element size");
                    if little_endian {
                        <$t>::from_le_bytes(raw)
                    } else {
                        <$t>::from_ne_bytes(raw)
                    }
                })
            };
        }
        match self {
            Self::F32 => read!(f32, 4).collect(),
            Self::F64 => read!(f64, 8).map(|v| v as f32).collect(),
            Self::F16 => read!(u16, 2)
                .map(|b| half::f16::from_bits(b).to_f32())
                .collect(),
            Self::BF16 => read!(u16, 2)
                .map(|b| half::bf16::from_bits(b).to_f32())
                .collect(),
        }
    }
}

impl StateDict {
    /// Reads a safetensors file's header (`.safetensors`) or a PyTorch file's pickle (any
    /// other name).
    fn open(path: &Path) -> Result<Self> {
        let corrupt = |reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let is_safetensors = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let mut tensors = BTreeMap::new();
        let mut bytes = Vec::new();
        if is_safetensors {
            bytes = std::fs::read(path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            // `deserialize` checks that the ranges tile the data exactly.
            safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
            let (header, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
                .map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
            let start = 8 + header;
            for (name, info) in metadata.tensors() {
                let float = match info.dtype {
                    safetensors::Dtype::F32 => Ok(Float::F32),
                    safetensors::Dtype::F16 => Ok(Float::F16),
                    safetensors::Dtype::BF16 => Ok(Float::BF16),
                    safetensors::Dtype::F64 => Ok(Float::F64),
                    other => Err(format!("{other:?}")),
                };
                let (from, to) = info.data_offsets;
                tensors.insert(
                    name,
                    Stored {
                        shape: info.shape.clone(),
                        float,
                        data: StoredData::Range(start + from, start + to),
                    },
                );
            }
        } else {
            let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| match e {
                pytorch_reader::PytorchError::Io(source) => Error::Io {
                    path: path.to_path_buf(),
                    source,
                },
                other => corrupt(format!("not a PyTorch state dict: {other}")),
            })?;
            for (name, tensor) in reader.into_tensors() {
                use pytorch_reader::DType;
                let float = match tensor.dtype() {
                    DType::F32 => Ok(Float::F32),
                    DType::F16 => Ok(Float::F16),
                    DType::BF16 => Ok(Float::BF16),
                    DType::F64 => Ok(Float::F64),
                    other => Err(format!("{other:?}")),
                };
                tensors.insert(
                    name,
                    Stored {
                        shape: tensor.shape().to_vec(),
                        float,
                        data: StoredData::Pytorch(tensor),
                    },
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            bytes,
        })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The layout and body prefix: the shortest prefix before a layout's stem key (a training
    /// checkpoint's `state_dict.` before its `state_dict_ema.`).
    fn layout(&self) -> Result<(HubLayout, String)> {
        let mut found: Vec<(HubLayout, &str)> = HubLayout::ALL
            .iter()
            .flat_map(|&layout| {
                self.names()
                    .filter_map(move |k| k.strip_suffix(layout.root_key()))
                    .filter(|p| p.is_empty() || p.ends_with('.'))
                    .map(move |p| (layout, p))
            })
            .collect();
        found.sort_by_key(|(_, prefix)| (prefix.len(), *prefix));
        match found.first() {
            Some(&(layout, prefix)) => Ok((layout, prefix.to_string())),
            None => Err(Error::UnknownLayout {
                path: self.path.clone(),
                key: self.names().next().unwrap_or("(no tensors)").to_string(),
            }),
        }
    }

    fn shape(&self, key: &str) -> Result<Vec<usize>> {
        self.tensors
            .get(key)
            .map(|t| t.shape.clone())
            .ok_or_else(|| Error::MissingKey {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    /// Tensor `key` as f32 values, after checking its shape and element type.
    fn read(&self, key: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let stored = self.tensors.get(key).ok_or_else(|| Error::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })?;
        if stored.shape != expected {
            return Err(Error::ShapeMismatch {
                path: self.path.clone(),
                key: key.to_string(),
                expected: expected.to_vec(),
                found: stored.shape.clone(),
            });
        }
        let float = stored.float.clone().map_err(|found| Error::NotFloat {
            path: self.path.clone(),
            key: key.to_string(),
            found,
        })?;
        Ok(match &stored.data {
            StoredData::Range(from, to) => float.decode(&self.bytes[*from..*to], true),
            StoredData::Pytorch(tensor) => {
                let bytes = tensor.read().map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
                float.decode(&bytes, false)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DTYPES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/state_dict_dtypes.bin"
    );

    /// The PyTorch file scripts/hub_layouts.py saved: a `state_dict` wrapper, one 3x4 matrix
    /// (values i / 8, exact in every type) in f32, f16 and bf16, its transpose (a strided view)
    /// and an integer.
    #[test]
    fn pytorch_state_dicts_are_read_in_every_float_type() {
        let state = StateDict::open(Path::new(DTYPES)).unwrap();
        let matrix: Vec<f32> = (0..12).map(|i| i as f32 / 8.0).collect();
        for name in ["f32", "f16", "bf16"] {
            let key = format!("state_dict.{name}");
            assert_eq!(state.read(&key, &[3, 4]).unwrap(), matrix, "{key}");
        }
        let transposed: Vec<f32> = (0..12)
            .map(|i| ((i % 3) * 4 + i / 3) as f32 / 8.0)
            .collect();
        assert_eq!(
            state.read("state_dict.strided", &[4, 3]).unwrap(),
            transposed
        );
        assert!(matches!(
            state.read("state_dict.step", &[]),
            Err(Error::NotFloat { .. })
        ));
        assert!(matches!(
            state.read("state_dict.f32", &[4, 3]),
            Err(Error::ShapeMismatch { .. })
        ));
        let err = state.layout().unwrap_err();
        assert!(
            matches!(&err, Error::UnknownLayout { key, .. } if key == "state_dict.bf16"),
            "{err}"
        );
    }

    #[test]
    fn layout_keys_follow_each_library() {
        let conv = Place::Conv {
            block: 2,
            unit: 1,
            layer: 3,
        };
        assert_eq!(HubLayout::Timm.key(conv), "stages.2.blocks.1.conv3.weight");
        assert_eq!(
            HubLayout::Transformers.key(conv),
            "encoder.stages.2.layers.1.conv3.weight"
        );
        let proj = Place::Projection { block: 0, unit: 0 };
        assert_eq!(
            HubLayout::Timm.key(proj),
            "stages.0.blocks.0.downsample.conv.weight"
        );
        assert_eq!(HubLayout::Transformers.head("bit."), "classifier.1");
        assert_eq!(
            HubLayout::Transformers.head("module.bit."),
            "module.classifier.1"
        );
        assert_eq!(HubLayout::Timm.head("state_dict."), "state_dict.head.fc");
    }
}
