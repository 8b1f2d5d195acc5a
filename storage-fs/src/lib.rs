//! The filesystem metadata storage plugin (`fs`).
//!
//! Each record is one file under the configured directory, named by an injective encoding of
//! its key ([`keyname`]) and holding the key, the value and a CRC ([`record`]). Writes go to a
//! temporary file that is fsynced, renamed over the record and followed by an fsync of the
//! directory, so a crash leaves either the old or the new record. Several processes may use
//! one directory at once ([`store`] explains the locking).

pub mod keyname;
pub mod record;
pub mod store;

pub use store::FsStorage;

use plugin_api::{Plugin, PluginError, PluginKind};
use serde::Deserialize;
use std::path::PathBuf;

/// The plugin's config: `{"path": "/var/lib/sandbox-runtime/metadata"}`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The directory that holds the records (created if missing).
    pub path: PathBuf,
}

/// The `fs` storage plugin.
pub struct FsPlugin;

impl Plugin for FsPlugin {
    const NAME: &'static str = "fs";
    const KIND: PluginKind = PluginKind::STORAGE;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const VENDOR: &'static str = "sandbox-runtime";

    fn new_storage(config: &[u8]) -> Result<impl plugin_api::storage::Storage, PluginError> {
        let config: FsConfig = plugin_api::settings::parse("storage-fs config", config)?;
        FsStorage::open(&config.path)
    }
}

plugin_api::register_static_plugin!(FsPlugin);
