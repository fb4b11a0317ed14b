//! Picking a backend and device at run time by name.
//!
//! Burn 0.22 chooses the backend through the [`Device`] value, so the same model code runs on
//! every backend compiled into the binary. The CPU backend (`flex`) is always there; GPU
//! backends come with this crate's cargo features `wgpu`, `vulkan` and `cuda`; devices that
//! other processes or machines serve (`bit serve`, Burn Remote over WebSocket or Iroh) come
//! with the `remote` feature and are named `ws://host:port[/index]` or
//! `iroh://ID@host:port[/index]`.

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
    if cfg!(feature = "remote") {
        names.push("ws://host:port[/index]");
        names.push("iroh://ID@host:port[/index]");
    }
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
/// `vulkan`, or `cuda`, each optionally with `:<index>` for the n-th GPU; with the `remote`
/// feature, `ws://host:port[/index]` or `iroh://ID@host:port[/index]`, device `index`
/// (default 0) of a `bit serve` process, connected here (the credential is `$BIT_REMOTE_TOKEN`
/// if set).
///
/// ```
/// use bit_model::backend::device_from_name;
///
/// let cpu = device_from_name("cpu").unwrap();
/// assert_eq!(cpu, device_from_name("flex").unwrap());
/// assert!(device_from_name("tpu").is_err());
/// ```
pub fn device_from_name(name: &str) -> Result<Device> {
    if let Some(remote) = remote::parse(name) {
        return remote?.connect();
    }
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
/// means every device of that backend the machine has, as the reference uses all visible GPUs,
/// and a remote server without an index (`ws://host:port`) every device it serves.
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
    if let Some(remote) = remote::parse(name) {
        return Some(remote.and_then(|r| r.connect_all()));
    }
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

/// Devices served by other processes: `ws://host:port[/index]` (WebSocket) and
/// `iroh://ID@host:port[/index]` (Iroh: the server's key id, then where to dial it).
mod remote {
    use super::*;

    /// A remote device as named: the server and, if given, which of its devices.
    pub(super) struct RemoteName {
        name: String,
        #[cfg_attr(not(feature = "remote"), allow(dead_code))]
        server: Server,
        index: Option<usize>,
    }

    /// Where a server is, per transport.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    enum Server {
        /// `ws://host:port`.
        WebSocket(String),
        /// The key id and `host:port`.
        Iroh(String, String),
    }

    /// `Some` for a name with a remote scheme (whether or not this build can connect it).
    pub(super) fn parse(name: &str) -> Option<Result<RemoteName>> {
        let (scheme, rest) = name.split_once("://")?;
        if scheme != "ws" && scheme != "iroh" {
            return None;
        }
        let bad = |why: &str| Error::RemoteDevice {
            name: name.to_string(),
            reason: why.to_string(),
        };
        let (address, index) = match rest.split_once('/') {
            Some((address, "")) => (address, None),
            Some((address, index)) => match index.parse() {
                Ok(i) => (address, Some(i)),
                Err(_) => return Some(Err(bad("the device index after `/` is not a number"))),
            },
            None => (rest, None),
        };
        let host_port = |address: &str| {
            address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        };
        let server = match (scheme, address.split_once('@')) {
            ("ws", _) if host_port(address) => Server::WebSocket(format!("ws://{address}")),
            ("iroh", Some((id, at))) if !id.is_empty() && host_port(at) => {
                Server::Iroh(id.to_string(), at.to_string())
            }
            _ => {
                return Some(Err(bad(
                    "expected ws://host:port[/index] or iroh://ID@host:port[/index]",
                )));
            }
        };
        Some(Ok(RemoteName {
            name: name.to_string(),
            server,
            index,
        }))
    }

    impl RemoteName {
        /// The one device named (device 0 without an index).
        pub(super) fn connect(self) -> Result<Device> {
            #[cfg(feature = "remote")]
            {
                let options =
                    Device::remote_options(&self.host()?).device_index(self.index.unwrap_or(0));
                options.init().map_err(|e| self.error(e))
            }
            #[cfg(not(feature = "remote"))]
            Err(self.not_compiled())
        }

        /// Every device of the server without an index; the one named with one.
        pub(super) fn connect_all(self) -> Result<Vec<Device>> {
            if self.index.is_some() {
                return self.connect().map(|d| vec![d]);
            }
            #[cfg(feature = "remote")]
            {
                let devices = self.host()?.devices().map_err(|e| self.error(e))?;
                Ok(devices.into_iter().collect())
            }
            #[cfg(not(feature = "remote"))]
            Err(self.not_compiled())
        }

        #[cfg(feature = "remote")]
        fn host(&self) -> Result<burn::remote::RemoteHost> {
            use burn::remote::{EndpointId, IrohHost, IrohRelays, RemoteHost};
            let host = match &self.server {
                Server::WebSocket(url) => RemoteHost::websocket(url),
                Server::Iroh(id, at) => {
                    let bad = |reason: String| Error::RemoteDevice {
                        name: self.name.clone(),
                        reason,
                    };
                    let id: EndpointId = id
                        .parse()
                        .map_err(|e| bad(format!("`{id}` is not an Iroh server id: {e}")))?;
                    let addresses = std::net::ToSocketAddrs::to_socket_addrs(at)
                        .map_err(|e| bad(format!("cannot resolve {at}: {e}")))?;
                    // Direct connections only: no relay server is contacted.
                    let host = addresses.fold(
                        IrohHost::new(id).with_relays(IrohRelays::Disabled),
                        IrohHost::with_address,
                    );
                    RemoteHost::iroh(host)
                }
            };
            Ok(match std::env::var("BIT_REMOTE_TOKEN") {
                Ok(token) if !token.is_empty() => host.with_credential(token),
                _ => host,
            })
        }

        #[cfg(feature = "remote")]
        fn error(&self, e: burn::remote::ConnectError) -> Error {
            Error::RemoteDevice {
                name: self.name.clone(),
                reason: e.to_string(),
            }
        }

        #[cfg(not(feature = "remote"))]
        fn not_compiled(&self) -> Error {
            Error::UnknownDevice {
                name: self.name.clone(),
                available: format!(
                    "{} (remote devices need the `remote` feature)",
                    compiled_backends().join(", ")
                ),
            }
        }
    }
}
