//! The `cache` VM factory (Kata 1.x's `cache.New(N, base)`): a pool of `size` VMs booted to
//! agent-ready by the base factory (`[factory] base`, `new` by default), one handed out per
//! sandbox, the pool refilled in the background.
//!
//! - Pooled VMs live under the host's pool hypervisor instance (a run directory of their own)
//!   as `pool-<n>`, their consoles in the factory's work directory.
//! - Handing one out is a transfer of ownership: the hypervisor plugin's `adopt_vm` renames
//!   its directory to `<run_dir>/<sandbox_id>` (the VMM keeps running and serving its
//!   sockets), and its console log is renamed to the sandbox's. From then on it is the
//!   sandbox's VM like any other.
//! - A request the pool's VMs cannot serve (other vCPUs, memory, kernel, initrd, parameters or
//!   disks: [`config_mismatch`]) gets a cold boot from the base factory, with one log line
//!   naming the key; so does a request that finds the pool empty.
//! - `close` stops the refill thread (after the boot in flight) and every ready VM.

mod pool;
mod priority;
pub mod settings;

use plugin_api::factory::{config_mismatch, FactoryHostBox, FactoryStatus, VmFactoryPlugin};
use plugin_api::hypervisor::{HypervisorBox, HypervisorConfig};
use plugin_api::payload::Payload;
use plugin_api::{ErrorKind, Plugin, PluginError, PluginKind};
use pool::{Pool, Ready};
use settings::Settings;
use std::sync::{Arc, Mutex, OnceLock};

pub use pool::pid_of;

/// The plugin: name `cache`, kind `factory`.
pub struct CachePlugin;

impl Plugin for CachePlugin {
    const NAME: &'static str = "cache";
    const KIND: PluginKind = PluginKind::VM_FACTORY;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const VENDOR: &'static str = "sandbox-runtime";

    fn new_vm_factory(config: &[u8]) -> Result<impl VmFactoryPlugin, PluginError> {
        CacheFactory::new(config)
    }
}

plugin_api::register_static_plugin!(CachePlugin);

/// The factory: its settings, then (from `init`) its pool and refill thread.
pub struct CacheFactory {
    settings: Settings,
    pool: OnceLock<Arc<Pool>>,
    refill: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl CacheFactory {
    /// From the plugin's settings (`{"size": N}`).
    pub fn new(config: &[u8]) -> Result<CacheFactory, PluginError> {
        Ok(CacheFactory { settings: Settings::parse(config)?, pool: OnceLock::new(), refill: Mutex::new(None) })
    }

    fn pool(&self) -> Result<&Arc<Pool>, PluginError> {
        self.pool.get().ok_or_else(|| PluginError::invalid_input("the cache factory was not initialized (init comes first)"))
    }

    /// A cold boot for `sandbox_id` from the base factory, saying why.
    fn cold(&self, pool: &Pool, hypervisor: &HypervisorBox, sandbox_id: &str, config: &HypervisorConfig, why: &str) -> Result<Vec<u8>, PluginError> {
        tracing::info!(sandbox = sandbox_id, "{why}: cold boot from the base factory");
        Ok(pool.host().base_new_vm(hypervisor, sandbox_id.into(), config.encode().as_slice().into()).into_result()?.into_vec())
    }

    /// Makes pooled VM `vm` the VM of `sandbox_id`: adopted under `hypervisor`'s run
    /// directory, its console log moved to the one `config` names. When the hypervisor
    /// refuses the request itself (invalid input: a bad sandbox id, a socket path too long;
    /// busy: the sandbox's directory holds a live VM), the VM goes back to the pool and the
    /// error is the caller's, so a bad request costs the pool nothing; a VM that cannot be
    /// adopted for another reason is stopped (`Ok(None)`: try the next).
    fn hand_over(&self, pool: &Pool, hypervisor: &HypervisorBox, sandbox_id: &str, config: &HypervisorConfig, vm: Ready) -> Result<Option<Vec<u8>>, PluginError> {
        pool.restore_priority(&vm);
        let blob = match hypervisor.adopt_vm(vm.blob.as_slice().into(), sandbox_id.into()).into_result() {
            Ok(blob) => blob.into_vec(),
            Err(e) if matches!(e.kind, ErrorKind::INVALID_INPUT | ErrorKind::BUSY) => {
                tracing::warn!(sandbox = sandbox_id, vm = %vm.id, "the hypervisor refused to hand the pooled VM to this sandbox: {e}");
                pool.put_back(vm);
                return Err(e);
            }
            Err(e) => {
                tracing::error!(sandbox = sandbox_id, vm = %vm.id, "handing out a pooled VM failed: {e}");
                pool.discard(vm);
                return Ok(None);
            }
        };
        if let Some(console) = &config.console_log {
            if let Err(e) = std::fs::rename(&vm.console, console) {
                tracing::warn!(sandbox = sandbox_id, "moving the console log {} to {}: {e}", vm.console.display(), console.display());
            }
        }
        tracing::info!(sandbox = sandbox_id, vm = %vm.id, age_ms = vm.born.elapsed().as_millis() as u64, "handed out a pooled VM");
        Ok(Some(blob))
    }
}

impl VmFactoryPlugin for CacheFactory {
    fn init(&self, host: FactoryHostBox) -> Result<(), PluginError> {
        let pool = Arc::new(Pool::new(self.settings.size, host)?);
        if self.pool.set(pool.clone()).is_err() {
            return Err(PluginError::invalid_input("the cache factory was initialized twice"));
        }
        let thread = std::thread::Builder::new()
            .name("cache-refill".into())
            .spawn(move || pool.refill())
            .map_err(|e| PluginError::other(format!("starting the cache's refill thread: {e}")))?;
        *self.refill.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        tracing::info!(size = self.settings.size, "VM cache started");
        Ok(())
    }

    fn new_vm(&self, hypervisor: &HypervisorBox, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        let pool = self.pool()?;
        if let Some((key, pooled, wanted)) = config_mismatch(&pool.config, config) {
            let why = format!("the sandbox asks for {key} = {wanted}, the pool's VMs have {pooled}");
            return self.cold(pool, hypervisor, sandbox_id, config, &why);
        }
        while let Some(vm) = pool.take() {
            if let Some(blob) = self.hand_over(pool, hypervisor, sandbox_id, config, vm)? {
                return Ok(blob);
            }
        }
        self.cold(pool, hypervisor, sandbox_id, config, "no pooled VM is ready")
    }

    fn status(&self) -> Result<FactoryStatus, PluginError> {
        let pool = self.pool()?;
        // A cache over a template shows the template too.
        let template = pool.host().base_status().into_result().ok().and_then(|b| FactoryStatus::decode(&b).ok()).and_then(|s| s.template);
        Ok(FactoryStatus { schema: 1, factory: "cache".into(), size: pool.size, vms: pool.list(), template })
    }

    fn close(&self) -> Result<(), PluginError> {
        if let Some(pool) = self.pool.get() {
            let refill = self.refill.lock().unwrap_or_else(|p| p.into_inner()).take();
            pool.close(refill);
            tracing::info!("VM cache closed");
        }
        Ok(())
    }
}
