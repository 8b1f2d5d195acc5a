//! The Sandbox API of the seed: management ([`Runtime`]), operations and relay ([`Sandbox`]),
//! and the hotplug table (not supported yet).
//!
//! Sandboxes outlive the process that made them: their state lives in the configured
//! MetadataStorage plugin ([`record`]), their VMs are processes of the hypervisor plugin, and
//! every call on a sandbox takes its cross-process lock ([`lock`]), reloads its record, checks
//! the state machine ([`state`]), acts, and saves.
//!
//! The files read bottom-up, each using only those above it: the data (`config`, `state`,
//! `record`, `lock`, `oci`); `context`, what a runtime's sandboxes share (config, store,
//! hypervisor plugin, lock-and-load, save, the VM's status); `guest`, the guest-side steps
//! (agent calls on one container); `handle`, the [`Sandbox`] handle (its snapshot, agent
//! connection and plugin calls); `status`; the operations (`lifecycle`, `containers`,
//! `relay`, `monitor`, `hotplug`); and `runtime`, the [`Runtime`] of the management API.

pub mod config;
mod containers;
pub(crate) mod context;
mod guest;
mod hotplug;
mod lifecycle;
pub mod lock;
mod monitor;
pub mod oci;
mod orphans;
pub mod record;
mod relay;
mod resources;
mod handle;
pub mod rules;
mod runtime;
pub mod state;
mod status;

pub use config::{
    load_sandbox_config, ContainerConfig, ProcessConfig, RootfsConfig, SandboxConfig, MAX_ID_LEN, MAX_VCPUS,
};
pub use monitor::{Monitor, MonitorEvent};
pub use orphans::OrphanVm;
pub use plugin_api::hypervisor::DiskConfig;
pub use relay::{IoStream, OutputReader, StdinWriter};
pub use runtime::Runtime;
pub use handle::{Process, Sandbox};
pub use state::{ContainerState, SandboxState, StateError};
pub use status::{ContainerStatus, ProcessStatus, SandboxStats, SandboxStatus};

/// Agent types that appear in the API.
pub use agent_protocol::pb::{ContainerStats, Interface, ProcessInfo, Route};

use crate::agent::{AgentError, EndpointError};
use crate::plugins::{OpenError, RegistryError};
use plugin_api::PluginError;

/// Why a Sandbox API call failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox or container config is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The runtime config is invalid (a file it names is missing).
    #[error(transparent)]
    RuntimeConfig(#[from] crate::config::ConfigError),
    /// The runtime config has no `[hypervisor]` table.
    #[error("the runtime config has no [hypervisor] table: running sandboxes needs one (plugin, kernel, initrd)")]
    NoHypervisor,
    /// A plugin could not be found or started.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A plugin the runtime config names could not be found or started (the error names the
    /// file and the table).
    #[error(transparent)]
    Plugins(#[from] OpenError),
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] record::StoreError),
    /// The sandbox lock could not be taken.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The state machine refused the call.
    #[error(transparent)]
    State(#[from] StateError),
    /// No such sandbox.
    #[error("no sandbox {id}")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The id is taken.
    #[error("sandbox {id} already exists")]
    Exists {
        /// The id.
        id: String,
    },
    /// No such container.
    #[error("sandbox {sandbox} has no container {id}")]
    ContainerNotFound {
        /// The sandbox.
        sandbox: String,
        /// The container asked for.
        id: String,
    },
    /// No such process.
    #[error("container {container} has no process {token}")]
    ProcessNotFound {
        /// The container.
        container: String,
        /// The token asked for.
        token: String,
    },
    /// The hypervisor plugin failed.
    #[error("hypervisor plugin {plugin} failed to {op} the VM of sandbox {sandbox}")]
    Hypervisor {
        /// The plugin.
        plugin: String,
        /// What it was asked.
        op: &'static str,
        /// The sandbox.
        sandbox: String,
        /// Its error.
        #[source]
        source: PluginError,
    },
    /// The VM factory could not be opened.
    #[error(transparent)]
    FactoryOpen(#[from] crate::factory::FactoryError),
    /// The VM factory failed (to make a sandbox's VM, to report its status).
    #[error("VM factory {plugin} failed to {op}")]
    Factory {
        /// The factory plugin.
        plugin: String,
        /// What it was asked (`make the VM of sandbox web`).
        op: String,
        /// Its error.
        #[source]
        source: PluginError,
    },
    /// Talking to the agent failed.
    #[error("the agent of sandbox {sandbox} failed")]
    Agent {
        /// The sandbox.
        sandbox: String,
        /// The cause.
        #[source]
        source: AgentError,
    },
    /// The VM booted but its agent never answered.
    #[error("the agent of sandbox {sandbox} did not come up; the console ends with:\n{console}")]
    Boot {
        /// The sandbox.
        sandbox: String,
        /// The last lines of the VM's console.
        console: String,
        /// The cause.
        #[source]
        source: AgentError,
    },
    /// The VM's process ended while it booted, before its agent answered.
    #[error("the VM of sandbox {sandbox} died while booting (VM status {vm_status}); the console ends with:\n{console}")]
    BootDied {
        /// The sandbox.
        sandbox: String,
        /// What the hypervisor plugin said of the VM.
        vm_status: String,
        /// The last lines of the VM's console.
        console: String,
    },
    /// Every agent channel is held by another process.
    #[error("all {count} agent channels of sandbox {sandbox} are held by other processes")]
    AgentBusy {
        /// The sandbox.
        sandbox: String,
        /// How many channels the VM has.
        count: usize,
    },
    /// The hypervisor gave an endpoint that does not parse.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The VM is not running (it died, or was never started).
    #[error("the VM of sandbox {sandbox} is {vm_status}")]
    VmNotRunning {
        /// The sandbox.
        sandbox: String,
        /// What the hypervisor plugin says of it.
        vm_status: String,
    },
    /// The agent's reply makes no sense (the guest is not trusted).
    #[error("the agent of sandbox {sandbox} gave a bad reply: {what}")]
    BadReply {
        /// The sandbox.
        sandbox: String,
        /// What was wrong.
        what: String,
    },
    /// A hotplug function; they come in a later issue.
    #[error("{function} is not supported yet: device and NIC hotplug come in a later release")]
    NotSupportedYet {
        /// The seed's name of the function.
        function: &'static str,
    },
    /// A file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A background task died.
    #[error("a runtime task failed: {0}")]
    Task(String),
}

/// Runs blocking work (plugin calls, locks) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, SandboxError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SandboxError::Task(e.to_string()))
}
