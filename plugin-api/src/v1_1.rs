//! The layouts of plugin-api 1.1.0, frozen, for loading plugins built against 1.1: as
//! [`crate::v1_0`] explains, abi_stable's load-time check refuses a library whose prefix types
//! have fewer fields than the host's, so the loader checks a 1.1 plugin against these and then
//! uses it through the current types.
//!
//! 1.1 appended `save_batch` to `MetadataStorage` (so it is the current one here); 1.2
//! appended `list_vms` and `adopt_vm` to `Hypervisor` and `init`, `status` and `close` to
//! `VmFactory`, so this root module takes 1.0's `Hypervisor` and `VmFactory`. Never edit this module except to mirror what 1.1.0 was.

use crate::error::PluginError;
use crate::logging::HostContext;
use crate::manifest::PluginManifest;
use crate::proxy::ProxyBox;
use crate::shim::ShimBox;
use crate::storage::MetadataStorageBox;
use crate::v1_0::{HypervisorBox, VmFactoryBox};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_types::VersionStrings,
    std_types::{RResult, RSlice, RStr},
    StableAbi,
};

/// The root module as of 1.1.0.
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
    const VERSION_STRINGS: VersionStrings = VersionStrings { version: RStr::from_str("1.1.0") };
}

#[cfg(test)]
mod tests {
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
    use abi_stable::StableAbi;

    #[test]
    fn the_current_root_module_only_appends_to_1_1() {
        check_layout_compatibility(
            <super::PluginModuleRef as StableAbi>::LAYOUT,
            <crate::PluginModuleRef as StableAbi>::LAYOUT,
        )
        .unwrap();
    }

    // One check per test: abi_stable keeps what it learnt of prefix types in a process-wide
    // table, so a second check in the same process compares against merged layouts (nextest
    // runs each test in its own process).

    #[test]
    fn the_1_1_root_module_only_appends_to_1_0() {
        check_layout_compatibility(
            <crate::v1_0::PluginModuleRef as StableAbi>::LAYOUT,
            <super::PluginModuleRef as StableAbi>::LAYOUT,
        )
        .unwrap();
    }

    #[test]
    fn the_1_1_layout_differs_from_the_current_one() {
        // Otherwise the loader's 1.1 path would be pointless (and this module stale).
        assert!(check_layout_compatibility(
            <crate::PluginModuleRef as StableAbi>::LAYOUT,
            <super::PluginModuleRef as StableAbi>::LAYOUT,
        )
        .is_err());
    }
}
