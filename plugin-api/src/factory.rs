//! The VM factory interface: `NewVM(HypervisorConfig)` of the seed. The kinds are `new`
//! (boot a fresh VM), `cache` (hand out a VM booted ahead of time, from a pool that a base
//! factory fills) and `template` (clone a saved template).
//!
//! The host builds one factory per runtime from the `[factory]` table of its config (the
//! `new` factory without one), calls [`VmFactory::init`] once with a [`FactoryHost`], then
//! [`VmFactory::new_vm`] for every VM a sandbox needs, and [`VmFactory::close`] before it drops
//! the factory. A factory that wraps another (a cache over `new`) reaches its base through the
//! host ([`FactoryHost::base_new_vm`]), which composes factories as the config says.

use crate::error::PluginError;
use crate::guard::guard;
use crate::hypervisor::{HypervisorBox, HypervisorConfig};
use crate::payload::{payload, Payload};
use abi_stable::{
    sabi_trait,
    std_types::{RArc, RBox, RResult, RSlice, RStr, RString, RVec},
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The FFI-safe factory interface. Plugin authors implement [`VmFactoryPlugin`], whose
/// documentation is the contract of each method.
#[sabi_trait]
pub trait VmFactory: Send + Sync {
    /// Returns a VM for `sandbox_id` built by `hypervisor` from a [`HypervisorConfig`]
    /// payload, as the hypervisor's VM state blob.
    #[sabi(last_prefix_field)]
    fn new_vm(
        &self,
        hypervisor: &HypervisorBox,
        sandbox_id: RStr<'_>,
        config: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError>;

    /// Called once before any other call, with what the host lends the factory (added in 1.2;
    /// for a plugin built against an older 1.x it does nothing).
    fn init(&self, host: FactoryHostBox) -> RResult<(), PluginError> {
        let _ = host;
        RResult::ROk(())
    }

    /// What the factory holds, as a [`FactoryStatus`] payload (added in 1.2; for a plugin built
    /// against an older 1.x, an empty status).
    fn status(&self) -> RResult<RVec<u8>, PluginError> {
        RResult::ROk(FactoryStatus::empty("unknown").encode().into())
    }

    /// Stops every VM the factory still holds and its background work (added in 1.2; for a
    /// plugin built against an older 1.x it does nothing).
    fn close(&self) -> RResult<(), PluginError> {
        RResult::ROk(())
    }

    /// Closes the factory and removes what it keeps beyond its process, such as a template
    /// (added in 1.3; for a plugin built against an older 1.x, [`close`](Self::close)).
    fn destroy(&self) -> RResult<(), PluginError> {
        self.close()
    }
}

/// An owned factory trait object.
pub type VmFactoryBox = VmFactory_TO<'static, RBox<()>>;

/// What the host lends a factory (implemented by the host, added in 1.2).
#[sabi_trait]
pub trait FactoryHost: Send + Sync {
    /// A VM from the factory's base (`new` unless the config names another), made with
    /// `hypervisor` for `sandbox_id` from a [`HypervisorConfig`] payload: a started VM whose
    /// agent may not answer yet.
    fn base_new_vm(
        &self,
        hypervisor: &HypervisorBox,
        sandbox_id: RStr<'_>,
        config: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError>;

    /// The hypervisor instance for the VMs the factory keeps for itself (a pool): the
    /// runtime's hypervisor plugin with a run directory of its own, so that those VMs are
    /// neither sandboxes' nor taken for VMs whose record was lost. A VM made with it becomes a
    /// sandbox's with [`Hypervisor::adopt_vm`](crate::hypervisor::Hypervisor::adopt_vm) on
    /// the instance [`VmFactory::new_vm`] is given.
    fn pool_hypervisor(&self) -> HypervisorBox;

    /// The VM the runtime config describes, as a [`HypervisorConfig`] payload (kernel, initrd,
    /// kernel parameters, vCPUs, memory and the `[factory]` disks; no console log): what a
    /// pool should hold.
    fn vm_config(&self) -> RVec<u8>;

    /// A private directory (0700) for the factory's own files, such as its VMs' console logs;
    /// it is on the file system of the sandboxes' state, so a file in it can be renamed to a
    /// sandbox's console log.
    fn work_dir(&self) -> RString;

    /// Waits until the guest agent of the started VM `vm` answers, up to `timeout_ms`:
    /// `Ok`, or an error that says why not (the VM died, with the end of `console_log` if
    /// it is not empty; the time ran out).
    #[sabi(last_prefix_field)]
    fn wait_agent(&self, vm: RSlice<'_, u8>, console_log: RStr<'_>, timeout_ms: u64) -> RResult<(), PluginError>;

    /// The name of the runtime's hypervisor plugin (`qemu`, `kvm`), what a template is made
    /// with (added in 1.3; a host of an older 1.x answers `unknown`).
    fn hypervisor_plugin(&self) -> RString {
        RString::from("unknown")
    }

    /// The base factory's [`FactoryStatus`] payload, so a wrapping factory can show what its
    /// base holds (a template; added in 1.3; a host of an older 1.x answers an empty status).
    fn base_status(&self) -> RResult<RVec<u8>, PluginError> {
        RResult::ROk(FactoryStatus::empty("unknown").encode().into())
    }
}

/// A shared host object, as factories receive and keep it.
pub type FactoryHostBox = FactoryHost_TO<'static, RArc<()>>;

/// What a factory holds (the seed's factory status; `sandboxctl factory status`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FactoryStatus {
    /// Schema version of this payload.
    pub schema: u32,
    /// The factory plugin's kind of work (`new`, `cache`, `template`).
    pub factory: String,
    /// How many VMs it keeps ready (0 for a factory without a pool).
    pub size: u32,
    /// The VMs it holds now.
    #[serde(default)]
    pub vms: Vec<PooledVm>,
    /// The template its VMs are cloned from (a `template` factory, or a `cache` over one;
    /// added in 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateInfo>,
}
payload!(FactoryStatus, 1);

impl FactoryStatus {
    /// The status of a factory that holds nothing.
    pub fn empty(factory: &str) -> FactoryStatus {
        FactoryStatus { schema: 1, factory: factory.to_owned(), size: 0, vms: vec![], template: None }
    }
}

/// A saved VM template, as a factory's status shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TemplateInfo {
    /// Its directory.
    pub path: PathBuf,
    /// The bytes its files take on their file system (the RAM file counts only the pages the
    /// template's guest touched).
    pub disk_bytes: u64,
    /// The hypervisor plugin that made it.
    pub hypervisor: String,
    /// The VM it was made from (and every clone is).
    pub config: HypervisorConfig,
    /// When it was saved, in seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// How many VMs were cloned from it by this factory instance.
    pub clones: u64,
}

/// A VM a factory holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PooledVm {
    /// The id it was made under.
    pub id: String,
    /// `booting` (its agent does not answer yet) or `ready`.
    pub state: String,
    /// What the hypervisor plugin says of it (`running`, `dead`, ...).
    pub vm_status: String,
    /// Milliseconds since it was made.
    pub age_ms: u64,
    /// The VMM's pid, where the state blob names one.
    pub pid: Option<i64>,
}

