//! What the core lends a VM factory ([`FactoryHost`]): the base factory, the hypervisor
//! instance for the factory's own VMs, the VM the config describes, a work directory, and a
//! wait for a VM's agent (which needs the core's agent client, so it runs on a small tokio
//! runtime of its own: factories call the host from their own threads).

use crate::agent::probe;
use crate::console_tail::console_tail;
use plugin_api::factory::{FactoryHost, VmFactoryHandle};
use plugin_api::hypervisor::{HypervisorBox, HypervisorConfig, HypervisorHandle};
use plugin_api::payload::Payload;
use plugin_api::PluginError;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often a VM whose agent is awaited is checked for having died.
const DEATH_WATCH: Duration = Duration::from_millis(500);

/// The tokio runtime the host's agent waits run on; shut down without waiting when dropped
/// (it may be dropped on an async thread).
pub(crate) struct HostRuntime(Option<tokio::runtime::Runtime>);

impl HostRuntime {
    /// A runtime with one worker thread.
    pub fn new() -> HostRuntime {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("factory-host").enable_all().build();
        match rt {
            Ok(rt) => HostRuntime(Some(rt)),
            Err(e) => {
                tracing::error!("starting the VM factory host's runtime: {e}");
                HostRuntime(None)
            }
        }
    }

    /// Runs `future` to its end on this runtime (from a thread that is not async); `None`
    /// when the runtime could not be started.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> Option<F::Output> {
        self.0.as_ref().map(|rt| rt.block_on(future))
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The host object of one factory.
pub(crate) struct Host {
    base: Arc<VmFactoryHandle>,
    pool_hypervisor: Arc<HypervisorHandle>,
    vm_config: HypervisorConfig,
    work_dir: PathBuf,
    boot_timeout: Duration,
    runtime: Arc<HostRuntime>,
}

impl Host {
    pub fn new(
        base: Arc<VmFactoryHandle>,
        pool_hypervisor: Arc<HypervisorHandle>,
        vm_config: HypervisorConfig,
        work_dir: PathBuf,
        boot_timeout: Duration,
        runtime: Arc<HostRuntime>,
    ) -> Host {
        Host { base, pool_hypervisor, vm_config, work_dir, boot_timeout, runtime }
    }

    fn wait(&self, vm: &[u8], console_log: &str, timeout: Duration) -> Result<(), PluginError> {
        let hv = &self.pool_hypervisor;
        let endpoints = hv.agent_endpoint(vm)?;
        let timeout = timeout.min(self.boot_timeout);
        let waited = self.runtime.block_on(async {
            tokio::select! {
                r = probe(&endpoints, 0, timeout) => r.map_err(PluginError::other),
                status = died(hv, vm) => Err(PluginError::other(format!(
                    "the VM is {status} before its agent answered; console: {}", console_tail(Some(Path::new(console_log)), " | ")
                ))),
            }
        });
        waited.unwrap_or_else(|| Err(PluginError::other("the VM factory host has no runtime to wait with")))
    }
}

/// Resolves once the hypervisor says the VM is `dead` or `stopped`, with that status.
async fn died(hv: &HypervisorHandle, vm: &[u8]) -> String {
    loop {
        tokio::time::sleep(DEATH_WATCH).await;
        match hv.vm_status(vm) {
            Ok(s) if s == "dead" || s == "stopped" => return s,
            _ => {}
        }
    }
}

impl FactoryHost for Host {
    fn base_new_vm(&self, hypervisor: &HypervisorBox, sandbox_id: RStr<'_>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        let result = HypervisorConfig::decode(&config).and_then(|config| self.base.new_vm(hypervisor, sandbox_id.as_str(), &config));
        result.map(RVec::from).into()
    }

    fn pool_hypervisor(&self) -> HypervisorBox {
        self.pool_hypervisor.share()
    }

    fn vm_config(&self) -> RVec<u8> {
        self.vm_config.encode().into()
    }

    fn work_dir(&self) -> RString {
        self.work_dir.to_string_lossy().into_owned().into()
    }

    fn wait_agent(&self, vm: RSlice<'_, u8>, console_log: RStr<'_>, timeout_ms: u64) -> RResult<(), PluginError> {
        self.wait(&vm, console_log.as_str(), Duration::from_millis(timeout_ms)).into()
    }

    fn hypervisor_plugin(&self) -> RString {
        self.pool_hypervisor.plugin().into()
    }

    fn base_status(&self) -> RResult<RVec<u8>, PluginError> {
        self.base.status().map(|s| s.encode().into()).into()
    }
}
