//! The layouts of plugin-api 1.2.0, frozen, for loading plugins built against 1.2: as
//! [`crate::v1_0`] explains, abi_stable's load-time check refuses a library whose prefix types
//! have fewer fields than the host's, so the loader checks a 1.2 plugin against these and then
//! uses it through the current types.
//!
//! 1.3 appended `create_vm_from_template` to `Hypervisor`, `destroy` to `VmFactory`, and
//! `hypervisor_plugin` and `base_status` to `FactoryHost`, so those three (and the root module
//! that names them) are redefined here as 1.2.0 had them. Never edit this module except to
//! mirror what 1.2.0 was.

use crate::error::PluginError;
use crate::hypervisor::ListedVm;
use crate::logging::HostContext;
use crate::manifest::PluginManifest;
use crate::proxy::ProxyBox;
use crate::shim::ShimBox;
use crate::storage::MetadataStorageBox;
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// `Hypervisor` as of 1.2.0: without `create_vm_from_template`.
#[sabi_trait]
pub trait Hypervisor: Send + Sync {
    /// Creates (but does not start) a VM.
    fn create_vm(&self, sandbox_id: RStr<'_>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Boots a created VM.
    fn start_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Stops a VM.
    fn stop_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Pauses a running VM.
    fn pause_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Resumes a paused VM.
    fn resume_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Saves a paused VM as a template.
    fn save_template(&self, vm: RSlice<'_, u8>, dir: RStr<'_>) -> RResult<RVec<u8>, PluginError>;
    /// Creates a VM from a template.
    fn create_from_template(
        &self,
        sandbox_id: RStr<'_>,
        template: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError>;
    /// Hot-plugs or unplugs a device.
    fn hotplug(&self, vm: RSlice<'_, u8>, request: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// The agent's addresses.
    fn agent_endpoint(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError>;
    /// The VM's status.
    #[sabi(last_prefix_field)]
    fn vm_status(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError>;
    /// Every VM under the run directory.
    fn list_vms(&self) -> RResult<RVec<ListedVm>, PluginError> {
        RResult::RErr(PluginError::unsupported("unsupported"))
    }
    /// Makes another instance's VM this one's.
    fn adopt_vm(&self, vm: RSlice<'_, u8>, sandbox_id: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        let _ = (vm, sandbox_id);
        RResult::RErr(PluginError::unsupported("unsupported"))
    }
}

/// As in 1.2.0.
pub type HypervisorBox = Hypervisor_TO<'static, RArc<()>>;

/// `FactoryHost` as of 1.2.0: without `hypervisor_plugin` and `base_status`.
#[sabi_trait]
pub trait FactoryHost: Send + Sync {
    /// A VM from the base factory.
    fn base_new_vm(
        &self,
        hypervisor: &HypervisorBox,
        sandbox_id: RStr<'_>,
        config: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError>;
    /// The hypervisor instance for the factory's own VMs.
    fn pool_hypervisor(&self) -> HypervisorBox;
    /// The VM the runtime config describes.
    fn vm_config(&self) -> RVec<u8>;
    /// The factory's private directory.
    fn work_dir(&self) -> RString;
    /// Waits until the VM's agent answers.
    #[sabi(last_prefix_field)]
    fn wait_agent(&self, vm: RSlice<'_, u8>, console_log: RStr<'_>, timeout_ms: u64) -> RResult<(), PluginError>;
}

/// As in 1.2.0.
pub type FactoryHostBox = FactoryHost_TO<'static, RArc<()>>;

/// `VmFactory` as of 1.2.0: without `destroy`.
#[sabi_trait]
pub trait VmFactory: Send + Sync {
    /// Returns a VM built by `hypervisor`.
    #[sabi(last_prefix_field)]
    fn new_vm(
        &self,
        hypervisor: &HypervisorBox,
        sandbox_id: RStr<'_>,
        config: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError>;
    /// Called once before any other call.
    fn init(&self, host: FactoryHostBox) -> RResult<(), PluginError> {
        let _ = host;
        RResult::ROk(())
    }
    /// What the factory holds.
    fn status(&self) -> RResult<RVec<u8>, PluginError> {
        RResult::ROk(RVec::new())
    }
    /// Stops every VM the factory holds.
    fn close(&self) -> RResult<(), PluginError> {
        RResult::ROk(())
    }
}

/// As in 1.2.0.
pub type VmFactoryBox = VmFactory_TO<'static, RBox<()>>;

/// The root module as of 1.2.0.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
pub struct PluginModule {
    /// The plugin's identity.
    pub manifest: extern "C" fn() -> PluginManifest,
    /// Called once by the host after loading a plugin dynamically.
    pub init: extern "C" fn(HostContext) -> RResult<(), PluginError>,
    /// Creates a storage instance from the plugin's config (JSON).
    pub new_storage: extern "C" fn(RSlice<'_, u8>) -> RResult<MetadataStorageBox, PluginError>,
    /// Creates a hypervisor instance from the plugin's config (JSON).
    pub new_hypervisor: extern "C" fn(RSlice<'_, u8>) -> RResult<HypervisorBox, PluginError>,
    /// Creates a VM factory instance from the plugin's config (JSON).
    pub new_vm_factory: extern "C" fn(RSlice<'_, u8>) -> RResult<VmFactoryBox, PluginError>,
    /// Creates a shim instance from the plugin's config (JSON).
    pub new_shim: extern "C" fn(RSlice<'_, u8>) -> RResult<ShimBox, PluginError>,
    /// Creates a proxy instance from the plugin's config (JSON).
    #[sabi(last_prefix_field)]
    pub new_proxy: extern "C" fn(RSlice<'_, u8>) -> RResult<ProxyBox, PluginError>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "sandbox_runtime_plugin";
    const NAME: &'static str = "sandbox_runtime_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings { version: RStr::from_str("1.2.0") };
}

#[cfg(test)]
mod tests {
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
    use abi_stable::StableAbi;

    #[test]
    fn the_current_root_module_only_appends_to_1_2() {
        check_layout_compatibility(
            <super::PluginModuleRef as StableAbi>::LAYOUT,
            <crate::PluginModuleRef as StableAbi>::LAYOUT,
        )
        .unwrap();
    }

    // One check per test (see crate::v1_1's tests).

    #[test]
    fn the_1_2_root_module_only_appends_to_1_1() {
        check_layout_compatibility(
            <crate::v1_1::PluginModuleRef as StableAbi>::LAYOUT,
            <super::PluginModuleRef as StableAbi>::LAYOUT,
        )
        .unwrap();
    }

    #[test]
    fn the_1_2_layout_differs_from_the_current_one() {
        // Otherwise the loader's 1.2 path would be pointless (and this module stale).
        assert!(check_layout_compatibility(
            <crate::PluginModuleRef as StableAbi>::LAYOUT,
            <super::PluginModuleRef as StableAbi>::LAYOUT,
        )
        .is_err());
    }
}
