//! The `template` VM factory (Kata 1.x's `template.New`): one VM is booted to agent-ready with
//! its RAM in a file, paused and saved through the hypervisor plugin's `save_template`; every
//! later VM is a clone of it (`create_from_template`): the clone maps the template's RAM
//! copy-on-write and resumes where the template stopped, its agent already up, so it skips the
//! kernel boot and shares every page it has not written with its siblings.
//!
//! - The template lives in `path` (`[factory] path`, or `[factory.template] path` under a
//!   cache; default [`settings::DEFAULT_PATH`], on a tmpfs) and outlives the processes that
//!   use it: `init` loads it, or makes it when there is none (`sandboxctl factory init` with a
//!   server); `destroy` (`sandboxctl factory destroy`) removes it; `close` keeps it.
//! - A template made for another VM than the runtime's (kernel, vCPUs, memory, disks, ...) or
//!   by another hypervisor plugin is refused at `init`, naming the key: destroy it first.
//! - A sandbox that asks for another VM than the template's gets a cold boot from the base
//!   factory (`new`), with one log line naming the key; so does one whose clone fails (the
//!   error logged), so a broken template costs speed, not sandboxes.
//! - Its `base` may be nothing but `new`; a `cache` may have it as its base (`[factory] plugin
//!   = "cache"`, `base = "template"`): the pool then holds clones.

pub mod settings;
mod store;

use plugin_api::factory::{config_mismatch, FactoryHostBox, FactoryStatus, TemplateInfo, VmFactoryPlugin};
use plugin_api::hypervisor::{HypervisorBox, HypervisorConfig};
use plugin_api::payload::Payload;
use plugin_api::{Plugin, PluginError, PluginKind};
use settings::Settings;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;
use store::{Lock, Record, Template};

/// The plugin: name `template`, kind `factory`.
pub struct TemplatePlugin;

impl Plugin for TemplatePlugin {
    const NAME: &'static str = "template";
    const KIND: PluginKind = PluginKind::VM_FACTORY;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const VENDOR: &'static str = "sandbox-runtime";

    fn new_vm_factory(config: &[u8]) -> Result<impl VmFactoryPlugin, PluginError> {
        TemplateFactory::new(config)
    }
}

plugin_api::register_static_plugin!(TemplatePlugin);

/// The id the template VM is made under, in the host's pool run directory.
const TEMPLATE_VM: &str = "template";
/// How long the template VM runs on after the host's agent check hung up, before it is paused:
/// time for the agent to see the hang-up, end that session and wait on its port again. A VM
/// paused sooner is saved with the agent in the old session on the port the check used, and a
/// clone's agent never answers there (seen here with the cache probing that port). Kata 1.x
/// sleeps 2 s at the same point (`templateWaitForAgent`). Paid once per template.
const AGENT_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The factory: its settings, then (from `init`) the host and the loaded template.
pub struct TemplateFactory {
    settings: Settings,
    host: OnceLock<FactoryHostBox>,
    template: OnceLock<Template>,
    clones: AtomicU64,
}

impl TemplateFactory {
    /// From the plugin's settings (`{"path": "/dev/shm/..."}`, or nothing).
    pub fn new(config: &[u8]) -> Result<TemplateFactory, PluginError> {
        Ok(TemplateFactory { settings: Settings::parse(config)?, host: OnceLock::new(), template: OnceLock::new(), clones: AtomicU64::new(0) })
    }

    fn loaded(&self) -> Result<(&FactoryHostBox, &Template), PluginError> {
        match (self.host.get(), self.template.get()) {
            (Some(h), Some(t)) => Ok((h, t)),
            _ => Err(PluginError::invalid_input("the template factory was not initialized (init comes first)")),
        }
    }

    /// A cold boot for `sandbox_id` from the base factory, saying why.
    fn cold(host: &FactoryHostBox, hypervisor: &HypervisorBox, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        Ok(host.base_new_vm(hypervisor, sandbox_id.into(), config.encode().as_slice().into()).into_result()?.into_vec())
    }

    /// A started clone of the template for `sandbox_id`; on an error nothing of it is left.
    fn clone_vm(hypervisor: &HypervisorBox, template: &Template, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        let config = config.encode();
        let created = hypervisor
            .create_vm_from_template(sandbox_id.into(), template.descriptor.as_slice().into(), config.as_slice().into())
            .into_result()?;
        hypervisor.start_vm(created.as_slice().into()).into_result().map(|b| b.into_vec()).inspect_err(|_| {
            if let Err(e) = hypervisor.stop_vm(created.as_slice().into()).into_result() {
                tracing::error!(sandbox = sandbox_id, "stopping the clone that failed to start failed too: {e}");
            }
        })
    }
}

/// Checks that the template `t` was made for the runtime's VM `wanted` by `hypervisor`.
fn check_made_for(t: &Template, hypervisor: &str, wanted: &HypervisorConfig) -> Result<(), PluginError> {
    let destroy = "remove it (sandboxctl factory destroy) and make it again, or give this runtime a template path of its own";
    if t.record.hypervisor != hypervisor {
        return Err(PluginError::invalid_input(format!(
            "the template in {} was made by hypervisor plugin {}, this runtime runs {hypervisor}: {destroy}",
            t.path.display(),
            t.record.hypervisor
        )));
    }
    if let Some((key, made, asked)) = config_mismatch(&t.record.config, wanted) {
        return Err(PluginError::invalid_input(format!(
            "the template in {} was made for HypervisorConfig.{key} = {made}, this runtime's VM has {asked}: {destroy}",
            t.path.display()
        )));
    }
    Ok(())
}

