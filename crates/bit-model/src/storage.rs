//! Weights stored in half precision or int8: safetensors files whose float32 tensors are
//! narrowed to f16, bf16 or int8 (with per-channel scales) when written, and widened back to
//! f32 when read, so that every loader here takes them and the model computes as it always
//! does (in f32 on the CPU; a GPU can still run it in half precision with
//! [`Precision`](crate::Precision)).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use safetensors::{Dtype, SafeTensors};

use crate::error::Error;
use crate::hub_layout::Float;
use crate::resnet::ResNetV2;
use crate::slots::{Slot, body_slots, set_param};

/// The type a checkpoint stores its weights in.
///
/// ```
/// use bit_model::WeightDType;
///
/// assert_eq!("bf16".parse::<WeightDType>()?, WeightDType::Bf16);
/// assert_eq!(WeightDType::F16.bytes(), 2);
/// assert_eq!("int8".parse::<WeightDType>()?.bytes(), 1);
/// # Ok::<(), bit_model::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WeightDType {
    /// 32-bit floats, as trained: exact.
    #[default]
    F32,
    /// IEEE half: 11 significant bits, values up to 65504 (BiT's weights are far inside).
    F16,
    /// bfloat16: float32's range, 8 significant bits.
    Bf16,
    /// Symmetric int8 with one f32 scale per output channel (`max |w| / 127`) for kernels and
    /// the classifier; the 1-D norms and biases stay f32. Kernels are quantized *standardized*
    /// (mean 0, variance 1 per filter: their largest value is a few standard deviations, so
    /// 127 steps resolve them finely), which weight standardization leaves unchanged when the
    /// model reads them back. This project's safetensors only.
    Int8,
}

impl WeightDType {
    /// Bytes per weight (of the kernels, for int8).
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Int8 => 1,
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        })
    }
}

impl FromStr for WeightDType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "int8" | "i8" => Ok(Self::Int8),
            _ => Err(Error::InvalidConfig(format!(
                "unknown weight type `{s}`: expected f32, f16, bf16 or int8"
            ))),
        }
    }
}

impl ResNetV2 {
    /// The same network with every convolution kernel replaced by its standardized self
    /// (mean 0, variance 1 per filter): weight standardization maps those to themselves (up to
    /// its epsilon, 1e-10 of the variance), so the function does not change, but the values
    /// are what int8 quantizes best.
    pub(crate) fn with_standardized_kernels(&self) -> Self {
        let mut model = self.clone();
        for (_, slot) in body_slots(&mut model) {
            if let Slot::Conv(conv) = slot {
                let standardized = conv.standardized_weight().into_data();
                set_param(&mut conv.weight, standardized);
            }
        }
        model
    }
}

/// The metadata entry of a safetensors file that `bit export --dtype` narrowed: the type its
/// weights are stored in (`f16`, `bf16`, `int8`). Loaders read every type back as f32; with
/// `int8`, inference runs in [`Precision::Int8`](crate::Precision::Int8) unless told
/// otherwise.
pub const WEIGHT_DTYPE_METADATA_KEY: &str = "bit.weight_dtype";

/// The suffix of the per-output-channel scales of an int8 tensor: `{name}.int8_scale`.
const INT8_SCALE: &str = ".int8_scale";

/// A tensor as it will be written: name, type, shape, data (borrowed when unchanged).
type Converted<'a> = (String, Dtype, Vec<usize>, Cow<'a, [u8]>);

fn le_bytes(values: Vec<f32>) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32s(data: &[u8]) -> impl Iterator<Item = f32> + '_ {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
}

