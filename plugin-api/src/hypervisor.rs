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
    /// The file the VM's serial console is written to. The host owns it (and removes it when
    /// the sandbox is deleted); `None` discards the console.
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// Disks attached when the VM is created, in order (hot-plug adds more later).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
}
payload!(HypervisorConfig, 1);

/// The longest [`DiskConfig::name`]: the size of a virtio-blk serial number.
pub const MAX_DISK_NAME_LEN: usize = 20;

/// A disk image attached to a VM as a virtio-blk device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DiskConfig {
    /// The name the guest finds the disk by: its virtio-blk serial number (1 to
    /// [`MAX_DISK_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`), read from `/sys/block/vdX/serial`.
    pub name: String,
    /// The image file (raw).
    pub path: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

impl DiskConfig {
    /// Checks the name's length and characters.
    pub fn validate_name(name: &str) -> Result<(), PluginError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_DISK_NAME_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(PluginError::invalid_input(format!(
                "disk name {name:?} must be 1 to {MAX_DISK_NAME_LEN} characters of A-Z, a-z, 0-9, '_', '.' and '-'"
            )))
        }
    }
}

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
    /// The addresses the host may dial to reach the guest agent, comma-separated, best first:
    /// `serial:<path>` (the host socket of a virtio-serial port, carrying Yamux),
    /// `hvsock:<path>:<port>` (hybrid vsock), `vsock:<cid>:<port>` or `unix:<path>`. A host
    /// process takes one address for as long as it talks to the agent; several addresses let
    /// several host processes talk to the agent at once.
    fn agent_endpoint(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError>;
    /// Whether the VM's process is alive, as `"created"` (not started yet), `"running"`,
    /// `"paused"`, `"stopped"` (stopped through the plugin) or `"dead"` (it was started and its
    /// process is gone although nobody stopped it).
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

/// The host's view of a hypervisor plugin instance, in plain Rust types. Every call blocks:
/// async hosts call it from a blocking thread.
pub struct HypervisorHandle {
    inner: HypervisorBox,
    plugin: String,
}

impl std::fmt::Debug for HypervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HypervisorHandle").field("plugin", &self.plugin).finish()
    }
}

impl HypervisorHandle {
    /// Wraps a hypervisor trait object that came from the plugin named `plugin`.
    pub fn new(inner: HypervisorBox, plugin: impl Into<String>) -> Self {
        Self { inner, plugin: plugin.into() }
    }

    /// The name of the plugin behind this handle.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The raw trait object (what factory plugins receive).
    pub fn raw(&self) -> &HypervisorBox {
        &self.inner
    }

    fn span(&self, op: &'static str) -> tracing::span::EnteredSpan {
        tracing::debug_span!("plugin", plugin = %self.plugin, op).entered()
    }

    /// See [`Hypervisor::create_vm`].
    pub fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        use crate::payload::Payload;
        let _span = self.span("create_vm");
        let bytes = config.encode();
        Ok(self.inner.create_vm(sandbox_id.into(), bytes.as_slice().into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::start_vm`].
    pub fn start_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("start_vm");
        Ok(self.inner.start_vm(vm.into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::stop_vm`].
    pub fn stop_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("stop_vm");
        Ok(self.inner.stop_vm(vm.into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::pause_vm`].
    pub fn pause_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("pause_vm");
        Ok(self.inner.pause_vm(vm.into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::resume_vm`].
    pub fn resume_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("resume_vm");
        Ok(self.inner.resume_vm(vm.into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::agent_endpoint`].
    pub fn agent_endpoint(&self, vm: &[u8]) -> Result<String, PluginError> {
        let _span = self.span("agent_endpoint");
        Ok(self.inner.agent_endpoint(vm.into()).into_result()?.into_string())
    }

    /// See [`Hypervisor::vm_status`].
    pub fn vm_status(&self, vm: &[u8]) -> Result<String, PluginError> {
        let _span = self.span("vm_status");
        Ok(self.inner.vm_status(vm.into()).into_result()?.into_string())
    }
}
