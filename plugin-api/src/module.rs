//! The root module every plugin library exports, and how plugins fill it.

use crate::error::PluginError;
use crate::factory::{factory_into_ffi, VmFactoryBox, VmFactoryPlugin};
use crate::guard::guard;
use crate::hypervisor::{hypervisor_into_ffi, HypervisorBox, HypervisorPlugin};
use crate::logging::{install_forwarder, HostContext};
use crate::manifest::{PanicStrategy, PluginKind, PluginManifest};
use crate::proxy::{proxy_into_ffi, ProxyBox, ProxyPlugin};
use crate::shim::{shim_into_ffi, ShimBox, ShimPlugin};
use crate::storage::{storage_into_ffi, MetadataStorageBox, Storage};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    prefix_type::PrefixTypeTrait,
    sabi_types::VersionStrings,
    std_types::{RResult, RSlice},
    StableAbi,
};

/// The version of `plugin-api` this build is (and plugins built against it report).
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The root module of a plugin library: a table of `extern "C"` functions.
///
/// Append-only: new fields go after the last one, and the host treats them as optional
/// (a plugin built against an older 1.x lacks them).
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
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// A plugin, as its author describes it. Implement the constructor of your plugin's kind;
/// the others keep their "unsupported" defaults. Export it with [`export_plugin!`] (for a
/// `.so`) and [`register_static_plugin!`] (for static linking).
///
/// [`export_plugin!`]: crate::export_plugin
/// [`register_static_plugin!`]: crate::register_static_plugin
pub trait Plugin: 'static {
    /// The name the config file selects the plugin by.
    const NAME: &'static str;
    /// Which interface the plugin implements.
    const KIND: PluginKind;
    /// The plugin's own version (usually `env!("CARGO_PKG_VERSION")`).
    const VERSION: &'static str;
    /// Who ships the plugin.
    const VENDOR: &'static str;

    /// Creates a storage instance (kind `storage`).
    fn new_storage(_config: &[u8]) -> Result<impl Storage, PluginError> {
        Err::<Unsupported, _>(unsupported::<Self>("storage"))
    }
    /// Creates a hypervisor instance (kind `hypervisor`).
    fn new_hypervisor(_config: &[u8]) -> Result<impl HypervisorPlugin, PluginError> {
        Err::<Unsupported, _>(unsupported::<Self>("hypervisor"))
    }
    /// Creates a VM factory instance (kind `factory`).
    fn new_vm_factory(_config: &[u8]) -> Result<impl VmFactoryPlugin, PluginError> {
        Err::<Unsupported, _>(unsupported::<Self>("factory"))
    }
    /// Creates a shim instance (kind `shim`).
    fn new_shim(_config: &[u8]) -> Result<impl ShimPlugin, PluginError> {
        Err::<Unsupported, _>(unsupported::<Self>("shim"))
    }
    /// Creates a proxy instance (kind `proxy`).
    fn new_proxy(_config: &[u8]) -> Result<impl ProxyPlugin, PluginError> {
        Err::<Unsupported, _>(unsupported::<Self>("proxy"))
    }
}

/// The return type of the constructors a plugin does not implement: it has no values.
#[derive(Debug)]
pub enum Unsupported {}

impl Storage for Unsupported {
    fn save(&self, _: &str, _: &[u8]) -> Result<(), PluginError> {
        match *self {}
    }
    fn load(&self, _: &str) -> Result<Option<Vec<u8>>, PluginError> {
        match *self {}
    }
    fn delete(&self, _: &str) -> Result<(), PluginError> {
        match *self {}
    }
    fn list(&self, _: &str) -> Result<Vec<String>, PluginError> {
        match *self {}
    }
}

impl HypervisorPlugin for Unsupported {
    fn create_vm(&self, _: &str, _: &crate::hypervisor::HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        match *self {}
    }
    fn start_vm(&self, _: &[u8]) -> Result<Vec<u8>, PluginError> {
        match *self {}
    }
    fn stop_vm(&self, _: &[u8]) -> Result<Vec<u8>, PluginError> {
        match *self {}
    }
    fn pause_vm(&self, _: &[u8]) -> Result<Vec<u8>, PluginError> {
        match *self {}
    }
    fn resume_vm(&self, _: &[u8]) -> Result<Vec<u8>, PluginError> {
        match *self {}
    }
    fn agent_endpoint(&self, _: &[u8]) -> Result<String, PluginError> {
        match *self {}
    }
    fn vm_status(&self, _: &[u8]) -> Result<String, PluginError> {
        match *self {}
    }
}

