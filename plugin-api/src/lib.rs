//! The stable plugin ABI of the sandbox runtime.
//!
//! Five plugin kinds: [`storage::MetadataStorage`], [`hypervisor::Hypervisor`],
//! [`factory::VmFactory`], [`shim::Shim`] and [`proxy::Proxy`]. Only `abi_stable` types and
//! `#[repr(C)]` [`StableAbi`](abi_stable::StableAbi) structs cross the boundary; rich values
//! cross as versioned JSON ([`payload::Payload`]).
//!
//! A plugin author implements [`Plugin`] and the plain-Rust trait of its kind (for example
//! [`storage::Storage`]), then exports it:
//!
//! ```ignore
//! plugin_api::export_plugin!(MyPlugin);          // in the cdylib crate: the `.so`
//! plugin_api::register_static_plugin!(MyPlugin); // in the rlib: static linking
//! ```
//!
//! Every exported function catches panics and returns them as errors
//! ([`ErrorKind::PANICKED`]); logs reach the host through [`logging`].
//!
//! Compatibility: a plugin built against `plugin-api` 1.x loads in every core built against
//! 1.y (for y > x through the frozen layouts of [`v1_0`], [`v1_1`] and [`v1_2`]; see `docs/PLUGIN-VENDORS.md`). The
//! root module and the trait vtables are append-only prefix types.
#![deny(missing_docs)]
// The `#[sabi_trait]` and `StableAbi` macros of abi_stable 0.11 expand to impls inside consts.
#![allow(non_local_definitions)]

pub mod conformance;
pub mod endpoint;
pub mod error;
pub mod factory;
pub mod guard;
pub mod hypervisor;
pub mod ids;
pub mod logging;
pub mod manifest;
pub mod module;
pub mod payload;
pub mod proxy;
pub mod settings;
pub mod shim;
pub mod storage;
#[doc(hidden)]
pub mod v1_0;
#[doc(hidden)]
pub mod v1_1;
#[doc(hidden)]
pub mod v1_2;

pub use error::{ErrorKind, PluginError};
pub use manifest::{PanicStrategy, PluginKind, PluginManifest};
pub use module::{module_of, Plugin, PluginModule, PluginModuleRef, API_VERSION};

/// `serde_json`, for plugins to read their JSON config without another dependency.
pub use serde_json as json;

#[doc(hidden)]
pub use abi_stable;
#[doc(hidden)]
pub use inventory;

/// A plugin linked statically into the host, registered with [`register_static_plugin!`].
pub struct StaticPlugin {
    /// Builds the plugin's root module.
    pub module: fn() -> PluginModuleRef,
}

inventory::collect!(StaticPlugin);

/// Every plugin linked statically into this process.
pub fn static_plugins() -> impl Iterator<Item = &'static StaticPlugin> {
    inventory::iter::<StaticPlugin>.into_iter()
}

/// The symbol a plugin library exports its header under (abi_stable's root module loader
/// name, which [`export_plugin!`] writes literally).
pub const ROOT_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Exports plugin `$plugin` (a type implementing [`Plugin`]) as the root module of a
/// `cdylib`. Use it once per library, in a crate of its own.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static __SANDBOX_RUNTIME_PLUGIN_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(
                    $crate::module::module_of::<$plugin>,
                )
            }
            // SAFETY: the constructor returns the root module of type `PluginModuleRef`,
            // the type named here, and the layout is checked by the loader.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<
                    $crate::module::PluginModuleRef,
                >(erased_module, $crate::abi_stable::library::CheckTypeLayout::Yes)
            }
        };
    };
}

/// Registers plugin `$plugin` with the statically linked set, so a host that links the crate
/// finds it without loading a `.so`.
#[macro_export]
macro_rules! register_static_plugin {
    ($plugin:ty) => {
        $crate::inventory::submit! {
            $crate::StaticPlugin { module: $crate::module::module_of::<$plugin> }
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_symbol_matches_abi_stable() {
        assert_eq!(super::ROOT_SYMBOL, abi_stable::library::ROOT_MODULE_LOADER_NAME);
    }
}
