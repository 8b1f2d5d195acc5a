//! Where sandboxes' VMs come from: the VM factory of the `[factory]` table (the `new` factory,
//! built in, without one), composed as Kata 1.x's `factory.NewFactory` did: a factory that
//! wraps another (`cache`) gets its base (`base`, `new` by default) through the host object
//! the core lends it ([`host::Host`]).
//!
//! The factory is opened at the first VM a runtime needs, not when the runtime is made, so
//! a command that makes no VM (`list`, `status`) starts no pool; it is closed (its pool's VMs
//! stopped) when the runtime is dropped. With `[factory] server`, the factory lives in the
//! factory server ([`server`]) and the runtime asks it for each VM ([`remote`]).

mod host;
pub mod remote;
pub mod server;
mod workdir;

use crate::config::{FactorySection, HypervisorSection, RuntimeConfig};
use crate::plugins::{Registry, RegistryError};
use host::{Host, HostRuntime};
use remote::{Remote, ServerStatus};
use plugin_api::factory::{factory_into_ffi, FactoryHost_TO, FactoryStatus, VmFactoryHandle};
use plugin_api::hypervisor::{DiskConfig, HypervisorConfig, HypervisorHandle};
use plugin_api::PluginError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use workdir::WorkDirError;

/// Why the factory of a config could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    /// The registry has no such plugin, or the plugin refused its settings.
    #[error("config file {file}, table [factory]")]
    Open {
        /// The config file.
        file: PathBuf,
        /// What the registry or the plugin said.
        #[source]
        source: Box<RegistryError>,
    },
    /// The factory's work directory could not be made.
    #[error(transparent)]
    WorkDir(#[from] WorkDirError),
    /// The hypervisor plugin refused the settings of the pool's instance.
    #[error("opening the hypervisor plugin for the factory's own VMs (run_dir {run_dir})")]
    PoolHypervisor {
        /// The pool's run directory.
        run_dir: PathBuf,
        /// The plugin's words.
        #[source]
        source: Box<RegistryError>,
    },
    /// The plugin's `destroy` failed.
    #[error("VM factory {plugin} failed to remove what it keeps")]
    Destroy {
        /// The plugin.
        plugin: String,
        /// Its error.
        #[source]
        source: PluginError,
    },
    /// The plugin's `init` failed.
    #[error("VM factory {plugin} failed to start")]
    Init {
        /// The plugin.
        plugin: String,
        /// Its error.
        #[source]
        source: PluginError,
    },
}

/// The VM a config describes: its `[hypervisor]` defaults, with `disks` and `console_log`.
pub fn vm_config(section: &HypervisorSection, vcpus: Option<u32>, memory_mib: Option<u64>, disks: Vec<DiskConfig>, console_log: Option<PathBuf>) -> HypervisorConfig {
    HypervisorConfig {
        schema: 1,
        kernel: section.kernel.clone(),
        initrd: section.initrd.clone(),
        kernel_params: section.kernel_params.clone(),
        vcpus: vcpus.unwrap_or(section.vcpus),
        memory_mib: memory_mib.unwrap_or(section.memory_mib),
        extra: serde_json::Value::Null,
        console_log,
        disks,
        memory_file: None,
    }
}

/// The opened factory of a runtime.
pub(crate) struct Factory {
    plugin: String,
    mode: Mode,
    /// Set once closed or destroyed, so dropping it does not close it again.
    closed: std::sync::atomic::AtomicBool,
}

enum Mode {
    /// The factory runs in this process; `_runtime` is its host's (none for the built-in `new`
    /// of a config without `[factory]`, which has no host).
    Local { handle: Arc<VmFactoryHandle>, base: Option<Arc<VmFactoryHandle>>, _runtime: Option<Arc<HostRuntime>>, _work_dir: workdir::WorkDir },
    /// The factory server holds it; `fallback` (the built-in `new`) serves when it is down.
    Remote { remote: Remote, fallback: VmFactoryHandle, runtime: HostRuntime },
}

/// What a factory holds: its own status, or its server's.
#[derive(Debug, Clone)]
pub enum Status {
    /// The factory runs in this process.
    Local(FactoryStatus),
    /// The factory server's.
    Server(ServerStatus),
}

