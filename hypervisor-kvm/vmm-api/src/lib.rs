//! What both ends of the vmm's control socket share, and nothing else (no KVM, no devices):
//!
//! - [`protocol`]: the typed [`Request`] and [`Response`] of the JSON-lines control API; the
//!   API's documentation is these types' documentation;
//! - [`client`]: a blocking client for it;
//! - [`kernel`]: which kernel files the vmm boots (the check the kvm plugin runs before it
//!   starts a vmm, and the vmm runs before it loads one);
//! - [`limits`]: how many vCPUs, how much memory and how many virtio devices one vmm takes.
//!
//! The `vmm` (crate `vmm`) serves the protocol; the `kvm` hypervisor plugin (crate
//! `hypervisor-kvm`) and the tests are its clients.
#![deny(missing_docs)]

pub mod client;
pub mod kernel;
pub mod limits;
pub mod protocol;

pub use client::{Client, ClientError};
pub use protocol::{DeviceInfo, Request, Response, RunState, VmInfo};
