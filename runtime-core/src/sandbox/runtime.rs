//! The Sandbox Management API of the seed, on a [`Runtime`]: the plugins and settings one
//! config file selects.

use super::context::RuntimeContext;
use super::handle::Sandbox;
use super::state::SandboxState;
use super::status::{self, SandboxStatus};
use super::orphans::{self, OrphanVm};
use super::{blocking, lifecycle, SandboxConfig, SandboxError};
use crate::config::RuntimeConfig;
use plugin_api::factory::FactoryStatus;
use std::path::Path;
use std::sync::Arc;

/// The runtime: entry point of the Sandbox Management API. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeContext>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("state_dir", &self.inner.config.runtime.state_dir).finish()
    }
}

impl Runtime {
    /// A runtime from a loaded config: discovers the plugins and opens the storage and (if
    /// configured) the hypervisor.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, SandboxError> {
        Ok(Runtime { inner: Arc::new(RuntimeContext::open(config)?) })
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
        lifecycle::create(&self.inner, config).await
    }

    /// RunSandbox: CreateSandbox, then starts the containers. If starting fails, the sandbox
    /// is deleted again: a failed RunSandbox leaves nothing behind, like a failed create.
    pub async fn run_sandbox(&self, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let sandbox = self.create_sandbox(config).await?;
        if let Err(e) = sandbox.start().await {
            // The caller gets the error; the log says only what is done about it.
            tracing::info!(sandbox = %sandbox.id(), "starting the sandbox failed: deleting it");
            sandbox.release().await;
            if let Err(cleanup) = self.delete_sandbox(sandbox.id()).await {
                tracing::error!(sandbox = %sandbox.id(), "deleting the sandbox that failed to start failed too: {}", crate::plugins::error_chain(&cleanup));
            }
            return Err(e);
        }
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
            list.push(status::from_record(&self.inner, &record).await);
        }
        Ok(list)
    }

    /// The VMs that the hypervisor plugin has under its run directory and no sandbox record
    /// owns (a record lost with its store, a process killed between creating a VM and saving
    /// its record). Empty without a hypervisor, or with a plugin built against plugin-api
    /// before 1.2 (which cannot list its VMs).
    pub async fn orphan_vms(&self) -> Result<Vec<OrphanVm>, SandboxError> {
        Ok(orphans::list(&self.inner).await?.into_iter().map(|(vm, _)| vm).collect())
    }

    /// Stops the VM of sandbox `id` that no record owns and removes what is left of it (its
    /// directory and console log); returns what it was, or `None` when there is no such VM
    /// (none at all, or a record owns it: delete the sandbox instead).
    pub async fn remove_orphan_vm(&self, id: &str) -> Result<Option<OrphanVm>, SandboxError> {
        orphans::remove(&self.inner, id).await
    }

    /// What the VM factory holds (its pool's VMs). The factory is opened, and a pool starts
    /// filling, at the first VM a runtime makes or at this call.
    pub async fn factory_status(&self) -> Result<FactoryStatus, SandboxError> {
        let factory = self.inner.factory().await?;
        let plugin = factory.plugin().to_owned();
        let status = blocking(move || factory.status()).await?.map_err(|source| SandboxError::Factory { plugin, op: "report its status".into(), source })?;
        Ok(match status {
            crate::factory::Status::Local(s) => s,
            crate::factory::Status::Server(s) => s.status,
        })
    }

    /// Stops the VMs that the VM factories of dead processes left (a factory server or a
    /// runtime killed before it closed its pool) and removes their work directories; returns
    /// how many such factories there were.
    pub async fn reap_dead_factories(&self) -> Result<usize, SandboxError> {
        let (hv, _) = self.inner.hypervisor()?;
        let (hv, ctx) = (hv.clone(), self.inner.clone());
        blocking(move || crate::factory::reap_dead(&ctx.config, ctx.registry(), &hv)).await
    }

    /// Removes what the configured VM factory keeps beyond any process (a template) without
    /// starting it, as `sandboxctl factory destroy` does when no factory server answers.
    pub async fn destroy_factory_files(&self) -> Result<(), SandboxError> {
        let ctx = self.inner.clone();
        blocking(move || crate::factory::destroy_unstarted(&ctx.config, ctx.registry()).map_err(SandboxError::from)).await?
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
        if sandbox.state() != SandboxState::Stopped {
            sandbox.stop(true).await?;
        }
        sandbox.delete().await
    }
}
