//! Where a network runs and in what it computes: the `--device` and `--precision` flags, defined
//! here once for every `bit` command that runs a model (training, inference, benchmarks).

use bit_model::Precision;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::{Result, device_from_name, devices_from_spec};

/// The device(s) a model runs on and the precision it computes in.
///
/// ```
/// use bit_device::Compute;
/// use bit_model::Precision;
///
/// let compute = Compute::default();
/// assert_eq!((compute.device.as_str(), compute.precision()), ("cpu", Precision::F32));
/// let replicas = Compute { device: "cpu,cpu".into(), ..compute }.devices()?;
/// assert_eq!(replicas.len(), 2);
/// # Ok::<(), bit_device::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct Compute {
    /// Device: cpu; wgpu (the best GPU adapter: discrete, integrated, virtual, then software;
    /// for training and benchmarks every GPU of the machine, one data-parallel replica each),
    /// wgpu:i (the i-th adapter in that order), vulkan[:i] or cuda[:i] in builds with them.
    /// Training and benchmarks also take a list (wgpu:0,wgpu:1) and, in builds with `remote`,
    /// ws://HOST:PORT or iroh://ID@HOST:PORT for every device a `bit serve` process serves
    /// (several machines: list several; token: $BIT_REMOTE_TOKEN; see docs/distributed.md).
    #[cfg_attr(feature = "cli", arg(long, default_value = "cpu"))]
    pub device: String,
    /// What the network computes in: f32 (the default), mixed precision on a GPU device, bf16
    /// or f16 (f32 weights, gradients and optimizer state; f16 training with dynamic loss
    /// scaling), or int8 for inference on the CPU (the units' convolutions in 8-bit integers;
    /// the default for a model exported with --quantize int8).
    #[cfg_attr(feature = "cli", arg(long))]
    #[serde(default)]
    pub precision: Option<Precision>,
}

impl Default for Compute {
    /// The CPU, in `f32`.
    fn default() -> Self {
        Self {
            device: "cpu".into(),
            precision: None,
        }
    }
}

impl Compute {
    /// The precision asked for, f32 when none was.
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or_default()
    }

    /// The one device named (inference): see [`device_from_name`].
    pub fn device(&self) -> Result<Device> {
        device_from_name(&self.device)
    }

    /// Every device named, for data-parallel training: see [`devices_from_spec`].
    pub fn devices(&self) -> Result<Vec<Device>> {
        devices_from_spec(&self.device)
    }
}
