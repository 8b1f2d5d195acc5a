//! The plugins a runtime config selects, opened: discovery as `[plugins]` says, the storage
//! plugin of `[storage]`, the hypervisor plugin of `[hypervisor]`. A failure names the config
//! file and the table whose settings the plugin refused, then the plugin's own words.

use super::registry::{Registry, RegistryError};
use crate::config::RuntimeConfig;
use plugin_api::hypervisor::HypervisorHandle;
use plugin_api::storage::StorageHandle;
use std::path::PathBuf;
use thiserror::Error;

/// A plugin a config names could not be found or started.
#[derive(Debug, Error)]
#[error("config file {file}, table [{table}]")]
pub struct OpenError {
    /// The config file.
    pub file: PathBuf,
    /// The table: `plugins`, `storage`, `hypervisor` or `factory`.
    pub table: &'static str,
    /// What the registry or the plugin said (boxed: it is large, and errors travel far).
    #[source]
    pub source: Box<RegistryError>,
}

/// The plugins of a config, opened.
pub struct Opened {
    /// Every plugin found; keeps their libraries loaded (drop it last).
    pub registry: Registry,
    /// The `[storage]` plugin.
    pub storage: StorageHandle,
    /// The `[hypervisor]` plugin, where the config has that table.
    pub hypervisor: Option<HypervisorHandle>,
}

fn at<'a>(config: &'a RuntimeConfig, table: &'static str) -> impl FnOnce(RegistryError) -> OpenError + 'a {
    move |source| OpenError { file: config.file.clone(), table, source: Box::new(source) }
}

/// Discovers the plugins as `[plugins]` says.
pub fn discover(config: &RuntimeConfig) -> Result<Registry, OpenError> {
    Registry::discover(&config.plugins.dirs, config.plugins.include_static).map_err(at(config, "plugins"))
}

/// Discovers the plugins and opens the storage plugin and, with `hypervisor`, the hypervisor
/// plugin (where the config has one).
pub fn open(config: &RuntimeConfig, hypervisor: bool) -> Result<Opened, OpenError> {
    let registry = discover(config)?;
    // The hypervisor first: a refused [hypervisor] table leaves no store directory behind.
    let hypervisor = match (&config.hypervisor, hypervisor) {
        (Some(section), true) => {
            Some(registry.open_hypervisor(&section.plugin, &section.settings_json()).map_err(at(config, "hypervisor"))?)
        }
        _ => None,
    };
    // The factory starts at the first VM; its plugins and their settings are checked now (and
    // before the store is opened), so a bad [factory] table fails every command as a bad
    // [hypervisor] does.
    if hypervisor.is_some() {
        crate::factory::check(config, &registry).map_err(at(config, "factory"))?;
    }
    let storage = registry.open_storage(&config.storage.plugin, &config.storage.settings_json()).map_err(at(config, "storage"))?;
    Ok(Opened { registry, storage, hypervisor })
}
