//! The LevelDB-family metadata storage plugin (`leveldb`), on RocksDB.
//!
//! RocksDB lets one process at a time open a database for writing, yet several runtime
//! processes share one store (a CLI call per operation, a shim per pod). So the database is
//! opened per operation, under a `flock` on a lock file beside it: exclusive for writes,
//! shared for reads, which open the database read-only and so run in parallel. A caller
//! waits for the lock instead of ever seeing RocksDB's lock error ([`store`]).
//!
//! Writes use a synced WAL. Values carry a CRC ([`value`]), so garbage in the database is
//! reported as corruption of the one key it hits.

pub mod store;
pub mod value;

pub use store::LevelDbStorage;

use plugin_api::{Plugin, PluginError, PluginKind};
use serde::Deserialize;
use std::path::PathBuf;

/// The plugin's config: `{"path": "/var/lib/sandbox-runtime/metadata.ldb"}`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct LevelDbConfig {
    /// The directory that holds the lock file and the database (created if missing).
    pub path: PathBuf,
}

/// The `leveldb` storage plugin.
pub struct LevelDbPlugin;

impl Plugin for LevelDbPlugin {
    const NAME: &'static str = "leveldb";
    const KIND: PluginKind = PluginKind::STORAGE;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const VENDOR: &'static str = "sandbox-runtime";

    fn new_storage(config: &[u8]) -> Result<impl plugin_api::storage::Storage, PluginError> {
        let config: LevelDbConfig = plugin_api::settings::parse("storage-leveldb config", config)?;
        LevelDbStorage::open(&config.path)
    }
}

plugin_api::register_static_plugin!(LevelDbPlugin);
