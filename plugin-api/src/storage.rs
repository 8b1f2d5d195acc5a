//! The metadata storage interface: `Save`, `Load` and `Delete` of the seed, plus listing the
//! keys under a prefix (which `ListSandboxes` needs) and, since 1.1, batches.
//!
//! Keys are UTF-8 strings of 1 to [`MAX_KEY_LEN`] bytes without NUL. Any other character,
//! `/`, `..` and leading `/` included, is part of the key: a plugin must store every valid
//! key safely (the file-system plugin encodes them) and give it back unchanged from
//! [`Storage::list`]. Values are opaque bytes of up to [`MAX_VALUE_LEN`] bytes; empty values
//! are valid and distinct from a missing key.

use crate::error::PluginError;
use crate::guard::guard;
use abi_stable::{
    sabi_trait,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 << 20;

/// Checks a key against the rules every storage plugin shares.
pub fn validate_key(key: &str) -> Result<(), PluginError> {
    if key.is_empty() {
        return Err(PluginError::invalid_input("key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(PluginError::invalid_input(format!(
            "key is {} bytes long, the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(PluginError::invalid_input(format!("key {key:?} contains a NUL byte")));
    }
    Ok(())
}

/// Checks a value's size.
pub fn validate_value(key: &str, value: &[u8]) -> Result<(), PluginError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(PluginError::invalid_input(format!(
            "value for key {key:?} is {} bytes, the limit is {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(())
}

/// One entry of a batch: save `value` under `key`, or delete `key` when `value` is `None`.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct BatchOp<'a> {
    /// The key.
    pub key: RStr<'a>,
    /// The value to save, or `None` to delete the key.
    pub value: ROption<RSlice<'a, u8>>,
}

/// The FFI-safe storage interface. Plugin authors implement [`Storage`] instead; hosts use
/// [`StorageHandle`].
#[sabi_trait]
pub trait MetadataStorage: Send + Sync {
    /// Saves `value` under `key`, replacing any previous value, durably.
    fn save(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), PluginError>;

    /// Loads the value under `key`; `None` if there is none.
    fn load(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError>;

    /// Deletes `key`; deleting a missing key succeeds.
    fn delete(&self, key: RStr<'_>) -> RResult<(), PluginError>;

    /// Lists the keys that start with `prefix` (all keys for an empty prefix), sorted.
    #[sabi(last_prefix_field)]
    fn list(&self, prefix: RStr<'_>) -> RResult<RVec<RString>, PluginError>;

    /// Applies several saves and deletes (added in 1.1). Plugins built against 1.0 lack this
    /// method; for them this default applies the entries one by one, so it is not atomic.
    fn save_batch(&self, ops: RSlice<'_, BatchOp<'_>>) -> RResult<(), PluginError> {
        for op in ops.iter() {
            let result = match op.value {
                ROption::RSome(value) => self.save(op.key, value),
                ROption::RNone => self.delete(op.key),
            };
            if let RResult::RErr(e) = result {
                return RResult::RErr(e);
            }
        }
        RResult::ROk(())
    }
}

/// An owned storage trait object, as plugins return it.
pub type MetadataStorageBox = MetadataStorage_TO<'static, RBox<()>>;

/// What a storage plugin author implements, in plain Rust types. Keys reaching these methods
/// have already passed [`validate_key`], and panics are caught by the adapter.
pub trait Storage: Send + Sync + 'static {
    /// See [`MetadataStorage::save`].
    fn save(&self, key: &str, value: &[u8]) -> Result<(), PluginError>;
    /// See [`MetadataStorage::load`].
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError>;
    /// See [`MetadataStorage::delete`].
    fn delete(&self, key: &str) -> Result<(), PluginError>;
    /// See [`MetadataStorage::list`].
    fn list(&self, prefix: &str) -> Result<Vec<String>, PluginError>;
    /// See [`MetadataStorage::save_batch`]. Override it to make batches atomic.
    fn save_batch(&self, ops: &[(&str, Option<&[u8]>)]) -> Result<(), PluginError> {
        for (key, value) in ops {
            match value {
                Some(value) => self.save(key, value)?,
                None => self.delete(key)?,
            }
        }
        Ok(())
    }
}

/// Wraps a [`Storage`] into the FFI trait object, validating keys and catching panics.
pub fn storage_into_ffi<S: Storage>(storage: S) -> MetadataStorageBox {
    MetadataStorage_TO::from_value(StorageAdapter(storage), abi_stable::sabi_trait::TD_Opaque)
}

struct StorageAdapter<S>(S);

impl<S: Storage> MetadataStorage for StorageAdapter<S> {
    fn save(&self, key: RStr<'_>, value: RSlice<'_, u8>) -> RResult<(), PluginError> {
        guard("save", || {
            validate_key(key.as_str())?;
            validate_value(key.as_str(), value.as_slice())?;
            self.0.save(key.as_str(), value.as_slice())
        })
    }

    fn load(&self, key: RStr<'_>) -> RResult<ROption<RVec<u8>>, PluginError> {
        guard("load", || {
            validate_key(key.as_str())?;
            Ok(self.0.load(key.as_str())?.map(RVec::from).into())
        })
    }

    fn delete(&self, key: RStr<'_>) -> RResult<(), PluginError> {
        guard("delete", || {
            validate_key(key.as_str())?;
            self.0.delete(key.as_str())
        })
    }

    fn list(&self, prefix: RStr<'_>) -> RResult<RVec<RString>, PluginError> {
        guard("list", || {
            let mut keys = self.0.list(prefix.as_str())?;
            keys.sort_unstable();
            Ok(keys.into_iter().map(RString::from).collect())
        })
    }

    fn save_batch(&self, ops: RSlice<'_, BatchOp<'_>>) -> RResult<(), PluginError> {
        guard("save_batch", || {
            let mut plain = Vec::with_capacity(ops.len());
            for op in ops.iter() {
                validate_key(op.key.as_str())?;
                let value = op.value.map(|v| v.as_slice()).into_option();
                if let Some(v) = value {
                    validate_value(op.key.as_str(), v)?;
                }
                plain.push((op.key.as_str(), value));
            }
            self.0.save_batch(&plain)
        })
    }
}

/// The host's view of a loaded storage plugin, in plain Rust types.
pub struct StorageHandle {
    inner: MetadataStorageBox,
    plugin: String,
}

impl StorageHandle {
    /// Wraps a storage trait object that came from the plugin named `plugin`.
    pub fn new(inner: MetadataStorageBox, plugin: impl Into<String>) -> Self {
        Self { inner, plugin: plugin.into() }
    }

    /// The name of the plugin behind this handle.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The raw trait object (for benchmarks of the ABI itself).
    pub fn raw(&self) -> &MetadataStorageBox {
        &self.inner
    }

    fn span(&self, op: &'static str) -> tracing::span::EnteredSpan {
        tracing::trace_span!("plugin", plugin = %self.plugin, op).entered()
    }

    /// Saves a record.
    pub fn save(&self, key: &str, value: &[u8]) -> Result<(), PluginError> {
        validate_key(key)?;
        validate_value(key, value)?;
        let _span = self.span("save");
        self.inner.save(key.into(), value.into()).into_result()
    }

    /// Loads a record.
    pub fn load(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        validate_key(key)?;
        let _span = self.span("load");
        Ok(self.inner.load(key.into()).into_result()?.into_option().map(RVec::into_vec))
    }

    /// Deletes a record.
    pub fn delete(&self, key: &str) -> Result<(), PluginError> {
        validate_key(key)?;
        let _span = self.span("delete");
        self.inner.delete(key.into()).into_result()
    }

    /// Lists the keys under a prefix, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, PluginError> {
        let _span = self.span("list");
        let keys = self.inner.list(prefix.into()).into_result()?;
        Ok(keys.into_iter().map(RString::into_string).collect())
    }

    /// Applies a batch of saves (`Some`) and deletes (`None`).
    pub fn save_batch(&self, ops: &[(&str, Option<&[u8]>)]) -> Result<(), PluginError> {
        let mut ffi = Vec::with_capacity(ops.len());
        for (key, value) in ops {
            validate_key(key)?;
            if let Some(v) = value {
                validate_value(key, v)?;
            }
            ffi.push(BatchOp { key: (*key).into(), value: value.map(RSlice::from).into() });
        }
        let _span = self.span("save_batch");
        self.inner.save_batch(ffi.as_slice().into()).into_result()
    }
}

impl std::fmt::Debug for StorageHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageHandle").field("plugin", &self.plugin).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn key_rules() {
        assert!(validate_key("sandbox/abc/config").is_ok());
        assert!(validate_key("../etc/passwd").is_ok(), "dots are data, stored safely");
        assert_eq!(validate_key("").unwrap_err().kind, ErrorKind::INVALID_INPUT);
        let nul = validate_key("a\0b").unwrap_err();
        assert!(nul.message.contains("NUL"), "{nul}");
        let long = "k".repeat(MAX_KEY_LEN + 1);
        assert!(validate_key(&long).unwrap_err().message.contains("limit is 1024"));
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
    }
}
