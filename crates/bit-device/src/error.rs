//! The one error type of `bit-device`.

/// Why a device name gives no device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device name that is not compiled into this build.
    #[error("unknown or not compiled-in device `{name}`; available here: {available}")]
    UnknownDevice {
        /// The name asked for.
        name: String,
        /// The names this build understands.
        available: String,
    },

    /// A GPU backend was named but the machine has no adapter for it (or fewer than the index
    /// asks for).
    #[error("no GPU adapter for `{name}`; found: {found}")]
    NoGpuAdapter {
        /// The name asked for (`wgpu`, `vulkan:1`, ...).
        name: String,
        /// The adapters this machine has, best first, with their index.
        found: String,
    },

    /// A device served by another process (`bit serve`, Burn Remote) could not be connected:
    /// nothing listens there, it is not a Burn Remote server, it refused the token, or it has
    /// no such device.
    #[error("cannot connect the remote device `{name}`: {reason}")]
    RemoteDevice {
        /// The device as named (`ws://host:port/index`).
        name: String,
        /// Burn Remote's reason.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
