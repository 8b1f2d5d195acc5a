//! What a plugin says about itself.

use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// The kind of a plugin: which of the five interfaces it implements.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PluginKind(pub u8);

impl PluginKind {
    /// A [`MetadataStorage`](crate::storage::MetadataStorage) plugin.
    pub const STORAGE: Self = Self(1);
    /// A [`Hypervisor`](crate::hypervisor::Hypervisor) plugin.
    pub const HYPERVISOR: Self = Self(2);
    /// A [`VmFactory`](crate::factory::VmFactory) plugin.
    pub const VM_FACTORY: Self = Self(3);
    /// A [`Shim`](crate::shim::Shim) plugin.
    pub const SHIM: Self = Self(4);
    /// A [`Proxy`](crate::proxy::Proxy) plugin.
    pub const PROXY: Self = Self(5);

    /// Every kind this version of the API knows, in config-file order.
    pub const ALL: [Self; 5] =
        [Self::STORAGE, Self::HYPERVISOR, Self::VM_FACTORY, Self::SHIM, Self::PROXY];

    /// The name used in config files and messages (`storage`, `hypervisor`, `factory`,
    /// `shim`, `proxy`).
    pub fn name(self) -> &'static str {
        match self {
            Self::STORAGE => "storage",
            Self::HYPERVISOR => "hypervisor",
            Self::VM_FACTORY => "factory",
            Self::SHIM => "shim",
            Self::PROXY => "proxy",
            _ => "unknown",
        }
    }

    /// Parses a name as given by [`PluginKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Debug for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "unknown" => write!(f, "unknown({})", self.0),
            name => f.write_str(name),
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How the plugin was built to handle panics. The host refuses `ABORT`: a panic in such a
/// plugin would kill the host process instead of becoming an error.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct PanicStrategy(pub u8);

impl PanicStrategy {
    /// Built with `panic = "unwind"`: panics are caught at the boundary.
    pub const UNWIND: Self = Self(1);
    /// Built with `panic = "abort"`.
    pub const ABORT: Self = Self(2);
}

impl fmt::Display for PanicStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match *self {
            Self::UNWIND => "unwind",
            Self::ABORT => "abort",
            _ => "unknown",
        })
    }
}

/// A plugin's identity, read by the host before it uses the plugin.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginManifest {
    /// The name the config file selects the plugin by (unique per kind).
    pub name: RString,
    /// Which interface the plugin implements.
    pub kind: PluginKind,
    /// The plugin's own version.
    pub version: RString,
    /// The version of `plugin-api` the plugin was built against.
    pub api_version: RString,
    /// Who ships the plugin.
    pub vendor: RString,
    /// How the plugin was built to handle panics.
    pub panic_strategy: PanicStrategy,
}
