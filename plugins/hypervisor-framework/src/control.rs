//! A plugin's hooks into the shared VM operations ([`crate::ops`]): how its VMM is run and
//! recognised, and how its control channel (QEMU's QMP, the `vmm`'s JSON-lines API) is asked
//! to report or change the run state.

use crate::dir::VmDir;
use crate::state::{VmFields, VmState};
use std::time::Duration;

/// The run-state changes every VMM's control channel serves (QMP `stop`, `cont`, `quit`; the
/// vmm's `pause`, `resume`, `shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunRequest {
    /// Stop the vCPUs.
    Pause,
    /// Run the vCPUs again.
    Resume,
    /// End the VMM process.
    Quit,
}

impl RunRequest {
    /// What the request does, for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            RunRequest::Pause => "pause",
            RunRequest::Resume => "resume",
            RunRequest::Quit => "quit",
        }
    }
}

/// What the shared operations ask of a plugin. It is implemented by the plugin's state-blob
/// fields, so that a `VmState<F>` names its plugin.
pub trait Control: VmFields + Clone {
    /// The VMM as the subject of a sentence (`QEMU`, `the vmm`); [`VmFields::PROGRAM`] is
    /// the bare name (`QEMU`, `vmm`).
    const THE_PROGRAM: &'static str;
    /// Why a control request failed.
    type Error: std::error::Error + 'static;

    /// The consecutive arguments that mark this VM's VMM in a command line (QEMU's `-name
    /// sandbox-<id>`, the vmm's `--api-socket <dir>/api.sock`), or `None` when they cannot be
    /// named (then no process found through the pid file is taken for it).
    fn argv_marker(dir: &VmDir<Self::Layout>, sandbox_id: &str) -> Option<Vec<String>>;

    /// Runs `state.argv` and waits until the VMM has daemonized, its pid file written;
    /// `Err(why it did not start)`. It may change `state` (QEMU tries other vsock CIDs).
    fn run_daemonized(state: &mut VmState<Self>) -> Result<(), String>;

    /// What the plugin does once the control channel of a VMM it just started answers (the
    /// vmm, which daemonizes paused, starts its vCPUs); nothing by default.
    fn start_guest(state: &VmState<Self>, timeout: Duration) -> Result<(), Self::Error> {
        let _ = (state, timeout);
        Ok(())
    }

    /// Sends `request` over the VM's control channel; `Ok` once the VMM has done it.
    fn request(state: &VmState<Self>, request: RunRequest, timeout: Duration) -> Result<(), Self::Error>;

    /// Asks the VMM over its control channel whether the vCPUs run.
    fn vcpus_running(state: &VmState<Self>, timeout: Duration) -> Result<bool, Self::Error>;
}
