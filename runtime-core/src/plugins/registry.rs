//! The plugin registry: discovery in the configured directories and the statically linked
//! set, one plugin per kind and name, and selection by name.

use super::loader::{load_library, LoadError};
use super::trust::{check_not_writable_by_others, TrustError};
use plugin_api::factory::VmFactoryHandle;
use plugin_api::hypervisor::HypervisorHandle;
use plugin_api::storage::StorageHandle;
use plugin_api::{PluginError, PluginKind, PluginModuleRef};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Linked into this binary.
    Static,
    /// Loaded from a library file (canonical path).
    Library(PathBuf),
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static => f.write_str("statically linked"),
            Self::Library(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A loaded plugin's identity.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// Its name, unique per kind.
    pub name: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Its own version.
    pub version: String,
    /// The plugin-api version it was built against.
    pub api_version: String,
    /// Who ships it.
    pub vendor: String,
    /// Where it came from.
    pub source: PluginSource,
}

/// A file (or directory) that discovery refused, and why, in one line.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The file or directory.
    pub path: PathBuf,
    /// The whole error chain on one line.
    pub reason: String,
}

/// Registry errors.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// A configured plugin directory cannot be read.
    #[error("cannot read plugin directory {path}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A configured plugin directory could be written by other users.
    #[error("refused plugin directory {path}")]
    UntrustedDirectory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: TrustError,
    },
    /// A plugin library was refused.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Two plugins claim the same kind and name.
    #[error("refused {second}: it is {kind} plugin {name:?}, which {first} already provides")]
    Duplicate {
        /// The kind.
        kind: PluginKind,
        /// The name.
        name: String,
        /// The source registered first.
        first: PluginSource,
        /// The source refused.
        second: PluginSource,
    },
    /// The config names a plugin nobody provides.
    #[error("no {kind} plugin named {name:?}; available: {available}{refused}")]
    Unknown {
        /// The kind.
        kind: PluginKind,
        /// The name asked for.
        name: String,
        /// The names there are, comma-separated, or "none".
        available: String,
        /// The libraries discovery refused (`; refused: PATH: REASON`), where there were some:
        /// the one asked for may be among them.
        refused: String,
    },
    /// The plugin failed to create an instance.
    #[error("{kind} plugin {name:?} failed to start")]
    Instance {
        /// The kind.
        kind: PluginKind,
        /// The name.
        name: String,
        /// The plugin's error.
        #[source]
        source: PluginError,
    },
}

/// Formats an error and its sources on one line: `outer: inner: innermost` (each cause once).
pub use error_report::chain as error_chain;

struct Entry {
    info: PluginInfo,
    module: PluginModuleRef,
}

/// The plugins available to this process.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
    refused: Vec<Refused>,
}

