//! Weights stored in half precision: safetensors files whose float32 tensors are narrowed to
//! f16 or bf16 when written, and widened back to f32 when read, so that every loader here
//! takes them and the model computes as it always does (in f32 on the CPU; a GPU can still run
//! it in half precision with [`Precision`](crate::Precision)).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use safetensors::{Dtype, SafeTensors};

use crate::error::Error;

/// The type a checkpoint stores its weights in.
///
/// ```
/// use bit_model::WeightDType;
///
/// assert_eq!("bf16".parse::<WeightDType>()?, WeightDType::Bf16);
/// assert_eq!(WeightDType::F16.bytes(), 2);
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
}

impl WeightDType {
    /// Bytes per weight.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

impl fmt::Display for WeightDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
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
            _ => Err(Error::InvalidConfig(format!(
                "unknown weight type `{s}`: expected f32, f16 or bf16"
            ))),
        }
    }
}

/// A safetensors file's bytes with every f32 tensor stored as `to` (metadata kept).
pub(crate) fn narrow(bytes: &[u8], to: WeightDType) -> Result<Vec<u8>, String> {
    let dtype = match to {
        WeightDType::F32 => return Ok(bytes.to_vec()),
        WeightDType::F16 => Dtype::F16,
        WeightDType::Bf16 => Dtype::BF16,
    };
    rewrite(bytes, |view_dtype, data| match view_dtype {
        Dtype::F32 => {
            let values = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
            let out = match to {
                WeightDType::F16 => values
                    .flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => values
                    .flat_map(|v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            Some((dtype, out))
        }
        _ => None,
    })
}

/// A safetensors file's bytes with every f16/bf16 tensor widened to f32 (exactly), or `None`
/// if it has none.
pub(crate) fn widen(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let half = metadata
        .tensors()
        .values()
        .any(|info| matches!(info.dtype, Dtype::F16 | Dtype::BF16));
    if !half {
        return Ok(None);
    }
    rewrite(bytes, |dtype, data| {
        let widened: Vec<u8> = match dtype {
            Dtype::F16 => data
                .chunks_exact(2)
                .flat_map(|c| {
                    half::f16::from_le_bytes([c[0], c[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .flat_map(|c| {
                    half::bf16::from_le_bytes([c[0], c[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect(),
            _ => return None,
        };
        Some((Dtype::F32, widened))
    })
    .map(Some)
}

/// A tensor as it will be written: name, type, shape, data (borrowed when unchanged).
type Converted<'a> = (String, Dtype, Vec<usize>, std::borrow::Cow<'a, [u8]>);

/// The file with each tensor `convert` returns a new type and data for replaced; the others
/// and the metadata as they were.
fn rewrite(
    bytes: &[u8],
    convert: impl Fn(Dtype, &[u8]) -> Option<(Dtype, Vec<u8>)>,
) -> Result<Vec<u8>, String> {
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let converted: Vec<Converted<'_>> = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let (dtype, data) = match convert(view.dtype(), view.data()) {
                Some((dtype, data)) => (dtype, std::borrow::Cow::Owned(data)),
                None => (view.dtype(), std::borrow::Cow::Borrowed(view.data())),
            };
            (name, dtype, view.shape().to_vec(), data)
        })
        .collect();
    let views = converted
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let kept: Option<HashMap<String, String>> = metadata.metadata().clone();
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
}
