//! The VM directory of the kvm plugin: `<run_dir>/<sandbox_id>/`, mode 0700.

use hypervisor_framework::dir::Layout;

/// The hybrid-vsock socket in the VM directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// Where the vmm of a VM with a RAM file saves its state (its `--state-file`), in the VM
/// directory.
pub const VM_STATE_FILE: &str = "vmm-state.json";
/// The vmm's stderr (and stdout) in the VM directory.
pub const LOG: &str = "vmm.log";

/// The files in a VM's directory: `vmm.pid`, `api.sock`, [`VSOCK_SOCKET`], the agent ports'
/// sockets and [`LOG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmLayout;

impl Layout for KvmLayout {
    const PIDFILE: &'static str = "vmm.pid";
    const CONTROL_SOCKET: &'static str = "api.sock";
    const OTHER_SOCKETS: &'static [&'static str] = &[VSOCK_SOCKET];
    const VMM_LOG: Option<&'static str> = Some(LOG);
}

/// A VM's directory.
pub type VmDir = hypervisor_framework::dir::VmDir<KvmLayout>;