impl Factory {
    /// Opens the factory `config` names: the built-in `new` without a `[factory]` table, a
    /// client of the factory server with `[factory] server`, else the factory itself.
    pub fn open(config: &RuntimeConfig, registry: &Registry, hypervisor: &Arc<HypervisorHandle>) -> Result<Factory, FactoryError> {
        match &config.factory {
            Some(FactorySection { plugin, server: Some(socket), .. }) => Ok(Factory::new(
                plugin.clone(),
                Mode::Remote { remote: Remote::new(socket), fallback: builtin_new(), runtime: HostRuntime::new() },
            )),
            _ => Factory::open_local(config, registry, hypervisor),
        }
    }

    /// Opens the factory `config` names in this process (what the factory server runs) and
    /// starts it.
    pub fn open_local(config: &RuntimeConfig, registry: &Registry, hypervisor: &Arc<HypervisorHandle>) -> Result<Factory, FactoryError> {
        let (section, hv_section) = match (&config.factory, &config.hypervisor) {
            (Some(f), Some(h)) => (f.clone(), h),
            _ => {
                let handle = Arc::new(builtin_new());
                let mode = Mode::Local { handle, base: None, _runtime: None, _work_dir: workdir::WorkDir::none() };
                return Ok(Factory::new("new".into(), mode));
            }
        };
        let plugin = open_factory(registry, &section.plugin, &section.settings_json()).map_err(|e| open_error(config, e))?;
        Factory::start(config, registry, hypervisor, hv_section, &section, plugin)
    }

    /// Starts the opened factory plugin `plugin` as `section` describes: its base, its work
    /// directory, its host (dead processes' factories reaped first).
    fn start(
        config: &RuntimeConfig,
        registry: &Registry,
        hypervisor: &Arc<HypervisorHandle>,
        hv_section: &HypervisorSection,
        section: &FactorySection,
        plugin: VmFactoryHandle,
    ) -> Result<Factory, FactoryError> {
        let base = Arc::new(open_factory(registry, section.base(), &section.base_settings_json()).map_err(|e| open_error(config, e))?);
        reap_dead(config, registry, hypervisor);
        let work_dir = workdir::WorkDir::claim(&config.runtime.state_dir, &section.plugin)?;
        let pool_hypervisor = open_pool_hypervisor(registry, hv_section, &work_dir.path().join("vms"), hypervisor)?;
        let runtime = Arc::new(HostRuntime::new());
        let pool_config = vm_config(hv_section, None, None, section.disks.clone(), None);
        let boot_timeout = Duration::from_secs(config.runtime.boot_timeout_s);
        let host = |base: Arc<VmFactoryHandle>| {
            let host = Host::new(base, pool_hypervisor.clone(), pool_config.clone(), work_dir.path().to_owned(), boot_timeout, runtime.clone());
            FactoryHost_TO::from_ptr(abi_stable::std_types::RArc::new(host), abi_stable::sabi_trait::TD_Opaque)
        };
        let init = |handle: &VmFactoryHandle, host| handle.init(host).map_err(|source| FactoryError::Init { plugin: handle.plugin().to_owned(), source });
        init(&base, host(Arc::new(builtin_new())))?;
        init(&plugin, host(base.clone()))?;
        tracing::info!(factory = %section.plugin, base = %section.base(), "VM factory started");
        let mode = Mode::Local { handle: Arc::new(plugin), base: Some(base), _runtime: Some(runtime), _work_dir: work_dir };
        Ok(Factory::new(section.plugin.clone(), mode))
    }

