//! `sandboxctl conformance LIB.so`: runs the conformance kit of the library's kind
//! (`plugin_api::conformance`) against it, loaded as the runtime loads plugins. The storage
//! kit needs nothing else; the hypervisor and factory kits boot the guest image of the
//! runtime config's `[hypervisor]` table, and ask the guest agent whether it answers through
//! the core's agent client. Everything the kits make lives in a temporary directory.

use anyhow::{bail, Context, Result};
use plugin_api::conformance::{self, Report};
use plugin_api::PluginKind;
use runtime_core::config::RuntimeConfig;
use runtime_core::plugins::{self, Registry, RegistryError};
use std::path::Path;
use std::time::Duration;

/// Runs the kit; `plugin_config` is the plugin's JSON config (`{dir}` is the temporary
/// directory); without it, storage gets `{"path": "{dir}/store"}`, a hypervisor the config's
/// `[hypervisor]` settings (where it is that plugin) with `run_dir` in `{dir}`, a factory the
/// config's `[factory]` settings (where it is that plugin) or none.
pub fn run(library: &Path, plugin_config: Option<&str>, config_path: &Path) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let given = |json: &str| -> Result<serde_json::Value> {
        let json = json.replace("{dir}", &dir.path().to_string_lossy());
        serde_json::from_str(&json).with_context(|| format!("--plugin-config is not JSON: {json}"))
    };
    let mut registry = Registry::new();
    let info = registry.add_library(library)?.clone();
    println!("{} conformance of {:?} ({})", info.kind, info.name, library.display());
    let report = match info.kind {
        PluginKind::STORAGE => {
            let settings = match plugin_config {
                Some(json) => given(json)?,
                None => serde_json::json!({ "path": dir.path().join("store") }),
            };
            conformance::storage::run(&registry.open_storage(&info.name, &settings)?)
        }
        PluginKind::HYPERVISOR => {
            let config = RuntimeConfig::load(config_path)?;
            let section = config.hypervisor.as_ref().with_context(|| format!("config file {} has no [hypervisor] table: the kit boots its guest image", config_path.display()))?;
            let mut settings = match plugin_config {
                Some(json) => given(json)?,
                None if section.plugin == info.name => section.settings_json(),
                None => serde_json::json!({}),
            };
            if let Some(object) = settings.as_object_mut() {
                object.entry("run_dir").or_insert_with(|| serde_json::json!(dir.path().join("vms")));
            }
            let hypervisor = registry.open_hypervisor(&info.name, &settings)?;
            let guest = conformance::hypervisor::Guest {
                config: runtime_core::factory::vm_config(section, None, None, vec![], None),
                work_dir: dir.path().to_owned(),
                boot_timeout: Duration::from_secs(config.runtime.boot_timeout_s),
            };
            with_probe(|probe| conformance::hypervisor::run(&hypervisor, &guest, probe))?
        }
        PluginKind::VM_FACTORY => factory(library, &info.name, plugin_config.map(given).transpose()?, config_path, dir.path())?,
        other => bail!("there is no conformance kit for {other} plugins yet"),
    };
    println!("{report}");
    if !report.passed() {
        bail!("{} conformance checks failed", report.failures().count());
    }
    Ok(())
}

/// The factory kit: the runtime config's hypervisor (its VMs and state in `dir`), the factory
/// started as a runtime starts it.
fn factory(library: &Path, name: &str, settings: Option<serde_json::Value>, config_path: &Path, dir: &Path) -> Result<Report> {
    let mut config = RuntimeConfig::load(config_path)?;
    config.runtime.state_dir = dir.join("state");
    let section = config.hypervisor.clone().with_context(|| format!("config file {} has no [hypervisor] table: the kit boots its guest image", config_path.display()))?;
    let mut registry = plugins::discover(&config)?;
    match registry.add_library(library) {
        Ok(_) | Err(RegistryError::Duplicate { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut hv_settings = section.settings_json();
    if let Some(object) = hv_settings.as_object_mut() {
        object.insert("run_dir".into(), serde_json::json!(dir.join("vms")));
    }
    let hypervisor = std::sync::Arc::new(registry.open_hypervisor(&section.plugin, &hv_settings)?);
    let settings = settings.unwrap_or_else(|| match &config.factory {
        Some(f) if f.plugin == name => f.settings_json(),
        _ => serde_json::json!({}),
    });
    let factory = registry.open_vm_factory(name, &settings)?;
    let disks = config.factory.as_ref().map(|f| f.disks.clone()).unwrap_or_default();
    let request = conformance::factory::Request {
        config: runtime_core::factory::vm_config(&section, None, None, disks, None),
        work_dir: dir.to_owned(),
        boot_timeout: Duration::from_secs(config.runtime.boot_timeout_s),
    };
    let report = with_probe(|probe| {
        runtime_core::factory::with_started(&config, &registry, &hypervisor, factory, |f| conformance::factory::run(f, &hypervisor, &request, probe))
    })??;
    Ok(report)
}

/// Runs `kit` with an agent probe on a runtime of its own.
fn with_probe<R>(kit: impl FnOnce(conformance::hypervisor::AgentProbe<'_>) -> R) -> Result<R> {
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    // Each probe on another address: the agent's end of a serial port just used may still be
    // in the old session.
    let nth = std::sync::atomic::AtomicUsize::new(0);
    let probe = |endpoints: &str, timeout: Duration| {
        let n = nth.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio.block_on(runtime_core::agent::probe(endpoints, n, timeout))
    };
    let result = kit(&probe);
    tokio.shutdown_background();
    Ok(result)
}
