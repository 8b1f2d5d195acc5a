//! Loads one plugin library: trust and ELF checks, `dlopen`, the ABI check, the manifest
//! checks and the plugin's `init`. Each canonical path is loaded once per process.

use super::elf::{check_plugin_library, ElfError};
use super::host_log::host_context;
use super::trust::{check_not_writable_by_others, TrustError};
use abi_stable::library::{lib_header_from_path, LibHeader, LibraryError, RootModule};
use plugin_api::{PanicStrategy, PluginError, PluginModuleRef, API_VERSION, ROOT_SYMBOL};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use thiserror::Error;

/// Why a plugin library was refused. Each message names the file; the reason is the source.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The path does not resolve.
    #[error("cannot resolve plugin path {path}")]
    Resolve {
        /// The path as given.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file or its directory could be written by other users.
    #[error("refused plugin {path}")]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// What is wrong with its permissions.
        #[source]
        source: TrustError,
    },
    /// Not a complete shared object exporting a plugin root module.
    #[error("refused plugin {path}")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ElfError,
    },
    /// `dlopen` or the symbol lookup failed.
    #[error("refused plugin {path}: the dynamic loader failed: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// Built against an incompatible plugin-api.
    #[error(
        "refused plugin {path}: built against plugin-api {plugin_api}, incompatible with this \
         core's {core_api}: {summary} (layout report at debug level)"
    )]
    IncompatibleApi {
        /// The file.
        path: PathBuf,
        /// The plugin-api version the plugin was built against.
        plugin_api: String,
        /// This core's plugin-api version.
        core_api: &'static str,
        /// One line of what differs.
        summary: String,
    },
    /// Built with `panic = "abort"`.
    #[error(
        "refused plugin {path} ({name}): it was built with panic=abort, so a panic in it would \
         kill this process; rebuild it with panic=\"unwind\""
    )]
    PanicAbort {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
    },
    /// The manifest is unusable.
    #[error("refused plugin {path}: {reason}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The plugin's `init` failed.
    #[error("refused plugin {path} ({name}): its init failed")]
    Init {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The plugin's error.
        #[source]
        source: PluginError,
    },
}

/// Modules already loaded, by canonical path.
static LOADED: Mutex<Option<HashMap<PathBuf, PluginModuleRef>>> = Mutex::new(None);

/// Loads the plugin library at `path` (once per canonical path) and returns its canonical
/// path and root module.
pub fn load_library(path: &Path) -> Result<(PathBuf, PluginModuleRef), LoadError> {
    let canonical = std::fs::canonicalize(path)
        .map_err(|source| LoadError::Resolve { path: path.to_owned(), source })?;
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    let loaded = loaded.get_or_insert_with(HashMap::new);
    if let Some(module) = loaded.get(&canonical) {
        return Ok((canonical, *module));
    }
    let module = load_new(&canonical)?;
    loaded.insert(canonical.clone(), module);
    Ok((canonical, module))
}

fn load_new(path: &Path) -> Result<PluginModuleRef, LoadError> {
    let untrusted = |source| LoadError::Untrusted { path: path.to_owned(), source };
    check_not_writable_by_others(path).map_err(untrusted)?;
    if let Some(dir) = path.parent() {
        check_not_writable_by_others(dir).map_err(untrusted)?;
    }
    check_plugin_library(path, ROOT_SYMBOL)
        .map_err(|source| LoadError::NotAPlugin { path: path.to_owned(), source })?;

    tracing::debug!(path = %path.display(), "opening plugin library");
    let header = lib_header_from_path(path).map_err(|e| open_error(path, e))?;
    let plugin_api = header.version_strings().version.to_string();
    let module = init_root_module(header, &plugin_api).map_err(|e| match e {
        LibraryError::IncompatibleVersionNumber { .. } | LibraryError::AbiInstability(_) => {
            let report = e.to_string();
            tracing::debug!(path = %path.display(), %report, "plugin ABI mismatch");
            LoadError::IncompatibleApi {
                path: path.to_owned(),
                plugin_api: plugin_api.clone(),
                core_api: API_VERSION,
                summary: summarize_layout_report(&report),
            }
        }
        other => open_error(path, other),
    })?;

    let manifest = (module.manifest())();
    let name = manifest.name.to_string();
    if manifest.panic_strategy != PanicStrategy::UNWIND {
        return Err(LoadError::PanicAbort { path: path.to_owned(), name });
    }
    if name.is_empty() || manifest.kind.name() == "unknown" {
        return Err(LoadError::Manifest {
            path: path.to_owned(),
            reason: format!("its manifest names no plugin or an unknown kind ({:?})", manifest.kind),
        });
    }
    (module.init())(host_context())
        .into_result()
        .map_err(|source| LoadError::Init { path: path.to_owned(), name, source })?;
    Ok(module)
}

/// Checks the library's layout and returns its root module. A plugin built against 1.0, 1.1
/// or 1.2 is checked against that version's frozen layouts ([`plugin_api::v1_0`],
/// [`plugin_api::v1_1`], [`plugin_api::v1_2`]), which the current ones extend; every other 1.x
/// against the current ones.
fn init_root_module(header: &LibHeader, plugin_api: &str) -> Result<PluginModuleRef, LibraryError> {
    if plugin_api.starts_with("1.0.") {
        header.ensure_layout::<plugin_api::v1_0::PluginModuleRef>()?;
    } else if plugin_api.starts_with("1.1.") {
        header.ensure_layout::<plugin_api::v1_1::PluginModuleRef>()?;
    } else if plugin_api.starts_with("1.2.") {
        header.ensure_layout::<plugin_api::v1_2::PluginModuleRef>()?;
    } else {
        return header.init_root_module::<PluginModuleRef>();
    }
    // SAFETY: the library's root module has the layout of its 1.x (just checked), of which the
    // current layout is an append-only extension (checked by plugin-api's v1_0, v1_1 and
    // v1_2 tests); fields the library lacks are reported missing by the prefix metadata at run time.
    unsafe { header.init_root_module_with_unchecked_layout::<PluginModuleRef>() }
}

fn open_error(path: &Path, e: LibraryError) -> LoadError {
    LoadError::Open { path: path.to_owned(), message: first_line(&e.to_string()) }
}

fn first_line(s: &str) -> String {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_owned()
}

/// Reduces abi_stable's multi-line layout report to its first line that names a problem.
fn summarize_layout_report(report: &str) -> String {
    let line = report
        .lines()
        .map(str::trim)
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("mismatch") || l.contains("incompatible") || l.contains("expected")
        })
        .map(str::to_owned)
        .unwrap_or_else(|| first_line(report));
    let mut line: String = line.chars().take(200).collect();
    if line.len() < report.len() && !line.ends_with('.') {
        line.push_str(" ...");
    }
    line
}

/// The name the root module type has in abi_stable's reports.
pub fn root_module_name() -> &'static str {
    PluginModuleRef::NAME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_one_bounded_line() {
        let report = "\n\nError:\n  Type mismatch: field `new_storage` expected fn(..) found fn(..) and more text \
                      that goes on and on and on and on and on and on and on and on and on and on and \
                      on and on and on and on and on and on and on and on and on\n  more\n";
        let s = summarize_layout_report(report);
        assert!(s.starts_with("Type mismatch: field `new_storage`"), "{s}");
        assert!(!s.contains('\n') && s.len() <= 210, "{s}");
    }
}
