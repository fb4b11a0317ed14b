//! Reading tensors back to the host, and the GPU adapters the machine has.
//!
//! Burn 0.22 chooses the backend through the [`Device`] value, so the same model code runs on
//! every backend compiled into the binary: the CPU backend (`flex`) always, GPU backends with
//! this crate's cargo features `wgpu`, `vulkan` and `cuda`. Naming devices (`--device wgpu:1`,
//! remote devices of `bit serve`) is the `bit-device` crate's job.

use burn::tensor::{Device, Tensor};

/// The values of a float tensor on the host, as `f32`, in row-major order (one device sync).
///
/// ```
/// use bit_model::backend::host_values;
/// use burn::tensor::{Device, Tensor};
///
/// let t = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &Device::flex());
/// assert_eq!(host_values(t), [1.0, 2.0, 3.0, 4.0]);
/// ```
pub fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("converted to f32 above")
}

/// A GPU backend that picks among the machine's adapters at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBackend {
    /// wgpu on the graphics API it settles on (Vulkan, Metal, DX12): the `wgpu` feature.
    Wgpu,
    /// wgpu pinned to Vulkan: the `vulkan` feature.
    Vulkan,
}

impl GpuBackend {
    /// The backend a device name (`wgpu`, `vulkan`, lower case, without an index) means, among
    /// those compiled in.
    ///
    /// ```
    /// use bit_model::backend::GpuBackend;
    ///
    /// assert_eq!(GpuBackend::from_name("cpu"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            #[cfg(feature = "wgpu")]
            "wgpu" => Some(Self::Wgpu),
            #[cfg(feature = "vulkan")]
            "vulkan" => Some(Self::Vulkan),
            _ => None,
        }
    }

    /// The device of the best adapter this backend reaches (the first of [`gpu_adapters`]:
    /// what `--device wgpu` picks), if the machine has one.
    ///
    /// ```
    /// use bit_model::backend::{GpuBackend, gpu_adapters};
    ///
    /// let best = GpuBackend::Wgpu.best_device();
    /// assert_eq!(best.is_some(), !gpu_adapters(GpuBackend::Wgpu).is_empty());
    /// ```
    pub fn best_device(self) -> Option<Device> {
        gpu_adapters(self).into_iter().next().map(|a| a.device)
    }
}

/// Which kind of adapter a device is, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdapterKind {
    /// A discrete GPU.
    Discrete,
    /// A GPU sharing the CPU's memory (laptops, Apple silicon).
    Integrated,
    /// A virtual machine's GPU.
    Virtual,
    /// A software rasterizer on the CPU (Mesa's lavapipe, WARP): correct, not fast.
    Software,
}

/// One adapter of a GPU backend.
#[derive(Debug, Clone)]
pub struct GpuAdapter {
    /// What kind of adapter it is.
    pub kind: AdapterKind,
    /// The device to put tensors on (opened when first used).
    pub device: Device,
}

/// Every adapter `backend` reaches on this machine, best first: discrete GPUs, integrated,
/// virtual, then software adapters, each kind in the driver's order. Empty where the backend
/// is not compiled in or the machine has no driver for it.
///
/// ```
/// use bit_model::backend::{GpuBackend, gpu_adapters};
///
/// // Sorted by kind, whatever this machine has (possibly nothing).
/// let adapters = gpu_adapters(GpuBackend::Wgpu);
/// assert!(adapters.windows(2).all(|w| w[0].kind <= w[1].kind));
/// ```
pub fn gpu_adapters(backend: GpuBackend) -> Vec<GpuAdapter> {
    #[cfg(any(feature = "wgpu", feature = "vulkan"))]
    {
        use burn::tensor::{DeviceKind, DeviceType};
        let (device_type, make): (DeviceType, fn(DeviceKind) -> Device) = match backend {
            #[cfg(feature = "wgpu")]
            GpuBackend::Wgpu => (DeviceType::Wgpu, Device::wgpu),
            #[cfg(feature = "vulkan")]
            GpuBackend::Vulkan => (DeviceType::Vulkan, Device::vulkan),
            #[allow(unreachable_patterns)]
            _ => return Vec::new(),
        };
        let mut listed: Vec<Device> = Device::enumerate(device_type).into_iter().collect();
        // Burn lists adapters as devices without their kind; a device made from a kind and an
        // index compares equal to the listed device it names.
        type Indexed = fn(usize) -> DeviceKind;
        let indexed: [(AdapterKind, Indexed); 3] = [
            (AdapterKind::Discrete, DeviceKind::DiscreteGpu),
            (AdapterKind::Integrated, DeviceKind::IntegratedGpu),
            (AdapterKind::Virtual, DeviceKind::VirtualGpu),
        ];
        let mut adapters = Vec::new();
        for (kind, of_index) in indexed {
            for index in 0.. {
                let device = make(of_index(index));
                let Some(at) = listed.iter().position(|d| *d == device) else {
                    break;
                };
                listed.remove(at);
                adapters.push(GpuAdapter { kind, device });
            }
        }
        // What is left: the software adapter (and adapters wgpu cannot classify).
        adapters.extend(listed.into_iter().map(|device| GpuAdapter {
            kind: AdapterKind::Software,
            device,
        }));
        adapters
    }
    #[cfg(not(any(feature = "wgpu", feature = "vulkan")))]
    {
        let _ = backend;
        Vec::new()
    }
}

impl GpuAdapter {
    /// What the driver calls the adapter (opens it).
    pub fn name(&self) -> String {
        #[cfg(any(feature = "wgpu", feature = "vulkan", feature = "cuda"))]
        if let Some(identity) = self.device.identity() {
            return identity.name;
        }
        format!("{:?}", self.device)
    }
}