    fn new(plugin: String, mode: Mode) -> Factory {
        Factory { plugin, mode, closed: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Closes the factory in this process and removes what it and its base keep beyond it (a
    /// template): `sandboxctl factory destroy`. A client of a factory server does nothing.
    pub fn destroy(&self) -> Result<(), PluginError> {
        let Mode::Local { handle, base, .. } = &self.mode else { return Ok(()) };
        if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let mine = handle.destroy();
        let base = base.as_ref().map_or(Ok(()), |b| b.destroy());
        mine.and(base)
    }

    /// The factory plugin's name.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The plugin instance, where it runs in this process.
    pub fn local(&self) -> Option<&VmFactoryHandle> {
        match &self.mode {
            Mode::Local { handle, .. } => Some(handle),
            Mode::Remote { .. } => None,
        }
    }

    /// A VM for `sandbox_id` under `hypervisor`'s run directory (blocking). A factory server
    /// that does not answer is logged and the VM cold-boots here instead.
    pub fn new_vm(&self, hypervisor: &HypervisorHandle, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        match &self.mode {
            Mode::Local { handle, .. } => handle.new_vm(hypervisor.raw(), sandbox_id, config),
            Mode::Remote { remote, fallback, runtime } => match runtime.block_on(remote.new_vm(sandbox_id, config)) {
                Some(Ok(vm)) => Ok(vm),
                Some(Err(e @ (remote::RemoteError::Unreachable { .. } | remote::RemoteError::BadReply { .. }))) => {
                    tracing::warn!(sandbox = sandbox_id, "{}: cold boot here instead", error_report::chain(&e));
                    fallback.new_vm(hypervisor.raw(), sandbox_id, config)
                }
                Some(Err(e)) => Err(PluginError::other(error_report::chain(&e))),
                None => fallback.new_vm(hypervisor.raw(), sandbox_id, config),
            },
        }
    }

    /// What the factory holds (blocking).
    pub fn status(&self) -> Result<Status, PluginError> {
        match &self.mode {
            Mode::Local { handle, .. } => handle.status().map(Status::Local),
            Mode::Remote { remote, runtime, .. } => match runtime.block_on(remote.status()) {
                Some(Ok(s)) => Ok(Status::Server(s)),
                Some(Err(e)) => Err(PluginError::other(error_report::chain(&e))),
                None => Err(PluginError::other("no runtime to ask the factory server with")),
            },
        }
    }
}

impl Drop for Factory {
    fn drop(&mut self) {
        if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Mode::Local { handle, base, .. } = &self.mode {
            // The wrapping factory first: its background work may still ask the base.
            if let Err(e) = handle.close() {
                tracing::error!(factory = %self.plugin, "closing the VM factory failed: {e}");
            }
            if let Some(Err(e)) = base.as_ref().map(|b| b.close()) {
                tracing::error!(factory = %self.plugin, "closing the base VM factory failed: {e}");
            }
        }
    }
}

/// Checks the `[factory]` table of `config` without starting anything: its plugin and its base
/// exist and take their settings (instances are made and dropped; a pool starts only in
/// `init`). A table naming a server is the server's to check.
pub fn check(config: &RuntimeConfig, registry: &Registry) -> Result<(), RegistryError> {
    let Some(section) = config.factory.as_ref().filter(|f| f.server.is_none()) else { return Ok(()) };
    open_factory(registry, &section.plugin, &section.settings_json())?;
    open_factory(registry, section.base(), &section.base_settings_json())?;
    Ok(())
}

/// Starts the factory plugin instance `plugin` as a runtime of `config` would (its base,
/// work directory and host; `[factory]`'s disks and base where the config has that table),
/// runs `kit` on it (a conformance kit), then closes it.
pub fn with_started<R>(
    config: &RuntimeConfig,
    registry: &Registry,
    hypervisor: &Arc<HypervisorHandle>,
    plugin: VmFactoryHandle,
    kit: impl FnOnce(&VmFactoryHandle) -> R,
) -> Result<R, FactoryError> {
    let Some(hv_section) = &config.hypervisor else {
        return Err(open_error(config, RegistryError::Instance {
            kind: plugin_api::PluginKind::VM_FACTORY,
            name: plugin.plugin().to_owned(),
            source: PluginError::invalid_input("the config has no [hypervisor] table to make VMs with"),
        }));
    };
    let section = match &config.factory {
        Some(f) if f.plugin == plugin.plugin() => f.clone(),
        other => FactorySection {
            plugin: plugin.plugin().to_owned(),
            base: None,
            disks: other.as_ref().map(|f| f.disks.clone()).unwrap_or_default(),
            server: None,
            settings: Default::default(),
        },
    };
    let factory = Factory::start(config, registry, hypervisor, hv_section, &section, plugin)?;
    let handle = factory.local().expect("a started factory runs here");
    Ok(kit(handle))
}

/// Removes what the `[factory]` of `config` and its base keep beyond any process (a
/// template), without starting them: what `sandboxctl factory destroy` does when no factory
/// server answers. A config without `[factory]` has nothing to remove.
pub fn destroy_unstarted(config: &RuntimeConfig, registry: &Registry) -> Result<(), FactoryError> {
    let Some(section) = &config.factory else { return Ok(()) };
    for (name, settings) in [(section.plugin.as_str(), section.settings_json()), (section.base(), section.base_settings_json())] {
        let handle = open_factory(registry, name, &settings).map_err(|e| open_error(config, e))?;
        handle.destroy().map_err(|source| FactoryError::Destroy { plugin: name.to_owned(), source })?;
    }
    Ok(())
}

/// Stops the VMs that factories of dead processes left under `config`'s state directory and
/// removes their work directories; returns how many directories there were.
pub fn reap_dead(config: &RuntimeConfig, registry: &Registry, hypervisor: &Arc<HypervisorHandle>) -> usize {
    let Some(section) = &config.hypervisor else { return 0 };
    let dead = workdir::stale(&config.runtime.state_dir);
    for dir in &dead {
        match open_pool_hypervisor(registry, section, &dir.join("vms"), hypervisor) {
            Ok(hv) => workdir::reap(dir, &hv),
            Err(e) => tracing::warn!("reaping {}: {}", dir.display(), crate::plugins::error_chain(&e)),
        }
    }
    dead.len()
}

/// The `new` factory compiled into the core: what a runtime without `[factory]` uses, and the
/// base of last resort (when static plugins are off and no `new` library is installed).
fn builtin_new() -> VmFactoryHandle {
    VmFactoryHandle::new(factory_into_ffi(factory_new::NewFactory), "new")
}

/// Opens factory plugin `name` from the registry; `new` falls back to the built-in one.
fn open_factory(registry: &Registry, name: &str, settings: &serde_json::Value) -> Result<VmFactoryHandle, RegistryError> {
    match registry.open_vm_factory(name, settings) {
        Err(RegistryError::Unknown { .. }) if name == "new" => factory_new::NewFactory::new(&serde_json::to_vec(settings).unwrap_or_default())
            .map(|f| VmFactoryHandle::new(factory_into_ffi(f), "new"))
            .map_err(|source| RegistryError::Instance { kind: plugin_api::PluginKind::VM_FACTORY, name: name.into(), source }),
        other => other,
    }
}

fn open_error(config: &RuntimeConfig, source: RegistryError) -> FactoryError {
    FactoryError::Open { file: config.file.clone(), source: Box::new(source) }
}

/// The hypervisor instance for the factory's own VMs: the runtime's plugin with `run_dir` set
/// to `run_dir` (`<work_dir>/vms`).
fn open_pool_hypervisor(
    registry: &Registry,
    section: &HypervisorSection,
    run_dir: &std::path::Path,
    main: &Arc<HypervisorHandle>,
) -> Result<Arc<HypervisorHandle>, FactoryError> {
    let mut settings = section.settings_json();
    let run_dir = run_dir.to_owned();
    let Some(object) = settings.as_object_mut() else { return Ok(main.clone()) };
    object.insert("run_dir".into(), serde_json::json!(run_dir));
    match registry.open_hypervisor(&section.plugin, &settings) {
        Ok(handle) => Ok(Arc::new(handle)),
        Err(source) => Err(FactoryError::PoolHypervisor { run_dir, source: Box::new(source) }),
    }
}

impl FactorySection {
    /// Checks that the pool's disks are files; the error names the key and the path.
    pub fn check_files(&self, file: &std::path::Path) -> Result<(), crate::config::ConfigError> {
        for d in &self.disks {
            if !d.path.is_file() {
                return Err(crate::config::ConfigError::Invalid {
                    path: file.to_owned(),
                    key: "factory.disks",
                    reason: format!("{} (disk {:?}) is not a file", d.path.display(), d.name),
                });
            }
        }
        Ok(())
    }
}
