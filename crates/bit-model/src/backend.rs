//! Picking a backend and device at run time by name.
//!
//! Burn 0.22 chooses the backend through the [`Device`] value, so the same model code runs on
//! every backend compiled into the binary. The CPU backend (`flex`) is always there; GPU
//! backends come with this crate's cargo features `wgpu`, `vulkan` and `cuda`.

use burn::tensor::{Device, Tensor};

use crate::error::{Error, Result};

/// The values of a float tensor on the host, as `f32`, in row-major order (one device sync).
///
/// ```
/// use bit_model::backend::host_values;
/// use burn::tensor::{Device, Tensor};
///
/// let t = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &Device::default());
/// assert_eq!(host_values(t), [1.0, 2.0, 3.0, 4.0]);
/// ```
pub fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .expect("converted to f32 above")
}

/// Names [`device_from_name`] accepts in this build, CPU first.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut names = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "vulkan") {
        names.push("vulkan");
    }
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    names
}

/// The device called `name`: `cpu` (Burn's `flex` backend, also accepted as `flex`), `wgpu`,
/// `vulkan`, or `cuda`, each optionally with `:<index>` for the n-th GPU.
///
/// ```
/// use bit_model::backend::device_from_name;
///
/// let cpu = device_from_name("cpu").unwrap();
/// assert_eq!(cpu, device_from_name("flex").unwrap());
/// assert!(device_from_name("tpu").is_err());
/// ```
pub fn device_from_name(name: &str) -> Result<Device> {
    let (kind, index) = match name.split_once(':') {
        Some((kind, index)) => (kind, Some(index)),
        None => (name, None),
    };
    let unknown = || Error::UnknownDevice {
        name: name.to_string(),
        available: compiled_backends().join(", "),
    };
    let index: usize = match index {
        Some(i) => i.parse().map_err(|_| unknown())?,
        None => 0,
    };
    match kind.to_ascii_lowercase().as_str() {
        "cpu" | "flex" if index == 0 => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(gpu_kind(index))),
        #[cfg(feature = "vulkan")]
        "vulkan" => Ok(Device::vulkan(gpu_kind(index))),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(index)),
        _ => Err(unknown()),
    }
}

#[cfg(any(feature = "wgpu", feature = "vulkan"))]
fn gpu_kind(index: usize) -> burn::tensor::DeviceKind {
    burn::tensor::DeviceKind::DiscreteGpu(index)
}

/// The devices a spec names, for data-parallel training: a comma-separated list of
/// [`device_from_name`] names, where a GPU backend without an index (`cuda`, `wgpu`, `vulkan`)
/// means every device of that backend the machine has, as the reference uses all visible GPUs.
/// Naming the CPU twice (`cpu,cpu`) gives two replicas on the CPU, which computes the same
/// update as one.
///
/// ```
/// use bit_model::backend::devices_from_spec;
///
/// assert_eq!(devices_from_spec("cpu").unwrap().len(), 1);
/// assert_eq!(devices_from_spec("cpu,cpu").unwrap().len(), 2);
/// assert!(devices_from_spec("").is_err());
/// ```
pub fn devices_from_spec(spec: &str) -> Result<Vec<Device>> {
    let mut devices = Vec::new();
    for name in spec.split(',').map(str::trim) {
        match all_devices_of(name) {
            Some(all) => devices.extend(all?),
            None => devices.push(device_from_name(name)?),
        }
    }
    Ok(devices)
}

/// Every device of a GPU backend named without an index; `None` for other names.
fn all_devices_of(name: &str) -> Option<Result<Vec<Device>>> {
    let device_type = gpu_backend(&name.to_ascii_lowercase())?;
    let found: Vec<Device> = Device::enumerate(device_type).into_iter().collect();
    Some(if found.is_empty() {
        Err(Error::UnknownDevice {
            name: name.to_string(),
            available: "no such device on this machine".into(),
        })
    } else {
        Ok(found)
    })
}

/// The GPU backend of a name, among those compiled in.
fn gpu_backend(name: &str) -> Option<burn::tensor::DeviceType> {
    match name {
        #[cfg(feature = "cuda")]
        "cuda" => Some(burn::tensor::DeviceType::Cuda),
        #[cfg(feature = "wgpu")]
        "wgpu" => Some(burn::tensor::DeviceType::Wgpu),
        #[cfg(feature = "vulkan")]
        "vulkan" => Some(burn::tensor::DeviceType::Vulkan),
        _ => None,
    }
}

/// One device of every backend compiled in, named, for benchmarks and smoke tests.
pub fn compiled_devices() -> Vec<(&'static str, Device)> {
    compiled_backends()
        .into_iter()
        .filter_map(|name| Some((name, device_from_name(name).ok()?)))
        .collect()
}
