//! Why an operation of the kvm plugin failed.

use crate::control::ApiError;
use hypervisor_framework::ops::OpError;
use std::path::PathBuf;
use vmm_api::limits::MAX_DEVICES;

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// A reason every plugin shares (the control channel's errors are [`ApiError`]s).
    #[error(transparent)]
    Op(#[from] OpError<ApiError>),
    /// The kernel is neither an ELF vmlinux nor a bzImage.
    #[error("HypervisorConfig.kernel = {0:?} is neither an ELF vmlinux (booted through PVH, the fast path) nor a bzImage (the fallback)")]
    KernelFormat(PathBuf),
    /// The kernel could not be read.
    #[error("reading the kernel {path:?}")]
    KernelRead {
        /// The kernel.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// More devices than the vmm has interrupt lines for.
    #[error("the VM would have {count} virtio devices ({disks} disks, the agent's console, vsock and network as configured); the vmm supports {MAX_DEVICES}")]
    TooManyDevices {
        /// All devices.
        count: usize,
        /// The disks among them.
        disks: usize,
    },
    /// The vmm binary is not there.
    #[error("the vmm binary was not found (looked at {}): build it (cargo build -p vmm) or set \"vmm\" in the kvm plugin config", looked_at(.0))]
    VmmMissing(Vec<PathBuf>),
}

fn looked_at(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
