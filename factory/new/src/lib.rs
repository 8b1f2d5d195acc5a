//! The `new` VM factory (the seed's direct factory, Kata's `direct`): every VM is created and
//! started through the hypervisor plugin, a cold boot. It is what a runtime without a
//! `[factory]` table uses, and the base a `cache` fills its pool with. It has no settings and
//! keeps nothing: a VM it returns is the caller's.

use plugin_api::factory::{FactoryStatus, VmFactoryPlugin};
use plugin_api::abi_stable::std_types::RResult;
use plugin_api::hypervisor::{HypervisorBox, HypervisorConfig};
use plugin_api::payload::Payload;
use plugin_api::{Plugin, PluginError, PluginKind};
use serde::Deserialize;

/// The plugin: name `new`, kind `factory`.
pub struct NewPlugin;

impl Plugin for NewPlugin {
    const NAME: &'static str = "new";
    const KIND: PluginKind = PluginKind::VM_FACTORY;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const VENDOR: &'static str = "sandbox-runtime";

    fn new_vm_factory(config: &[u8]) -> Result<impl VmFactoryPlugin, PluginError> {
        NewFactory::new(config)
    }
}

plugin_api::register_static_plugin!(NewPlugin);

/// This factory's settings: none.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Settings {}

/// The factory: it holds nothing.
#[derive(Debug, Default)]
pub struct NewFactory;

impl NewFactory {
    /// From the plugin's settings, which must be empty (`{}`, `null` or nothing).
    pub fn new(config: &[u8]) -> Result<NewFactory, PluginError> {
        let trimmed = config.trim_ascii();
        if !trimmed.is_empty() && trimmed != b"null" {
            let _: Settings = plugin_api::settings::parse("the new factory takes no settings", trimmed)?;
        }
        Ok(NewFactory)
    }
}

impl VmFactoryPlugin for NewFactory {
    /// Creates and starts the VM; if starting fails, stops what was created.
    fn new_vm(&self, hypervisor: &HypervisorBox, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        let created = hypervisor.create_vm(sandbox_id.into(), config.encode().as_slice().into()).into_result()?;
        match hypervisor.start_vm(created.as_slice().into()).into_result() {
            Ok(started) => Ok(started.into_vec()),
            Err(e) => {
                if let RResult::RErr(cleanup) = hypervisor.stop_vm(created.as_slice().into()) {
                    tracing::error!(sandbox_id, "stopping the VM that failed to start failed too: {cleanup}");
                }
                Err(e)
            }
        }
    }

    fn status(&self) -> Result<FactoryStatus, PluginError> {
        Ok(FactoryStatus::empty("new"))
    }
}
