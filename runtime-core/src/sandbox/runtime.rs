//! The Sandbox Management API of the seed, on a [`Runtime`]: the plugins and settings one
//! config file selects.

use super::lock::SandboxLock;
use super::record::{SandboxRecord, Store};
use super::handle::Sandbox;
use super::status::SandboxStatus;
use super::{blocking, SandboxConfig, SandboxError};
use crate::config::{HypervisorSection, RuntimeConfig};
use crate::plugins::Registry;
use plugin_api::hypervisor::HypervisorHandle;
use plugin_api::storage::StorageHandle;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What every sandbox of a runtime shares.
pub(crate) struct Inner {
    pub config: RuntimeConfig,
    pub store: Store,
    pub hypervisor: Option<(Arc<HypervisorHandle>, HypervisorSection)>,
    /// Keeps the plugin libraries loaded; dropped last.
    _registry: Registry,
}

/// The runtime: entry point of the Sandbox Management API. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("state_dir", &self.inner.config.runtime.state_dir).finish()
    }
}

impl Inner {
    pub fn hypervisor(&self) -> Result<(&Arc<HypervisorHandle>, &HypervisorSection), SandboxError> {
        self.hypervisor.as_ref().map(|(h, s)| (h, s)).ok_or(SandboxError::NoHypervisor)
    }

    /// `<state_dir>/sandboxes/<id>`: the console log and the agent channel claims.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.runtime.state_dir.join("sandboxes").join(id)
    }

    /// Takes sandbox `id`'s lock and loads its record. With `must_exist`, a missing record is
    /// [`SandboxError::NotFound`] (and the lock file just made is removed).
    pub async fn lock(&self, id: &str, must_exist: bool) -> Result<(SandboxLock, Option<SandboxRecord>), SandboxError> {
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
}

impl Runtime {
    /// A runtime from a loaded config: discovers the plugins and opens the storage and (if
    /// configured) the hypervisor.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, SandboxError> {
        let registry = Registry::discover(&config.plugins.dirs, config.plugins.include_static)?;
        let storage: StorageHandle = registry.open_storage(&config.storage.plugin, &config.storage.settings_json())?;
        let hypervisor = match &config.hypervisor {
            Some(section) => {
                let handle = registry.open_hypervisor(&section.plugin, &section.settings_json())?;
                Some((Arc::new(handle), section.clone()))
            }
            None => None,
        };
        let store = Store::new(Arc::new(storage));
        Ok(Runtime { inner: Arc::new(Inner { config, store, hypervisor, _registry: registry }) })
    }

    /// A runtime from a config file.
    pub fn from_file(path: &Path) -> Result<Runtime, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self::new(RuntimeConfig::load(path)?)?)
    }

    /// The config this runtime runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// CreateSandbox: creates and starts the sandbox's VM and creates its containers without
    /// starting them. On failure nothing is left behind.
    pub async fn create_sandbox(&self, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        super::lifecycle::create(&self.inner, config).await
    }

    /// RunSandbox: CreateSandbox, then starts the containers.
    pub async fn run_sandbox(&self, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let sandbox = self.create_sandbox(config).await?;
        sandbox.start().await?;
        Ok(sandbox)
    }

    /// FetchSandbox: a handle on an existing sandbox (from this process or another).
    pub async fn fetch_sandbox(&self, id: &str) -> Result<Sandbox, SandboxError> {
        let (_lock, record) = self.inner.lock(id, true).await?;
        Ok(Sandbox::new(self.inner.clone(), record.expect("checked by lock")))
    }

    /// ListSandboxes: every sandbox with its status (from the records and the hypervisor; the
    /// agents are not asked).
    pub async fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, SandboxError> {
        let store = self.inner.store.clone();
        let ids = blocking(move || store.ids()).await??;
        let mut list = Vec::with_capacity(ids.len());
        for id in ids {
            let store = self.inner.store.clone();
            let Some(record) = blocking(move || store.load(&id)).await?? else { continue };
            list.push(super::status::from_record(&self.inner, &record).await);
        }
        Ok(list)
    }

    /// StatusSandbox: the detailed status of one sandbox, its containers' states refreshed from
    /// the agent when the VM runs.
    pub async fn status_sandbox(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        self.fetch_sandbox(id).await?.status().await
    }

    /// StartSandbox: starts an existing sandbox and all its containers.
    pub async fn start_sandbox(&self, id: &str) -> Result<Sandbox, SandboxError> {
        let sandbox = self.fetch_sandbox(id).await?;
        sandbox.start().await?;
        Ok(sandbox)
    }

    /// StopSandbox: stops the sandbox's VM and destroys its containers.
    pub async fn stop_sandbox(&self, id: &str, force: bool) -> Result<Sandbox, SandboxError> {
        let sandbox = self.fetch_sandbox(id).await?;
        sandbox.stop(force).await?;
        Ok(sandbox)
    }

    /// DeleteSandbox: stops the sandbox if needed (guest failures ignored), then deletes it:
    /// no process, socket, file or record of it remains. Returns its last status.
    pub async fn delete_sandbox(&self, id: &str) -> Result<SandboxStatus, SandboxError> {
        let sandbox = self.fetch_sandbox(id).await?;
        if sandbox.state() != super::SandboxState::Stopped {
            sandbox.stop(true).await?;
        }
        sandbox.delete().await
    }
}
