//! `jsonfile`: an example third-party storage plugin that keeps every record in one JSON
//! file, rewritten atomically (temporary file, fsync, rename) on each change. Meant for one
//! process at a time; the built-in `fs` and `leveldb` plugins are the multi-process ones.
//!
//! Build: `cargo build --release` here. Check: `sandboxctl conformance
//! target/release/libvendor_storage.so`. Install: copy the `.so` into a plugin directory.

use plugin_api::json::{json, Map, Value};
use plugin_api::storage::Storage;
use plugin_api::{Plugin, PluginError, PluginKind};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

struct JsonFile {
    path: PathBuf,
    records: Mutex<BTreeMap<String, Vec<u8>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl JsonFile {
    fn open(dir: PathBuf) -> Result<Self, PluginError> {
        std::fs::create_dir_all(&dir).map_err(|e| PluginError::io(format!("creating {}", dir.display()), &e))?;
        let path = dir.join("records.json");
        let mut records = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |why: &str| PluginError::corrupt(format!("{}: {why}", path.display()));
                let value: Value = plugin_api::json::from_slice(&bytes).map_err(|e| corrupt(&e.to_string()))?;
                let object = value.as_object().ok_or_else(|| corrupt("not a JSON object"))?;
                for (key, v) in object {
                    let bytes = v.as_str().and_then(unhex).ok_or_else(|| corrupt("a value is not hex"))?;
                    records.insert(key.clone(), bytes);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PluginError::io(format!("reading {}", path.display()), &e)),
        }
        Ok(Self { path, records: Mutex::new(records) })
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<String, Vec<u8>>)) -> Result<(), PluginError> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = records.clone();
        change(&mut next);
        let object: Map<String, Value> = next.iter().map(|(k, v)| (k.clone(), json!(hex(v)))).collect();
        let tmp = self.path.with_extension("json.tmp");
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(Value::Object(object).to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        written.map_err(|e| PluginError::io(format!("writing {}", self.path.display()), &e))?;
        *records = next;
        Ok(())
    }
}

impl Storage for JsonFile {
    fn save(&self, key: &str, value: &[u8]) -> Result<(), PluginError> {
        self.update(|r| {
            r.insert(key.to_owned(), value.to_vec());
        })
    }
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(self.records.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned())
    }
    fn delete(&self, key: &str) -> Result<(), PluginError> {
        self.update(|r| {
            r.remove(key);
        })
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, PluginError> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        Ok(records.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }
    /// One rewrite of the file for the whole batch, so a batch is atomic.
    fn save_batch(&self, ops: &[(&str, Option<&[u8]>)]) -> Result<(), PluginError> {
        self.update(|r| {
            for (key, value) in ops {
                match value {
                    Some(v) => r.insert((*key).to_owned(), v.to_vec()),
                    None => r.remove(*key),
                };
            }
        })
    }
}

/// The plugin: its identity and its constructor.
pub struct JsonFilePlugin;

impl Plugin for JsonFilePlugin {
    const NAME: &'static str = "jsonfile";
    const KIND: PluginKind = PluginKind::STORAGE;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const VENDOR: &'static str = "Example Vendor Ltd.";

    /// Config: `{"path": "<directory>"}`.
    fn new_storage(config: &[u8]) -> Result<impl Storage, PluginError> {
        let config: Value = plugin_api::json::from_slice(config)
            .map_err(|e| PluginError::invalid_input(format!("jsonfile config: {e}")))?;
        let dir = config
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| PluginError::invalid_input("jsonfile config: key `path` (a string) is required"))?;
        JsonFile::open(PathBuf::from(dir))
    }
}

plugin_api::export_plugin!(JsonFilePlugin);
