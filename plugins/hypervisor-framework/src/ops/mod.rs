//! The VM operations every plugin runs the same way, over its [`Control`] hooks. Each takes the
//! state blob, looks at the VM directory and the process, and returns the updated blob; nothing
//! is kept in memory between calls, so any host process can carry on where another left off.
//!
//! - creating: [`check_request`] and [`prepare_dir`] (the plugin builds the argv in between);
//! - [`start_vm`]: run the VMM daemonized, record its pid and start time, check its control
//!   channel;
//! - [`pause_vm`], [`resume_vm`], [`stop_vm`] and [`vm_status`];
//! - [`inventory`]: the copy of each VM's blob in its directory, [`list_vms`] and [`adopt_vm`];
//! - [`OpError`]: why one failed, for the reasons every plugin shares.

mod error;
pub mod inventory;
mod run_state;
mod start;

pub use error::OpError;
pub use inventory::{adopt_vm, list_vms};
pub use run_state::{pause_vm, resume_vm, stop_vm, vm_status, vmm_log_tail};
pub use start::start_vm;

use crate::control::Control;
use crate::dir::{self, VmDir};
use crate::process;
use crate::spec::{self, Limits, VmSpec};
use crate::state::VmState;
use plugin_api::hypervisor::HypervisorConfig;
use std::path::Path;
use std::time::Duration;

/// The control-channel timeout of every request but [`vm_status`]'s.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// The control-channel timeout of [`vm_status`], which must answer quickly.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks what `create_vm` is given: the sandbox id, then the config within `limits`.
pub fn check_request<F: Control>(sandbox_id: &str, config: &HypervisorConfig, limits: &Limits) -> Result<VmSpec, OpError<F::Error>> {
    crate::validate_sandbox_id(sandbox_id)?;
    Ok(spec::validate(config, limits)?)
}

/// Makes `<run_dir>/<sandbox_id>` ready for a new VM with `agent_ports` agent ports: its socket
/// paths must fit in a socket address and no live VMM may use it (one that was never stopped);
/// then it is made fresh and private.
pub fn prepare_dir<F: Control>(run_dir: &Path, sandbox_id: &str, agent_ports: u32) -> Result<VmDir<F::Layout>, OpError<F::Error>> {
    let dir = VmDir::new(run_dir.join(sandbox_id));
    if let Some(path) = dir::too_long_socket(dir.sockets(agent_ports)) {
        return Err(OpError::SocketPathTooLong(path));
    }
    check_no_live_vmm::<F>(&dir, sandbox_id)?;
    dir::fresh_private(dir.path())?;
    Ok(dir)
}

/// The VM's process, if it is alive: the recorded one, or for a VM that never recorded one, the
/// VMM of this VM named by the pid file.
pub fn live_process<F: Control>(state: &VmState<F>) -> Option<(i32, u64)> {
    match state.process() {
        Some((pid, start)) => process::is_alive(pid, start).then_some((pid, start)),
        None => live_from_pidfile::<F>(&state.vm_dir(), &state.sandbox_id),
    }
}

/// The VMM named in the directory's pid file, if it is alive and its command line holds the
/// plugin's [`Control::argv_marker`] for this VM.
fn live_from_pidfile<F: Control>(dir: &VmDir<F::Layout>, sandbox_id: &str) -> Option<(i32, u64)> {
    let marker = F::argv_marker(dir, sandbox_id)?;
    let marker: Vec<&str> = marker.iter().map(String::as_str).collect();
    process::live_from_pidfile(&dir.pidfile(), &marker)
}

/// [`OpError::AlreadyRunning`] when the directory's pid file names a live VMM of this VM.
fn check_no_live_vmm<F: Control>(dir: &VmDir<F::Layout>, sandbox_id: &str) -> Result<(), OpError<F::Error>> {
    match live_from_pidfile::<F>(dir, sandbox_id) {
        Some((pid, _)) => Err(OpError::AlreadyRunning { dir: dir.path().to_owned(), pid, program: F::PROGRAM }),
        None => Ok(()),
    }
}
