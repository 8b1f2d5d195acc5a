//! What is persisted per sandbox, through the configured MetadataStorage plugin: one record
//! under `sandbox/<id>` holding the config, the states, the hypervisor's state blob, the agent
//! endpoint and the process tokens. One key per sandbox makes each update atomic.

use super::config::{ProcessConfig, SandboxConfig};
use super::state::{ContainerState, SandboxState};
use plugin_api::hypervisor::HypervisorConfig;
use plugin_api::storage::StorageHandle;
use plugin_api::PluginError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The record's schema version. A record with a newer one is refused, not misread.
pub const SCHEMA: u32 = 1;
/// The key prefix of sandbox records.
pub const PREFIX: &str = "sandbox/";

/// The persisted state of one sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// [`SCHEMA`] when written.
    pub schema: u32,
    /// The sandbox's config; `containers` follows CreateContainer and DeleteContainer.
    pub config: SandboxConfig,
    /// Its state.
    pub state: SandboxState,
    /// The VM.
    pub vm: VmRecord,
    /// Container states by id.
    pub containers: BTreeMap<String, ContainerRecord>,
    /// Milliseconds since the epoch when it was created.
    pub created_ms: u64,
    /// The state to go back to when the sandbox is resumed.
    #[serde(default)]
    pub paused_from: Option<SandboxState>,
    /// The number of the next process token.
    #[serde(default)]
    pub next_process: u64,
}

/// The VM behind a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    /// The hypervisor plugin's name.
    pub plugin: String,
    /// What the VM was created with.
    pub config: HypervisorConfig,
    /// The plugin's state blob, hex-encoded.
    pub blob: String,
    /// Where the agent answers (the plugin's endpoint list), once the VM started.
    pub agent_endpoint: String,
    /// How many times the VM was booted: agent connections to an earlier boot are stale.
    #[serde(default)]
    pub boot: u64,
}

/// A container's persisted state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// Its state when last seen.
    pub state: ContainerState,
    /// Its first process's exit status, once it exited.
    pub exit_status: Option<i32>,
    /// Processes entered into it, by token.
    pub processes: BTreeMap<String, ProcessRecord>,
    /// Paused by the sandbox's pause (not by PauseContainer): the sandbox's resume runs it
    /// again.
    #[serde(default)]
    pub paused_by_sandbox: bool,
}

impl ContainerRecord {
    /// A container just created.
    pub fn ready() -> Self {
        Self { state: ContainerState::Ready, exit_status: None, processes: BTreeMap::new(), paused_by_sandbox: false }
    }
}

/// A process entered into a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What runs.
    pub config: ProcessConfig,
    /// Its exit status, once seen.
    pub exit_status: Option<i32>,
}

impl VmRecord {
    /// The state blob, decoded.
    pub fn blob(&self) -> Result<Vec<u8>, StoreError> {
        hex_decode(&self.blob).ok_or_else(|| StoreError::Corrupt { key: String::new(), reason: "vm.blob is not hex".into() })
    }

    /// Stores a new state blob.
    pub fn set_blob(&mut self, blob: &[u8]) {
        self.blob = hex_encode(blob);
    }
}

/// Why the metadata store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage plugin failed.
    #[error("metadata storage ({plugin}) failed on {key}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// The key.
        key: String,
        /// Its error.
        #[source]
        source: PluginError,
    },
    /// A record does not parse.
    #[error("sandbox record {key} is corrupt: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A record was written by a newer runtime.
    #[error("sandbox record {key} has schema {found}; this runtime reads up to {SCHEMA}")]
    Schema {
        /// The key.
        key: String,
        /// Its schema.
        found: u32,
    },
}

/// The sandbox records in a storage plugin.
#[derive(Clone)]
pub struct Store {
    storage: Arc<StorageHandle>,
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

impl Store {
    /// Records in `storage`.
    pub fn new(storage: Arc<StorageHandle>) -> Self {
        Self { storage }
    }

    fn plugin_error(&self, key: &str) -> impl FnOnce(PluginError) -> StoreError + '_ {
        let key = key.to_owned();
        move |source| StoreError::Plugin { plugin: self.storage.plugin().to_owned(), key, source }
    }

    /// Loads sandbox `id`'s record; `None` if there is none.
    pub fn load(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let key = key(id);
        let Some(bytes) = self.storage.load(&key).map_err(self.plugin_error(&key))? else {
            return Ok(None);
        };
        decode(&key, &bytes).map(Some)
    }

    /// Saves a record.
    pub fn save(&self, record: &SandboxRecord) -> Result<(), StoreError> {
        let key = key(&record.config.id);
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt { key: key.clone(), reason: e.to_string() })?;
        self.storage.save(&key, &bytes).map_err(self.plugin_error(&key))
    }

    /// Deletes sandbox `id`'s record.
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let key = key(id);
        self.storage.delete(&key).map_err(self.plugin_error(&key))
    }

    /// The ids of every sandbox recorded, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StoreError> {
        let keys = self.storage.list(PREFIX).map_err(self.plugin_error(PREFIX))?;
        Ok(keys.into_iter().filter_map(|k| k.strip_prefix(PREFIX).map(str::to_owned)).collect())
    }
}

/// Parses a record and checks its schema.
pub fn decode(key: &str, bytes: &[u8]) -> Result<SandboxRecord, StoreError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.into(), reason: e.to_string() })?;
    let schema = value.get("schema").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if schema > u64::from(SCHEMA) {
        return Err(StoreError::Schema { key: key.into(), found: u32::try_from(schema).unwrap_or(u32::MAX) });
    }
    if schema == 0 {
        return Err(StoreError::Corrupt { key: key.into(), reason: "no schema version".into() });
    }
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt { key: key.into(), reason: e.to_string() })
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_decode(&hex_encode(b"\x00\xffvm")), Some(b"\x00\xffvm".to_vec()));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn schema_is_checked() {
        let e = decode("sandbox/x", br#"{"schema": 9}"#).unwrap_err();
        assert_eq!(e.to_string(), "sandbox record sandbox/x has schema 9; this runtime reads up to 1");
        let e = decode("sandbox/x", br#"{"config": {}}"#).unwrap_err();
        assert!(e.to_string().contains("no schema version"), "{e}");
        let e = decode("sandbox/x", b"not json").unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        let e = decode("sandbox/x", br#"{"schema": 1, "config": {"id": "x"}}"#).unwrap_err();
        assert!(e.to_string().contains("missing field"), "{e}");
    }
}
