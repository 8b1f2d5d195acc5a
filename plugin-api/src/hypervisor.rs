//! The hypervisor interface. A plugin creates VMs and drives them; every VM outlives the
//! process that created it, so each call takes the VM's state blob (opaque to the host,
//! persisted by it) and may return an updated one.

use crate::error::PluginError;
use crate::guard::guard;
use crate::payload::payload;
use abi_stable::{
    sabi_trait,
    std_types::{RArc, RResult, RSlice, RStr, RString, RVec},
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How to build a VM (the seed's `HypervisorConfig`), sent as a versioned JSON payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HypervisorConfig {
    /// Schema version of this payload.
    pub schema: u32,
    /// The guest kernel (an ELF `vmlinux` or a bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line parameters.
    #[serde(default)]
    pub kernel_params: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Plugin-specific settings.
    #[serde(default)]
    pub extra: serde_json::Value,
}
payload!(HypervisorConfig, 1);

/// A device to hot-plug into or out of a running VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeviceRequest {
    /// Schema version of this payload.
    pub schema: u32,
    /// `true` to add, `false` to remove.
    pub add: bool,
    /// `"block"`, `"net"`, `"vfio"`, ...
    pub kind: String,
    /// The device's identifier, unique within the VM.
    pub id: String,
    /// Kind-specific settings (image path, tap name, ...).
    #[serde(default)]
    pub settings: serde_json::Value,
}
payload!(DeviceRequest, 1);

/// The FFI-safe hypervisor interface. Plugin authors implement [`HypervisorPlugin`].
#[sabi_trait]
pub trait Hypervisor: Send + Sync {
    /// Creates (but does not start) a VM for `sandbox_id` from a [`HypervisorConfig`]
    /// payload; returns the VM's state blob.
    fn create_vm(&self, sandbox_id: RStr<'_>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Boots a created VM; returns its updated state.
    fn start_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Stops a VM and releases its resources; returns its updated state.
    fn stop_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Pauses a running VM.
    fn pause_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Resumes a paused VM.
    fn resume_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Saves a paused VM as a template under `dir`; returns the template descriptor.
    fn save_template(&self, vm: RSlice<'_, u8>, dir: RStr<'_>) -> RResult<RVec<u8>, PluginError>;
    /// Creates a VM for `sandbox_id` from a template descriptor; returns its state.
    fn create_from_template(
        &self,
        sandbox_id: RStr<'_>,
        template: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError>;
    /// Hot-plugs or unplugs a device ([`DeviceRequest`] payload); returns the updated state.
    fn hotplug(&self, vm: RSlice<'_, u8>, request: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// The address the host dials to reach the guest agent (`hvsock:///path:1024`, ...).
    fn agent_endpoint(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError>;
    /// Whether the VM's process is alive, as `"running"`, `"paused"`, `"stopped"` or `"dead"`.
    #[sabi(last_prefix_field)]
    fn vm_status(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError>;
}

/// A shared hypervisor trait object (the factory plugins receive one).
pub type HypervisorBox = Hypervisor_TO<'static, RArc<()>>;

/// What a hypervisor plugin author implements. See [`Hypervisor`] for each method.
#[allow(missing_docs)]
pub trait HypervisorPlugin: Send + Sync + 'static {
    fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError>;
    fn start_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError>;
    fn stop_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError>;
    fn pause_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError>;
    fn resume_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError>;
    fn save_template(&self, _vm: &[u8], _dir: &str) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::unsupported("this hypervisor cannot save templates"))
    }
    fn create_from_template(&self, _sandbox_id: &str, _template: &[u8]) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::unsupported("this hypervisor cannot create VMs from templates"))
    }
    fn hotplug(&self, _vm: &[u8], _request: &DeviceRequest) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::unsupported("this hypervisor cannot hot-plug devices"))
    }
    fn agent_endpoint(&self, vm: &[u8]) -> Result<String, PluginError>;
    fn vm_status(&self, vm: &[u8]) -> Result<String, PluginError>;
}

/// Wraps a [`HypervisorPlugin`] into the FFI trait object, catching panics.
pub fn hypervisor_into_ffi<H: HypervisorPlugin>(h: H) -> HypervisorBox {
    Hypervisor_TO::from_ptr(RArc::new(HypervisorAdapter(h)), abi_stable::sabi_trait::TD_Opaque)
}

struct HypervisorAdapter<H>(H);

fn out(r: Result<Vec<u8>, PluginError>) -> Result<RVec<u8>, PluginError> {
    r.map(RVec::from)
}

impl<H: HypervisorPlugin> Hypervisor for HypervisorAdapter<H> {
    fn create_vm(&self, id: RStr<'_>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        use crate::payload::Payload;
        guard("create_vm", || out(self.0.create_vm(id.as_str(), &HypervisorConfig::decode(&config)?)))
    }
    fn start_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("start_vm", || out(self.0.start_vm(&vm)))
    }
    fn stop_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("stop_vm", || out(self.0.stop_vm(&vm)))
    }
    fn pause_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("pause_vm", || out(self.0.pause_vm(&vm)))
    }
    fn resume_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("resume_vm", || out(self.0.resume_vm(&vm)))
    }
    fn save_template(&self, vm: RSlice<'_, u8>, dir: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        guard("save_template", || out(self.0.save_template(&vm, dir.as_str())))
    }
    fn create_from_template(&self, id: RStr<'_>, t: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("create_from_template", || out(self.0.create_from_template(id.as_str(), &t)))
    }
    fn hotplug(&self, vm: RSlice<'_, u8>, request: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        use crate::payload::Payload;
        guard("hotplug", || out(self.0.hotplug(&vm, &DeviceRequest::decode(&request)?)))
    }
    fn agent_endpoint(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError> {
        guard("agent_endpoint", || self.0.agent_endpoint(&vm).map(RString::from))
    }
    fn vm_status(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError> {
        guard("vm_status", || self.0.vm_status(&vm).map(RString::from))
    }
}
