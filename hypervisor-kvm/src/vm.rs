//! What is this plugin's own in its VM operations: creating a VM (checks, the VM directory, the
//! vmm's command line) and its agent endpoints. Starting, stopping, pausing, resuming and the
//! status are [`hypervisor_framework::ops`], over this plugin's hooks ([`crate::control`]).

use crate::config::{KvmConfig, Network};
use crate::error::KvmError;
use crate::layout::{VmDir, VSOCK_SOCKET};
use crate::state::{KvmFields, Lifecycle, VmState};
use vmm_api::kernel::{kernel_format, KernelFormat};
use vmm_api::limits::{MAX_DEVICES, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use plugin_api::endpoint::AgentEndpoint;
use plugin_api::hypervisor::HypervisorConfig;
use std::path::Path;
use tracing::debug;
use hypervisor_framework::agent::{self, AGENT_VSOCK_PORT};
use hypervisor_framework::argv::Argv;
use hypervisor_framework::ops::{self, OpError};
use hypervisor_framework::spec::{Limits, VmSpec};

/// What this plugin lets a VM have: the vmm's own limits.
pub const LIMITS: Limits = Limits {
    plugin: "kvm",
    max_vcpus: MAX_VCPUS as u32,
    min_memory_mib: MIN_MEMORY_MIB,
    max_memory_mib: MAX_MEMORY_MIB,
};
/// The guest's vsock CID. Each VM has its own hybrid-vsock socket, so all can use the same.
pub const VSOCK_CID: u32 = 3;
/// Kernel parameters this plugin adds to the agent's: reboot through the i8042 reset line,
/// which the vmm turns into its exit (with `panic=-1`, a panic ends the vmm too), and
/// `pci=off`, since the vmm has no PCI bus for the kernel to probe.
pub const KERNEL_PARAMS: &str = "reboot=k pci=off";

/// What the vmm's command line is built from.
#[derive(Debug, Clone)]
pub struct VmArgs<'a> {
    /// The vmm binary (absolute).
    pub vmm: &'a Path,
    /// The VM directory.
    pub dir: &'a VmDir,
    /// The number of agent ports.
    pub agent_ports: u32,
    /// Whether the VM has a vsock device.
    pub vsock: bool,
    /// The network.
    pub network: &'a Network,
    /// The checked VM config.
    pub spec: &'a VmSpec,
    /// A template's saved state: the vmm restores it (`--restore`, the RAM file mapped
    /// private) instead of booting the kernel.
    pub restore: Option<&'a Path>,
}

/// The vmm's full argv, the binary first. It starts paused (`start_vm` checks the API, then
/// starts the vCPUs) and daemonizes. Paths are absolute and were checked to hold no ','.
pub fn build(a: &VmArgs<'_>) -> Vec<String> {
    let s = a.spec;
    let mut argv = Argv::new(a.vmm);
    match a.restore {
        Some(state) => argv.path("--restore", state),
        None => {
            argv.path("--kernel", &s.kernel);
            argv.opt_path("--initrd", s.initrd.as_deref());
            let cmdline = agent::kernel_cmdline(a.agent_ports, a.vsock, KERNEL_PARAMS, &s.kernel_params);
            argv.push(&["--cmdline", &cmdline]);
        }
    }
    argv.push(&[
        "--memory-mib",
        &s.memory_mib.to_string(),
        "--vcpus",
        &s.vcpus.to_string(),
    ]);
    let console = s.console_log.as_deref().unwrap_or(Path::new("/dev/null"));
    argv.path("--console-log", console);
    argv.opt_path("--memory-file", s.memory_file.as_deref());
    if s.memory_file.is_some() && a.restore.is_none() {
        // A VM a template can be saved from: where the vmm's `save` writes.
        argv.path("--state-file", &a.dir.file(crate::layout::VM_STATE_FILE));
    }
    argv.path("--api-socket", &a.dir.control_socket());
    argv.push(&["--paused"]);
    for d in &s.disks {
        let ro = if d.read_only { "on" } else { "off" };
        argv.push(&[
            "--disk",
            &format!("path={},ro={ro},id={}", d.path.display(), d.name),
        ]);
    }
    if a.vsock {
        argv.push(&[
            "--vsock",
            &format!(
                "cid={VSOCK_CID},socket={}",
                a.dir.file(VSOCK_SOCKET).display()
            ),
        ]);
    }
    for n in 0..a.agent_ports {
        let port = format!(
            "name={},socket={}",
            agent::port_name(n),
            a.dir.agent_socket(n).display()
        );
        argv.push(&["--serial-port", &port]);
    }
    if let Network::Tap(tap) = a.network {
        argv.push(&["--net", &format!("tap={tap}")]);
    }
    argv.push(&["--daemonize"]);
    argv.path("--pid-file", &a.dir.pidfile());
    argv.into_vec()
}

/// Checks that the kernel is an ELF vmlinux or a bzImage (what the vmm boots).
fn check_kernel_format(kernel: &Path) -> Result<(), KvmError> {
    match kernel_format(kernel) {
        Ok(KernelFormat::Elf | KernelFormat::BzImage) => Ok(()),
        Ok(KernelFormat::Unknown) => Err(KvmError::KernelFormat(kernel.to_owned())),
        Err(source) => Err(KvmError::KernelRead { path: kernel.to_owned(), source }),
    }
}

/// Creates the VM (its directory and its state); starts nothing.
pub fn create_vm(
    config: &KvmConfig,
    sandbox_id: &str,
    hv: &HypervisorConfig,
) -> Result<VmState, KvmError> {
    let spec = ops::check_request::<KvmFields>(sandbox_id, hv, &LIMITS)?;
    check_kernel_format(&spec.kernel)?;
    let devices = spec.disks.len()
        + 1
        + usize::from(config.vsock)
        + usize::from(config.network != Network::None);
    if devices > MAX_DEVICES {
        return Err(KvmError::TooManyDevices {
            count: devices,
            disks: spec.disks.len(),
        });
    }
    let vmm = config.find_vmm().map_err(KvmError::VmmMissing)?;
    let dir = ops::prepare_dir::<KvmFields>(&config.run_dir, sandbox_id, config.agent_ports)?;
    let args = VmArgs {
        vmm: &vmm,
        dir: &dir,
        agent_ports: config.agent_ports,
        vsock: config.vsock,
        network: &config.network,
        spec: &spec,
        restore: None,
    };
    let argv = build(&args);
    debug!(sandbox_id, ?argv, "vmm command line");
    let fields = KvmFields {
        agent_ports: config.agent_ports,
        vsock: config.vsock,
        template: spec.memory_file.is_some().then(|| hv.clone()),
    };
    Ok(VmState::created(
        sandbox_id,
        dir.path().to_owned(),
        argv,
        fields,
    ))
}

/// The agent's addresses, best first: hybrid vsock, then every serial port.
pub fn agent_endpoint(state: &VmState) -> Result<Vec<AgentEndpoint>, KvmError> {
    if state.lifecycle == Lifecycle::Stopped {
        let stopped = OpError::wrong_state(state, "stopped", "give an agent endpoint");
        return Err(KvmError::Op(stopped));
    }
    let dir = state.vm_dir();
    let vsock = state.fields.vsock.then(|| AgentEndpoint::HybridVsock(dir.file(VSOCK_SOCKET), AGENT_VSOCK_PORT));
    let serial = (0..state.fields.agent_ports).map(|n| AgentEndpoint::Serial(dir.agent_socket(n)));
    Ok(vsock.into_iter().chain(serial).collect())
}