/// A safetensors file's bytes with its f32 tensors stored as `to` (metadata kept): every one
/// for the half types; for int8, those of two or more axes (kernels, the classifier), each
/// beside its scales.
pub(crate) fn narrow(bytes: &[u8], to: WeightDType) -> Result<Vec<u8>, String> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut out: Vec<Converted<'_>> = Vec::new();
    for (name, view) in tensors.tensors() {
        let (dtype, shape, data) = (view.dtype(), view.shape().to_vec(), view.data());
        if dtype != Dtype::F32 || to == WeightDType::F32 {
            out.push((name, dtype, shape, Cow::Borrowed(data)));
            continue;
        }
        match to {
            WeightDType::F16 => {
                let half = f32s(data).flat_map(|v| half::f16::from_f32(v).to_le_bytes());
                out.push((name, Dtype::F16, shape, Cow::Owned(half.collect())));
            }
            WeightDType::Bf16 => {
                let half = f32s(data).flat_map(|v| half::bf16::from_f32(v).to_le_bytes());
                out.push((name, Dtype::BF16, shape, Cow::Owned(half.collect())));
            }
            WeightDType::Int8 if shape.len() >= 2 && !data.is_empty() => {
                let channels = shape[0];
                let values: Vec<f32> = f32s(data).collect();
                let mut q = Vec::with_capacity(values.len());
                let mut scales = Vec::with_capacity(channels * 4);
                for channel in values.chunks(values.len() / channels) {
                    let max = channel.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
                    q.extend(
                        channel
                            .iter()
                            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8 as u8),
                    );
                    scales.extend(scale.to_le_bytes());
                }
                out.push((
                    format!("{name}{INT8_SCALE}"),
                    Dtype::F32,
                    vec![channels],
                    Cow::Owned(scales),
                ));
                out.push((name, Dtype::I8, shape, Cow::Owned(q)));
            }
            _ => out.push((name, dtype, shape, Cow::Borrowed(data))),
        }
    }
    serialize(
        bytes,
        &out,
        Some((WEIGHT_DTYPE_METADATA_KEY, to.to_string())),
    )
}

/// A safetensors file's bytes with its f16/bf16 tensors widened to f32 (exactly) and its int8
/// tensors dequantized (their scales dropped), or `None` if it has neither.
pub(crate) fn widen(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let narrowed = tensors
        .iter()
        .any(|(_, v)| matches!(v.dtype(), Dtype::F16 | Dtype::BF16 | Dtype::I8));
    if !narrowed {
        return Ok(None);
    }
    let mut out: Vec<Converted<'_>> = Vec::new();
    for (name, view) in tensors.tensors() {
        let (shape, data) = (view.shape().to_vec(), view.data());
        let widened: Vec<u8> = match view.dtype() {
            // The same widening the hub layouts' reader does.
            Dtype::F16 => le_bytes(Float::F16.decode(data, true)),
            Dtype::BF16 => le_bytes(Float::BF16.decode(data, true)),
            Dtype::I8 => {
                let scales = tensors
                    .tensor(&format!("{name}{INT8_SCALE}"))
                    .map_err(|_| format!("int8 tensor `{name}` has no `{name}{INT8_SCALE}`"))?;
                let channels = shape.first().copied().unwrap_or(0);
                if scales.dtype() != Dtype::F32 || scales.shape() != [channels] || channels == 0 {
                    return Err(format!(
                        "`{name}{INT8_SCALE}` is not {channels} f32 scales, one per channel of `{name}`"
                    ));
                }
                let per_channel = data.len() / channels;
                data.chunks(per_channel.max(1))
                    .zip(f32s(scales.data()))
                    .flat_map(|(q, scale)| {
                        q.iter()
                            .flat_map(move |&b| (f32::from(b as i8) * scale).to_le_bytes())
                    })
                    .collect()
            }
            Dtype::F32 if name.ends_with(INT8_SCALE) => continue,
            dtype => {
                out.push((name, dtype, shape, Cow::Borrowed(data)));
                continue;
            }
        };
        out.push((name, Dtype::F32, shape, Cow::Owned(widened)));
    }
    serialize(bytes, &out, None).map(Some)
}

