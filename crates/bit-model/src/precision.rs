//! The float type the network computes in.
//!
//! Mixed precision as PyTorch's autocast does it for BiT: the weights, their gradients and
//! the optimizer's state stay `f32`; activations are half precision; each kernel is
//! standardized in `f32` and cast to the activations' type for the convolution, GroupNorm
//! accumulates its statistics in `f32`, and the pooled features are cast back to `f32` before
//! the head (so logits, losses and features are `f32`). A model set to a precision
//! (`ResNetV2::with_precision`) casts its input images ([`Precision::cast`]), and every layer
//! follows the type of what it receives.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// What the network computes in (see the [module docs](self)).
///
/// ```
/// use bit_model::Precision;
/// use burn::tensor::{DType, Device, Tensor};
///
/// let p: Precision = "bf16".parse().unwrap();
/// assert_eq!(p.dtype(), DType::BF16);
/// // The CPU kernels compute in f32: half precision needs a GPU device.
/// assert!(p.check(&Device::flex()).is_err());
/// assert!(Precision::F32.check(&Device::flex()).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision throughout.
    #[default]
    F32,
    /// bfloat16 activations (f32's range, 8 bits of mantissa): no loss scaling needed.
    Bf16,
    /// IEEE half activations (10 bits of mantissa, range to 65504): training needs loss
    /// scaling so that small gradients do not flush to zero.
    F16,
    /// Inference on the CPU with the units' convolutions in 8-bit integers: each standardized
    /// kernel quantized symmetrically per filter, the activations entering a convolution per
    /// position (pointwise) or image (`u8`, zero kept exact), products summed in 32-bit
    /// integers (AVX-512 VNNI's `vpdpbusd` where the CPU has it, see
    /// [`Precision::has_int8_kernels`]). The root
    /// convolution, GroupNorm, pooling and the head stay f32, as do the weights the model
    /// holds. Not for training.
    Int8,
}

impl Precision {
    /// The activations' dtype.
    pub fn dtype(self) -> DType {
        match self {
            // int8 is inside the convolutions; between layers, activations are f32.
            Self::F32 | Self::Int8 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// Whether training in this precision needs its loss scaled (f16's small range).
    pub fn needs_loss_scaling(self) -> bool {
        self == Self::F16
    }

    /// `images` in this precision's activation type (a no-op for f32 and int8).
    pub fn cast<const D: usize>(self, images: Tensor<D>) -> Tensor<D> {
        match self {
            Self::F32 | Self::Int8 => images,
            half => images.cast(half.dtype()),
        }
    }

    /// Refuses a precision the device cannot compute in: half precision on the CPU backend
    /// (its kernels are f32), types the GPU's driver lacks (bf16 on most Vulkan drivers), and
    /// int8 anywhere but the CPU.
    pub fn check(self, device: &Device) -> Result<()> {
        if self == Self::F32 {
            return Ok(());
        }
        let reason = if self == Self::Int8 {
            if *device == Device::flex() && !device.is_autodiff() {
                return Ok(());
            }
            "int8 runs inference on the CPU device (`cpu`), without autodiff"
        } else if *device == Device::flex() || *device == Device::flex().autodiff() {
            "the CPU backend computes in f32; half precision needs a GPU device (wgpu, vulkan, cuda)"
        } else if !device.supports_dtype(self.dtype()) {
            "the device's driver has no kernels for this type"
        } else {
            return Ok(());
        };
        Err(Error::UnsupportedPrecision {
            precision: self.to_string(),
            device: format!("{device:?}"),
            reason: reason.to_string(),
        })
    }

    /// [`check`](Self::check) for training, which also refuses int8 (an inference precision:
    /// fine-tune in f32, then run or export the result in int8).
    ///
    /// ```
    /// use bit_model::Precision;
    /// use burn::tensor::Device;
    ///
    /// assert!(Precision::Int8.check(&Device::flex()).is_ok());
    /// assert!(Precision::Int8.check_training(&Device::flex()).is_err());
    /// ```
    pub fn check_training(self, device: &Device) -> Result<()> {
        if self == Self::Int8 {
            return Err(Error::UnsupportedPrecision {
                precision: self.to_string(),
                device: format!("{device:?}"),
                reason: "int8 is for inference; train in f32 (or bf16/f16 on a GPU), then run \
                         the model with --precision int8 or export it with --quantize int8"
                    .to_string(),
            });
        }
        self.check(device)
    }

    /// Whether this CPU has the instructions that make [`Precision::Int8`] fast (AVX-512
    /// VNNI). Without them int8 still computes the same numbers, in portable code that is
    /// slower than f32.
    ///
    /// ```
    /// use bit_model::Precision;
    ///
    /// println!("int8 kernels: {}", Precision::has_int8_kernels());
    /// ```
    pub fn has_int8_kernels() -> bool {
        crate::ops::has_vnni()
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Int8 => "int8",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "int8" | "i8" => Ok(Self::Int8),
            _ => Err(format!(
                "unknown precision `{s}`: expected f32, bf16, f16 or int8"
            )),
        }
    }
}
