//! The runtime context every sandbox of a [`Runtime`](super::Runtime) shares: its config, the
//! metadata store, the hypervisor plugin, and the steps on them that every operation takes
//! (lock and load, save, ask the plugin about a VM). It knows no handle and no operation.

use super::config::validate_id;
use super::lock::SandboxLock;
use super::record::{SandboxRecord, Store};
use super::{blocking, SandboxError};
use crate::config::{HypervisorSection, RuntimeConfig};
use crate::factory::Factory;
use crate::plugins::{self, Registry};
use plugin_api::hypervisor::HypervisorHandle;
use std::path::PathBuf;
use std::sync::Arc;

/// What every sandbox of a runtime shares.
pub(crate) struct RuntimeContext {
    pub config: RuntimeConfig,
    pub store: Store,
    pub hypervisor: Option<(Arc<HypervisorHandle>, HypervisorSection)>,
    /// The VM factory, opened at the first VM this runtime makes (so that commands that make
    /// none start no pool); closed when the context is dropped.
    factory: std::sync::Mutex<Option<Arc<Factory>>>,
    /// Keeps the plugin libraries loaded; dropped last.
    registry: Registry,
}

impl RuntimeContext {
    /// Discovers the plugins and opens the storage and (if configured) the hypervisor.
    pub fn open(config: RuntimeConfig) -> Result<RuntimeContext, SandboxError> {
        let plugins::Opened { registry, storage, hypervisor } = plugins::open(&config, true)?;
        let hypervisor = hypervisor.zip(config.hypervisor.clone()).map(|(handle, section)| (Arc::new(handle), section));
        let store = Store::new(Arc::new(storage));
        Ok(RuntimeContext { config, store, hypervisor, factory: Default::default(), registry })
    }

    /// The VM factory, opened (and started) at the first call.
    pub async fn factory(self: &Arc<Self>) -> Result<Arc<Factory>, SandboxError> {
        if let Some(f) = self.factory.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(f.clone());
        }
        let (hv, _) = self.hypervisor()?;
        let (hv, ctx) = (hv.clone(), self.clone());
        blocking(move || {
            let mut slot = ctx.factory.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = slot.as_ref() {
                return Ok(f.clone());
            }
            let factory = Arc::new(Factory::open(&ctx.config, &ctx.registry, &hv)?);
            *slot = Some(factory.clone());
            Ok(factory)
        })
        .await?
    }

    /// The plugins found.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The hypervisor plugin and its config section.
    pub fn hypervisor(&self) -> Result<(&Arc<HypervisorHandle>, &HypervisorSection), SandboxError> {
        self.hypervisor.as_ref().map(|(h, s)| (h, s)).ok_or(SandboxError::NoHypervisor)
    }

    /// `<state_dir>/sandboxes/<id>`: the console log and the agent channel claims.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.runtime.state_dir.join("sandboxes").join(id)
    }

    /// Takes sandbox `id`'s lock and loads its record. With `must_exist`, a missing record is
    /// [`SandboxError::NotFound`] (and the lock file just made is removed).
    /// A malformed id (`../x`) is refused before any file is touched.
    pub async fn lock(&self, id: &str, must_exist: bool) -> Result<(SandboxLock, Option<SandboxRecord>), SandboxError> {
        validate_id("sandbox id", id)?;
        let state_dir = self.config.runtime.state_dir.clone();
        let store = self.store.clone();
        let owned = id.to_owned();
        let (lock, record) = blocking(move || -> Result<_, SandboxError> {
            let lock = SandboxLock::acquire(&state_dir, &owned)?;
            let record = store.load(&owned)?;
            Ok((lock, record))
        })
        .await??;
        if must_exist && record.is_none() {
            lock.remove_file();
            return Err(SandboxError::NotFound { id: id.to_owned() });
        }
        Ok((lock, record))
    }

    /// Saves a record (off the async threads).
    pub async fn save(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        let store = self.store.clone();
        let record = record.clone();
        blocking(move || store.save(&record)).await??;
        Ok(())
    }

    /// What the hypervisor plugin says of the record's VM (`none` before it was created; the
    /// plugin's error as `unknown (...)`).
    pub async fn vm_status(&self, record: &SandboxRecord) -> String {
        match (self.hypervisor(), record.vm.blob()) {
            (Ok((hv, _)), Ok(blob)) if !blob.is_empty() => {
                let hv = hv.clone();
                match blocking(move || hv.vm_status(&blob)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => format!("unknown ({e})"),
                    Err(e) => format!("unknown ({e})"),
                }
            }
            (Err(e), _) => format!("unknown ({e})"),
            _ => "none".into(),
        }
    }
}
