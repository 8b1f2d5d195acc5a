//! A minimal KVM micro-VMM, the `vmm` binary: boots an ELF `vmlinux` through its PVH entry
//! (or a bzImage) with an initrd, virtio-mmio devices described in ACPI, a 16550 serial console
//! written to a log file, and the control API of [`vmm_api::protocol`] on a Unix socket.
//!
//! Its modules, grouped as Firecracker groups its vmm: [`arch`] (address map, ACPI), [`boot`]
//! (PVH and bzImage loading), [`vstate`] (memory, VM, vCPUs, run state), [`devices`] (buses,
//! legacy port I/O, virtio), [`api`] (the control API server), [`save`] (a whole VM's state
//! file: the `save` op and `--restore`), [`logger`], [`seccomp`], and [`vmm`], which builds the
//! VM from them and runs it.
#![deny(missing_docs)]

pub mod api;
pub mod arch;
pub mod boot;
pub mod daemon;
pub mod devices;
pub mod error;
pub mod event;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod host;
pub mod logger;
pub mod save;
pub mod seccomp;
pub mod vmm;
pub mod vstate;

pub use error::VmmError;
pub use vmm::{run, VmConfig};
pub use vstate::vcpu::GuestExit;
