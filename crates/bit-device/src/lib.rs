//! # bit-device
//!
//! Naming the devices a BiT model runs and trains on, at run time: `cpu`, `wgpu[:N]`,
//! `vulkan[:N]`, `cuda[:N]` (each GPU backend with this crate's cargo feature of that name),
//! comma-separated lists for data-parallel training, and devices that other processes or
//! machines serve (`bit serve`, Burn Remote over WebSocket or Iroh, with the `remote` feature):
//! `ws://host:port[/index]` or `iroh://ID@host:port[/index]`, authenticated by
//! `$BIT_REMOTE_TOKEN`.
//!
//! ```
//! let cpu = bit_device::device_from_name("cpu")?;
//! let replicas = bit_device::devices_from_spec("cpu,cpu")?;
//! assert_eq!(replicas, [cpu.clone(), cpu]);
//! # Ok::<(), bit_device::Error>(())
//! ```
#![warn(missing_docs)]

use bit_model::backend::{AdapterKind, GpuAdapter, GpuBackend, gpu_adapters};
use burn::tensor::Device;

mod compute;
mod error;

pub use compute::Compute;
pub use error::{Error, Result};

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
/// `vulkan`, or `cuda`, each optionally with `:<index>`; with the `remote` feature,
/// `ws://host:port[/index]` or `iroh://ID@host:port[/index]`, device `index` (default 0) of a
/// `bit serve` process, connected here (the credential is `$BIT_REMOTE_TOKEN` if set).
///
/// `wgpu` and `vulkan` name the best adapter the machine has — a discrete GPU, else an
/// integrated one, a virtual one, then a software (CPU) adapter such as Mesa's lavapipe — and
/// `wgpu:N` the N-th of [`gpu_adapters`]' list in that order. A machine with no adapter, or
/// fewer than N + 1, gets [`Error::NoGpuAdapter`] listing what was found, never a panic in the
/// driver's thread.
///
/// ```
/// use bit_device::device_from_name;
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
    let kind = kind.to_ascii_lowercase();
    match kind.as_str() {
        "cpu" | "flex" if index == 0 => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(index)),
        _ => {
            let backend = GpuBackend::from_name(&kind).ok_or_else(unknown)?;
            let adapters = gpu_adapters(backend);
            match adapters.get(index) {
                Some(adapter) => Ok(adapter.device.clone()),
                None => Err(no_adapter(name, &adapters)),
            }
        }
    }
}

/// `name` asked for an adapter that is not there: say what is.
fn no_adapter(name: &str, adapters: &[GpuAdapter]) -> Error {
    let found = if adapters.is_empty() {
        "none (no driver answered: install the GPU's Vulkan driver, or Mesa's \
         `mesa-vulkan-drivers` for the software adapter lavapipe)"
            .to_string()
    } else {
        adapters
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i}: {:?} {}", a.kind, a.name()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Error::NoGpuAdapter {
        name: name.to_string(),
        found,
    }
}

/// The devices a spec names, for data-parallel training: a comma-separated list of
/// [`device_from_name`] names, where a GPU backend without an index (`cuda`, `wgpu`, `vulkan`)
/// means every device of that backend the machine has, as the reference uses all visible GPUs,
/// and a remote server without an index (`ws://host:port`) every device it serves.
/// Naming the CPU twice (`cpu,cpu`) gives two replicas on the CPU, which computes the same
/// update as one.
///
/// ```
/// use bit_device::devices_from_spec;
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

/// Every device of a GPU backend named without an index; `None` for other names. For `wgpu`
/// and `vulkan`: every hardware GPU, or the software adapter on a machine without one (a
/// software replica beside a real GPU would only hold the GPU back).
fn all_devices_of(name: &str) -> Option<Result<Vec<Device>>> {
    if let Some(remote) = remote::parse(name) {
        return Some(remote.and_then(|r| r.connect_all()));
    }
    let lower = name.to_ascii_lowercase();
    #[cfg(feature = "cuda")]
    if lower == "cuda" {
        use burn::tensor::DeviceType;
        let found: Vec<Device> = Device::enumerate(DeviceType::Cuda).into_iter().collect();
        return Some(if found.is_empty() {
            Err(Error::NoGpuAdapter {
                name: name.to_string(),
                found: "no CUDA device".into(),
            })
        } else {
            Ok(found)
        });
    }
    let adapters = gpu_adapters(GpuBackend::from_name(&lower)?);
    let best = adapters.first().map(|a| a.kind == AdapterKind::Software);
    Some(match best {
        None => Err(no_adapter(name, &adapters)),
        Some(software_only) => Ok(adapters
            .into_iter()
            .filter(|a| software_only || a.kind != AdapterKind::Software)
            .map(|a| a.device)
            .collect()),
    })
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