impl VmFactoryPlugin for Unsupported {
    fn new_vm(
        &self,
        _: &HypervisorBox,
        _: &str,
        _: &crate::hypervisor::HypervisorConfig,
    ) -> Result<Vec<u8>, PluginError> {
        match *self {}
    }
}

impl ShimPlugin for Unsupported {
    fn start(&self, _: &crate::shim::ShimParams) -> Result<i64, PluginError> {
        match *self {}
    }
}

impl ProxyPlugin for Unsupported {
    fn start(&self, _: &crate::proxy::ProxyParams) -> Result<(i64, String), PluginError> {
        match *self {}
    }
    fn stop(&self, _: i64) -> Result<(), PluginError> {
        match *self {}
    }
    fn console_watched(&self) -> bool {
        match *self {}
    }
}

fn unsupported<P: Plugin + ?Sized>(what: &str) -> PluginError {
    PluginError::unsupported(format!("plugin {:?} ({}) is not a {what} plugin", P::NAME, P::KIND))
}

/// The panic strategy this code was compiled with. Cargo compiles every crate of a plugin
/// library, this one included, with the profile's `panic` setting, so this is the plugin's.
fn panic_strategy() -> PanicStrategy {
    if cfg!(panic = "unwind") {
        PanicStrategy::UNWIND
    } else {
        PanicStrategy::ABORT
    }
}

extern "C" fn ffi_manifest<P: Plugin>() -> PluginManifest {
    PluginManifest {
        name: P::NAME.into(),
        kind: P::KIND,
        version: P::VERSION.into(),
        api_version: API_VERSION.into(),
        vendor: P::VENDOR.into(),
        panic_strategy: panic_strategy(),
    }
}

extern "C" fn ffi_init<P: Plugin>(host: HostContext) -> RResult<(), PluginError> {
    guard("init", || {
        install_forwarder(host, P::NAME);
        Ok(())
    })
}

extern "C" fn ffi_new_storage<P: Plugin>(c: RSlice<'_, u8>) -> RResult<MetadataStorageBox, PluginError> {
    guard("new_storage", || P::new_storage(&c).map(storage_into_ffi))
}

extern "C" fn ffi_new_hypervisor<P: Plugin>(c: RSlice<'_, u8>) -> RResult<HypervisorBox, PluginError> {
    guard("new_hypervisor", || P::new_hypervisor(&c).map(hypervisor_into_ffi))
}

extern "C" fn ffi_new_vm_factory<P: Plugin>(c: RSlice<'_, u8>) -> RResult<VmFactoryBox, PluginError> {
    guard("new_vm_factory", || P::new_vm_factory(&c).map(factory_into_ffi))
}

extern "C" fn ffi_new_shim<P: Plugin>(c: RSlice<'_, u8>) -> RResult<ShimBox, PluginError> {
    guard("new_shim", || P::new_shim(&c).map(shim_into_ffi))
}

extern "C" fn ffi_new_proxy<P: Plugin>(c: RSlice<'_, u8>) -> RResult<ProxyBox, PluginError> {
    guard("new_proxy", || P::new_proxy(&c).map(proxy_into_ffi))
}

/// Builds the root module of plugin `P`. Each call leaks one small table; the export and
/// static-registration macros call it once per process.
pub fn module_of<P: Plugin>() -> PluginModuleRef {
    PluginModule {
        manifest: ffi_manifest::<P>,
        init: ffi_init::<P>,
        new_storage: ffi_new_storage::<P>,
        new_hypervisor: ffi_new_hypervisor::<P>,
        new_vm_factory: ffi_new_vm_factory::<P>,
        new_shim: ffi_new_shim::<P>,
        new_proxy: ffi_new_proxy::<P>,
    }
    .leak_into_prefix()
}
