//! The VM's devices: the buses the vCPUs dispatch exits to, the legacy port-I/O devices, the
//! virtio devices on their virtio-mmio transports, and the command-line options that build
//! them ([`config`]).

pub mod bus;
pub mod config;
pub mod legacy;
pub mod saved;
pub mod virtio;

pub use config::{build, DeviceConfig, DeviceError};
