//! The layouts of plugin-api 1.0.0, frozen, for loading plugins built against 1.0.
//!
//! abi_stable's load-time check accepts a library whose prefix types (root module, trait
//! vtables) have at least the fields the host knows, not fewer: a 1.0 plugin fails the check
//! against a later core's layout although every call it lacks has a fallback. So the loader
//! checks a 1.0 plugin against these 1.0 definitions instead, then uses it through the current
//! types. That is sound because 1.1 only appends to 1.0 (the test below checks it with
//! abi_stable's own checker), and prefix types record at run time which fields a library has:
//! a method the plugin lacks falls back to its default.
//!
//! Only the types whose layout changed since 1.0 are redefined here, with the same names; the
//! rest are the current ones. `Hypervisor` and `VmFactory` (which takes a hypervisor) are
//! also 1.1's ([`crate::v1_1`] uses them). Never edit this module except to mirror what 1.0.0 was (its
//! doc comments are 1.0.0's; doc comments are not part of a layout).

use crate::error::PluginError;
use crate::logging::HostContext;
use crate::manifest::PluginManifest;
use crate::proxy::ProxyBox;
use crate::shim::ShimBox;
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// `MetadataStorage` as of 1.0.0: without `save_batch`.
#[sabi_trait]
pub trait MetadataStorage: Send + Sync {
    /// Saves `value` under `key`, replacing any previous value, durably.
    fn save(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), PluginError>;
    /// Loads the value under `key`; `None` if there is none.
    fn load(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError>;
    /// Deletes `key`; deleting a missing key succeeds.
    fn delete(&self, key: RStr<'_>) -> RResult<(), PluginError>;
    /// Lists the keys that start with `prefix` (all keys for an empty prefix), sorted.
    #[sabi(last_prefix_field)]
    fn list(&self, prefix: RStr<'_>) -> RResult<RVec<RString>, PluginError>;
}

/// As in 1.0.0 (an alias: the layout records lifetimes as they are written).
pub type MetadataStorageBox = MetadataStorage_TO<'static, RBox<()>>;

/// `Hypervisor` as of 1.0.0 (and 1.1.0): without `list_vms` and `adopt_vm`.
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
}

/// As in 1.0.0.
pub type HypervisorBox = Hypervisor_TO<'static, RArc<()>>;

/// `VmFactory` as of 1.0.0 (and 1.1.0): its `new_vm` takes the 1.0 [`HypervisorBox`].
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
}

/// As in 1.0.0.
pub type VmFactoryBox = VmFactory_TO<'static, RBox<()>>;

/// The root module as of 1.0.0.
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
    const VERSION_STRINGS: VersionStrings = VersionStrings { version: RStr::from_str("1.0.0") };
}

#[cfg(test)]
mod tests {
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
    use abi_stable::StableAbi;

    #[test]
    fn the_current_root_module_only_appends_to_1_0() {
        // 1.0 as the interface, the current API as the implementation: accepted only if every
        // 1.0 field is in the current layout, unchanged and in the same place.
        check_layout_compatibility(
            <super::PluginModuleRef as StableAbi>::LAYOUT,
            <crate::PluginModuleRef as StableAbi>::LAYOUT,
        )
        .unwrap();
    }

    #[test]
    fn the_1_0_layout_differs_from_the_current_one() {
        // Otherwise the loader's 1.0 path would be pointless (and this module stale).
        assert!(check_layout_compatibility(
            <crate::PluginModuleRef as StableAbi>::LAYOUT,
            <super::PluginModuleRef as StableAbi>::LAYOUT,
        )
        .is_err());
    }
}