/// `tensors` as a safetensors file with the metadata of `original` (and `extra`).
fn serialize(
    original: &[u8],
    tensors: &[Converted<'_>],
    extra: Option<(&str, String)>,
) -> Result<Vec<u8>, String> {
    let (_, metadata) = SafeTensors::read_metadata(original).map_err(|e| e.to_string())?;
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut kept: Option<HashMap<String, String>> = metadata.metadata().clone();
    if let Some((key, value)) = extra {
        kept.get_or_insert_with(HashMap::new)
            .insert(key.to_string(), value);
    }
    safetensors::serialize(views, kept).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(values: &[f32]) -> Vec<u8> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view =
            safetensors::tensor::TensorView::new(Dtype::F32, vec![values.len()], &data).unwrap();
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        safetensors::serialize([("w".to_string(), view)], Some(meta)).unwrap()
    }

    fn read(bytes: &[u8]) -> (Dtype, Vec<f32>) {
        let st = SafeTensors::deserialize(bytes).unwrap();
        let view = st.tensor("w").unwrap();
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (view.dtype(), values)
    }

    #[test]
    fn half_files_are_half_the_size_and_widen_to_the_rounded_values() {
        let values = [0.1f32, -2.5, 1e-3, 3.0e4];
        let original = file(&values);
        assert_eq!(widen(&original).unwrap(), None);
        for (to, round) in [
            (
                WeightDType::F16,
                (|v: f32| half::f16::from_f32(v).to_f32()) as fn(f32) -> f32,
            ),
            (WeightDType::Bf16, |v: f32| half::bf16::from_f32(v).to_f32()),
        ] {
            let narrow = narrow(&original, to).unwrap();
            let st = SafeTensors::deserialize(&narrow).unwrap();
            assert_eq!(st.tensor("w").unwrap().data().len(), 8, "{to}");
            let (_, meta) = SafeTensors::read_metadata(&narrow).unwrap();
            assert_eq!(meta.metadata().as_ref().unwrap()["k"], "v");
            let (dtype, back) = read(&widen(&narrow).unwrap().unwrap());
            assert_eq!(dtype, Dtype::F32);
            let expected: Vec<f32> = values.iter().map(|&v| round(v)).collect();
            assert_eq!(back, expected, "{to}");
            assert_ne!(back, values, "{to}: the rounding is real");
        }
    }

    #[test]
    fn int8_keeps_one_scale_per_output_channel_and_leaves_vectors_alone() {
        // A 2x3 kernel (two output channels of very different ranges) and a 1-D bias.
        let kernel = [0.5f32, -1.0, 0.25, 100.0, -50.0, 3.0];
        let bias = [0.1f32, -0.2];
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let (k, b) = (bytes(&kernel), bytes(&bias));
        let views = [
            (
                "k".to_string(),
                safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 3], &k).unwrap(),
            ),
            (
                "b".to_string(),
                safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &b).unwrap(),
            ),
        ];
        let original = safetensors::serialize(views, None).unwrap();
        let int8 = narrow(&original, WeightDType::Int8).unwrap();
        let st = SafeTensors::deserialize(&int8).unwrap();
        assert_eq!(st.tensor("k").unwrap().dtype(), Dtype::I8);
        assert_eq!(st.tensor("b").unwrap().dtype(), Dtype::F32);
        let back = widen(&int8).unwrap().unwrap();
        let st = SafeTensors::deserialize(&back).unwrap();
        assert!(
            st.tensor("k.int8_scale").is_err(),
            "scales are dropped when read"
        );
        let values: Vec<f32> = f32s(st.tensor("k").unwrap().data()).collect();
        // Each channel is within half a step of its own scale (1/127 of its largest value).
        for (c, (got, want)) in values.chunks(3).zip(kernel.chunks(3)).enumerate() {
            let step = want.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() <= step / 2.0 + 1e-6,
                    "channel {c}: {g} for {w}"
                );
            }
        }
        let bias_back: Vec<f32> = f32s(st.tensor("b").unwrap().data()).collect();
        assert_eq!(bias_back, bias);
        // An int8 tensor without its scales is a damaged file, not garbage weights.
        let k8 = vec![1u8; 6];
        let lone = safetensors::serialize(
            [(
                "k".to_string(),
                safetensors::tensor::TensorView::new(Dtype::I8, vec![2, 3], &k8).unwrap(),
            )],
            None,
        )
        .unwrap();
        assert!(widen(&lone).unwrap_err().contains("no `k.int8_scale`"));
    }
}
