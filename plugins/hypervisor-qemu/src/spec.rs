//! What a [`HypervisorConfig`](plugin_api::hypervisor::HypervisorConfig) may ask of QEMU: the
//! checks are shared with the other hypervisor plugins ([`hypervisor_framework::spec`], run by
//! [`hypervisor_framework::ops::check_request`]) within QEMU's [`LIMITS`].

pub use hypervisor_framework::spec::{option_safe_path, DiskSpec, Limits, SpecError, VmSpec};

/// What this plugin lets a VM have.
pub const LIMITS: Limits = Limits { plugin: "qemu", max_vcpus: 64, min_memory_mib: 128, max_memory_mib: u64::MAX };
