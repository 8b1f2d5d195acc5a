//! What is this plugin's own in its VM operations: creating a VM (the accelerator, the VM
//! directory, QEMU's command line) and its agent endpoints. Starting, stopping, pausing, resuming
//! and the status are [`hypervisor_framework::ops`], over this plugin's hooks ([`crate::control`]).

use crate::accel::{self, AccelError};
use crate::argv::{self, VmArgs, AGENT_VSOCK_PORT};
use crate::config::QemuConfig;
use crate::qmp::QmpError;
use crate::spec;
use crate::state::{Lifecycle, QemuFields, TemplateSource, VmState};
use plugin_api::endpoint::AgentEndpoint;
use plugin_api::hypervisor::HypervisorConfig;
use std::path::Path;
use tracing::{debug, info};
use hypervisor_framework::find_program;
use hypervisor_framework::ops::{self, OpError};

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A reason every plugin shares (the control channel's errors are [`QmpError`]s).
    #[error(transparent)]
    Op(#[from] OpError<QmpError>),
    /// KVM was asked for and cannot be used.
    #[error(transparent)]
    Accel(#[from] AccelError),
    /// The QEMU binary is not there.
    #[error("QEMU binary {0:?} not found (in PATH or as a path): install the Debian package qemu-system-x86 or set \"qemu\" in the plugin config")]
    QemuMissing(String),
}

/// Creates the VM (its directory and its state); starts nothing.
pub fn create_vm(config: &QemuConfig, sandbox_id: &str, hv: &HypervisorConfig) -> Result<VmState, QemuError> {
    let spec = ops::check_request::<QemuFields>(sandbox_id, hv, &spec::LIMITS)?;
    let qemu = find_program(&config.qemu).ok_or_else(|| QemuError::QemuMissing(config.qemu.clone()))?;
    let (kvm, cpuinfo) = accel::probe();
    let (accel, why) = accel::decide(config.accel, &kvm, &cpuinfo)?;
    info!(sandbox_id, "{why}");
    let dir = ops::prepare_dir::<QemuFields>(&config.run_dir, sandbox_id, config.agent_ports)?;
    let vsock_cid = Path::new("/dev/vhost-vsock").exists().then(|| argv::vsock_cid(sandbox_id, 0));
    let args = VmArgs {
        qemu: &qemu,
        sandbox_id,
        dir: &dir,
        machine: &config.machine,
        accel,
        agent_ports: config.agent_ports,
        network: config.network,
        vsock_cid,
        spec: &spec,
        clone: false,
    };
    let argv = argv::build(&args);
    debug!(sandbox_id, ?argv, "QEMU command line");
    let template = spec.memory_file.as_ref().map(|file| {
        let made_from = HypervisorConfig { memory_file: Some(file.clone()), ..hv.clone() };
        Box::new(TemplateSource { config: made_from, machine: config.machine.clone(), network: config.network })
    });
    let fields = QemuFields { accel, agent_ports: config.agent_ports, vsock_cid, template, incoming: None };
    Ok(VmState::created(sandbox_id, dir.path().to_owned(), argv, fields))
}

/// The agent's addresses, best first.
pub fn agent_endpoint(state: &VmState) -> Result<Vec<AgentEndpoint>, QemuError> {
    if state.lifecycle == Lifecycle::Stopped {
        return Err(QemuError::Op(OpError::wrong_state(state, "stopped", "give an agent endpoint")));
    }
    let dir = state.vm_dir();
    let vsock = state.fields.vsock_cid.map(|cid| AgentEndpoint::Vsock(cid, AGENT_VSOCK_PORT));
    let serial = (0..state.fields.agent_ports).map(|n| AgentEndpoint::Serial(dir.agent_socket(n)));
    Ok(vsock.into_iter().chain(serial).collect())
}