/// Makes the template in `path`: boots the runtime's VM with its RAM in `<path>/memory`,
/// waits for its agent, pauses and saves it, stops it; commits the record last. On an error
/// the directory is removed.
fn make(host: &FactoryHostBox, path: &std::path::Path, hypervisor: &str, config: &HypervisorConfig) -> Result<Template, PluginError> {
    let began = Instant::now();
    store::make_dir(path)?;
    let console = std::path::PathBuf::from(host.work_dir().as_str()).join("template.console.log");
    let vm_config = HypervisorConfig { memory_file: Some(path.join(store::MEMORY)), console_log: Some(console.clone()), ..config.clone() };
    let hv = host.pool_hypervisor();
    let made = (|| {
        let created = hv.create_vm(TEMPLATE_VM.into(), vm_config.encode().as_slice().into()).into_result()?;
        let mut last = created.clone();
        let saved = (|| {
            last = hv.start_vm(created.as_slice().into()).into_result()?;
            host.wait_agent(last.as_slice().into(), console.to_string_lossy().as_ref().into(), u64::MAX).into_result()?;
            std::thread::sleep(AGENT_SETTLE);
            last = hv.pause_vm(last.as_slice().into()).into_result()?;
            Ok::<_, PluginError>(hv.save_template(last.as_slice().into(), path.to_string_lossy().as_ref().into()).into_result()?.into_vec())
        })();
        if let Err(e) = hv.stop_vm(last.as_slice().into()).into_result() {
            tracing::error!("stopping the template VM failed: {e}");
        }
        saved
    })();
    // Kept beside the template, private like its other files (whatever mode the VMM made it).
    let kept = path.join(store::CONSOLE);
    if std::fs::rename(&console, &kept).is_ok() {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %kept.display(), "making the template's console log private: {e}");
        }
    }
    let finished = made.and_then(|descriptor| {
        let record = Record::new(hypervisor.to_owned(), config.clone(), began.elapsed().as_millis() as u64);
        store::commit(path, &record, &descriptor)?;
        Ok(Template { path: path.to_owned(), record, descriptor })
    });
    if finished.is_err() {
        let _ = store::remove(path);
    }
    finished
}

impl VmFactoryPlugin for TemplateFactory {
    /// Loads the template, or makes it when there is none (under the lock, so one process
    /// makes it and the others wait and load it).
    fn init(&self, host: FactoryHostBox) -> Result<(), PluginError> {
        let config = HypervisorConfig::decode(&host.vm_config())?;
        let hypervisor = host.hypervisor_plugin().into_string();
        let path = &self.settings.path;
        let _lock = Lock::take(&self.settings.lock_path())?;
        let template = match store::load(path)? {
            Some(t) => {
                check_made_for(&t, &hypervisor, &config)?;
                tracing::info!(path = %path.display(), "loaded the VM template");
                t
            }
            None => {
                tracing::info!(path = %path.display(), hypervisor, "making the VM template");
                let t = make(&host, path, &hypervisor, &config)?;
                tracing::info!(path = %path.display(), ms = t.record.made_in_ms, "made the VM template");
                t
            }
        };
        if self.template.set(template).is_err() || self.host.set(host).is_err() {
            return Err(PluginError::invalid_input("the template factory was initialized twice"));
        }
        Ok(())
    }

    fn new_vm(&self, hypervisor: &HypervisorBox, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        let (host, template) = self.loaded()?;
        if let Some((key, made, wanted)) = config_mismatch(&template.record.config, config) {
            tracing::info!(sandbox = sandbox_id, "the sandbox asks for {key} = {wanted}, the template has {made}: cold boot from the base factory");
            return Self::cold(host, hypervisor, sandbox_id, config);
        }
        let began = Instant::now();
        match Self::clone_vm(hypervisor, template, sandbox_id, config) {
            Ok(vm) => {
                self.clones.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sandbox = sandbox_id, ms = began.elapsed().as_millis() as u64, "cloned the VM template");
                Ok(vm)
            }
            Err(e) => {
                tracing::error!(sandbox = sandbox_id, template = %template.path.display(), "cloning the VM template failed: {e}; cold boot from the base factory");
                Self::cold(host, hypervisor, sandbox_id, config)
            }
        }
    }

    fn status(&self) -> Result<FactoryStatus, PluginError> {
        let template = self.template.get().map(|t| TemplateInfo {
            path: t.path.clone(),
            disk_bytes: store::disk_bytes(&t.path),
            hypervisor: t.record.hypervisor.clone(),
            config: t.record.config.clone(),
            created_unix_s: t.record.created_unix_s,
            clones: self.clones.load(Ordering::Relaxed),
        });
        Ok(FactoryStatus { template, ..FactoryStatus::empty("template") })
    }

    /// Removes the template (its clones keep running: each maps its own copy-on-write view
    /// of the RAM file, which lives on until the last of them ends).
    fn destroy(&self) -> Result<(), PluginError> {
        let _lock = Lock::take(&self.settings.lock_path())?;
        store::remove(&self.settings.path)?;
        tracing::info!(path = %self.settings.path.display(), "removed the VM template");
        Ok(())
    }
}
