//! Checks a [`HypervisorConfig`] up front and turns it into a [`VmSpec`] (the checks are
//! shared with the other hypervisor plugins: [`vm_process::spec`]), within QEMU's [`LIMITS`].

use plugin_api::hypervisor::HypervisorConfig;
pub use vm_process::spec::{option_safe_path, DiskSpec, Limits, SpecError, VmSpec};

/// What this plugin lets a VM have.
pub const LIMITS: Limits = Limits { plugin: "qemu", max_vcpus: 64, min_memory_mib: 128, max_memory_mib: u64::MAX };

/// Checks a [`HypervisorConfig`] against [`LIMITS`].
pub fn validate(config: &HypervisorConfig) -> Result<VmSpec, SpecError> {
    vm_process::spec::validate(config, &LIMITS)
}