/// What a factory plugin author implements, in plain Rust types. The plugin's
/// [`Plugin::new_vm_factory`](crate::Plugin::new_vm_factory) returns one, built from the
/// plugin's config (the `[factory]` table without the keys the core reads, as JSON).
///
/// # The contract
///
/// - [`init`](Self::init) comes first, once; keep the host object for later calls and for
///   background work (it is `Send + Sync` and cheap to clone).
/// - [`new_vm`](Self::new_vm) may be called from several threads at once.
/// - Every VM the factory returns belongs to the caller from then on; every VM it keeps is
///   its own to stop, at the latest in [`close`](Self::close).
/// - Errors are [`PluginError`]s that name what was wrong (the config key, the VM), as for
///   the hypervisor ([`HypervisorPlugin`](crate::hypervisor::HypervisorPlugin)).
pub trait VmFactoryPlugin: Send + Sync + 'static {
    /// Receives what the host lends (see [`FactoryHost`]); a factory with background work
    /// (filling a pool) starts it here. The default keeps nothing.
    fn init(&self, _host: FactoryHostBox) -> Result<(), PluginError> {
        Ok(())
    }

    /// A VM for `sandbox_id` under `hypervisor`'s run directory, as its state blob: started
    /// (its VMM runs; the host waits for its agent), its serial console written to
    /// `config.console_log`, with everything `config` asks for. A factory that cannot serve
    /// `config` as asked makes the VM another way (the base factory) rather than hand out a
    /// different one. On an error nothing of that VM may be left running.
    fn new_vm(&self, hypervisor: &HypervisorBox, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError>;

    /// What the factory holds. The default: nothing.
    fn status(&self) -> Result<FactoryStatus, PluginError> {
        Ok(FactoryStatus::empty("unknown"))
    }

    /// Stops its background work and every VM it still holds. The default does nothing.
    fn close(&self) -> Result<(), PluginError> {
        Ok(())
    }

    /// [`close`](Self::close), then removes what the factory keeps beyond its process (a
    /// template's files): `sandboxctl factory destroy`. It may come without
    /// [`init`](Self::init). The default is `close`.
    fn destroy(&self) -> Result<(), PluginError> {
        self.close()
    }
}