/// Whether a directory entry looks like a plugin library (`*.so` or `*.so.N`).
fn is_library_name(name: &str) -> bool {
    name.ends_with(".so") || name.contains(".so.")
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Discovers the statically linked plugins (if `include_static`) and then every library
    /// in `dirs`, in order, files sorted by name. A refused file is recorded in
    /// [`Registry::refused`] (and logged) and discovery goes on; a directory that cannot be
    /// read or that others can write is an error.
    pub fn discover(dirs: &[PathBuf], include_static: bool) -> Result<Self, RegistryError> {
        let mut registry = Self::new();
        if include_static {
            registry.add_static();
        }
        for dir in dirs {
            registry.add_dir(dir)?;
        }
        Ok(registry)
    }

    /// Registers every plugin linked into this binary.
    pub fn add_static(&mut self) {
        for plugin in plugin_api::static_plugins() {
            let module = (plugin.module)();
            if let Err(e) = self.register(module, PluginSource::Static) {
                self.refuse(PathBuf::from("<static>"), &e);
            }
        }
    }

    /// Loads every plugin library in `dir`.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), RegistryError> {
        let dir_error = |source| RegistryError::Directory { path: dir.to_owned(), source };
        let canonical = std::fs::canonicalize(dir).map_err(dir_error)?;
        check_not_writable_by_others(&canonical)
            .map_err(|source| RegistryError::UntrustedDirectory { path: dir.to_owned(), source })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&canonical)
            .map_err(dir_error)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if !is_library_name(&name) || file.is_dir() {
                tracing::debug!(file = %file.display(), "ignoring: not named like a plugin library (*.so)");
                continue;
            }
            if let Err(e) = self.add_library(&file) {
                self.refuse(file, &e);
            }
        }
        Ok(())
    }

    /// Loads one plugin library and registers it.
    pub fn add_library(&mut self, path: &Path) -> Result<&PluginInfo, RegistryError> {
        let (canonical, module) = load_library(path)?;
        self.register(module, PluginSource::Library(canonical))
    }

    fn refuse(&mut self, path: PathBuf, e: &RegistryError) {
        let reason = error_chain(e);
        // Not a warning: `sandboxctl plugins` lists the refused, and an unknown plugin's
        // error names them, so the fact is told once, where it matters.
        tracing::info!("{reason}");
        self.refused.push(Refused { path, reason });
    }

    fn register(&mut self, module: PluginModuleRef, source: PluginSource) -> Result<&PluginInfo, RegistryError> {
        let m = (module.manifest())();
        let info = PluginInfo {
            name: m.name.into_string(),
            kind: m.kind,
            version: m.version.into_string(),
            api_version: m.api_version.into_string(),
            vendor: m.vendor.into_string(),
            source,
        };
        if let Some(i) = self.entries.iter().position(|e| e.info.kind == info.kind && e.info.name == info.name) {
            let first = &self.entries[i].info;
            if first.source == info.source {
                return Ok(&self.entries[i].info); // the same library, loaded again
            }
            return Err(RegistryError::Duplicate {
                kind: info.kind,
                name: info.name,
                first: first.source.clone(),
                second: info.source,
            });
        }
        tracing::debug!(kind = %info.kind, name = %info.name, source = %info.source, "plugin registered");
        self.entries.push(Entry { info, module });
        Ok(&self.entries.last().expect("just pushed").info)
    }

    /// The plugins registered, in discovery order.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginInfo> {
        self.entries.iter().map(|e| &e.info)
    }

    /// What discovery refused.
    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    fn find(&self, kind: PluginKind, name: &str) -> Result<&Entry, RegistryError> {
        self.entries.iter().find(|e| e.info.kind == kind && e.info.name == name).ok_or_else(|| {
            let names: Vec<&str> =
                self.entries.iter().filter(|e| e.info.kind == kind).map(|e| e.info.name.as_str()).collect();
            RegistryError::Unknown {
                kind,
                name: name.to_owned(),
                available: if names.is_empty() { "none".to_owned() } else { names.join(", ") },
                refused: self.refused.iter().map(|r| format!("; refused: {}", r.reason)).collect(),
            }
        })
    }

    /// Creates an instance of storage plugin `name` with its JSON config.
    pub fn open_storage(&self, name: &str, config: &serde_json::Value) -> Result<StorageHandle, RegistryError> {
        let entry = self.find(PluginKind::STORAGE, name)?;
        let bytes = serde_json::to_vec(config).unwrap_or_default();
        let storage = (entry.module.new_storage())(bytes.as_slice().into()).into_result().map_err(|source| {
            RegistryError::Instance { kind: PluginKind::STORAGE, name: name.to_owned(), source }
        })?;
        Ok(StorageHandle::new(storage, name))
    }

    /// Creates an instance of hypervisor plugin `name` with its JSON config.
    pub fn open_hypervisor(&self, name: &str, config: &serde_json::Value) -> Result<HypervisorHandle, RegistryError> {
        let entry = self.find(PluginKind::HYPERVISOR, name)?;
        let bytes = serde_json::to_vec(config).unwrap_or_default();
        let hypervisor = (entry.module.new_hypervisor())(bytes.as_slice().into()).into_result().map_err(|source| {
            RegistryError::Instance { kind: PluginKind::HYPERVISOR, name: name.to_owned(), source }
        })?;
        Ok(HypervisorHandle::new(hypervisor, name))
    }

    /// Creates an instance of VM factory plugin `name` with its JSON config.
    pub fn open_vm_factory(&self, name: &str, config: &serde_json::Value) -> Result<VmFactoryHandle, RegistryError> {
        let entry = self.find(PluginKind::VM_FACTORY, name)?;
        let bytes = serde_json::to_vec(config).unwrap_or_default();
        let factory = (entry.module.new_vm_factory())(bytes.as_slice().into()).into_result().map_err(|source| {
            RegistryError::Instance { kind: PluginKind::VM_FACTORY, name: name.to_owned(), source }
        })?;
        Ok(VmFactoryHandle::new(factory, name))
    }
}