/// The first key in which `wanted` differs from `pool`, among those that decide which VM a
/// sandbox gets (`kernel`, `initrd`, `kernel_params`, `vcpus`, `memory_mib`, `disks`,
/// `extra`), with both values: what a factory logs when a pooled VM cannot serve a request.
/// The console log is not compared (each VM has its own).
pub fn config_mismatch(pool: &HypervisorConfig, wanted: &HypervisorConfig) -> Option<(&'static str, String, String)> {
    let show = |v: &dyn std::fmt::Debug| format!("{v:?}");
    let keys: [(&'static str, String, String); 7] = [
        ("kernel", show(&pool.kernel), show(&wanted.kernel)),
        ("initrd", show(&pool.initrd), show(&wanted.initrd)),
        ("kernel_params", show(&pool.kernel_params), show(&wanted.kernel_params)),
        ("vcpus", show(&pool.vcpus), show(&wanted.vcpus)),
        ("memory_mib", show(&pool.memory_mib), show(&wanted.memory_mib)),
        ("disks", show(&pool.disks), show(&wanted.disks)),
        ("extra", show(&pool.extra), show(&wanted.extra)),
    ];
    keys.into_iter().find(|(_, a, b)| a != b)
}

/// Wraps a [`VmFactoryPlugin`] into the FFI trait object, catching panics.
pub fn factory_into_ffi<F: VmFactoryPlugin>(f: F) -> VmFactoryBox {
    VmFactory_TO::from_value(FactoryAdapter(f), abi_stable::sabi_trait::TD_Opaque)
}

struct FactoryAdapter<F>(F);

impl<F: VmFactoryPlugin> VmFactory for FactoryAdapter<F> {
    fn new_vm(
        &self,
        hypervisor: &HypervisorBox,
        sandbox_id: RStr<'_>,
        config: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError> {
        guard("new_vm", || {
            let config = HypervisorConfig::decode(&config)?;
            self.0.new_vm(hypervisor, sandbox_id.as_str(), &config).map(RVec::from)
        })
    }

    fn init(&self, host: FactoryHostBox) -> RResult<(), PluginError> {
        guard("init", || self.0.init(host))
    }

    fn status(&self) -> RResult<RVec<u8>, PluginError> {
        guard("status", || self.0.status().map(|s| s.encode().into()))
    }

    fn close(&self) -> RResult<(), PluginError> {
        guard("close", || self.0.close())
    }

    fn destroy(&self) -> RResult<(), PluginError> {
        guard("destroy", || self.0.destroy())
    }
}

/// The host's view of a factory plugin instance, in plain Rust types. Every call blocks.
pub struct VmFactoryHandle {
    inner: VmFactoryBox,
    plugin: String,
}

impl std::fmt::Debug for VmFactoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmFactoryHandle").field("plugin", &self.plugin).finish()
    }
}

impl VmFactoryHandle {
    /// Wraps a factory trait object that came from the plugin named `plugin`.
    pub fn new(inner: VmFactoryBox, plugin: impl Into<String>) -> Self {
        Self { inner, plugin: plugin.into() }
    }

    /// The name of the plugin behind this handle.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    fn span(&self, op: &'static str) -> tracing::span::EnteredSpan {
        tracing::debug_span!("plugin", plugin = %self.plugin, op).entered()
    }

    /// See [`VmFactoryPlugin::init`].
    pub fn init(&self, host: FactoryHostBox) -> Result<(), PluginError> {
        let _span = self.span("init");
        self.inner.init(host).into_result()
    }

    /// See [`VmFactoryPlugin::new_vm`].
    pub fn new_vm(&self, hypervisor: &HypervisorBox, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("new_vm");
        let bytes = config.encode();
        Ok(self.inner.new_vm(hypervisor, sandbox_id.into(), bytes.as_slice().into()).into_result()?.into_vec())
    }

    /// See [`VmFactoryPlugin::status`]; a payload the host cannot read is an error.
    pub fn status(&self) -> Result<FactoryStatus, PluginError> {
        let _span = self.span("status");
        let bytes = self.inner.status().into_result()?;
        FactoryStatus::decode(&bytes)
    }

    /// See [`VmFactoryPlugin::close`].
    pub fn close(&self) -> Result<(), PluginError> {
        let _span = self.span("close");
        self.inner.close().into_result()
    }

    /// See [`VmFactoryPlugin::destroy`].
    pub fn destroy(&self) -> Result<(), PluginError> {
        let _span = self.span("destroy");
        self.inner.destroy().into_result()
    }
}
