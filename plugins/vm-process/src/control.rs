//! A plugin's hooks into the shared VM operations ([`crate::ops`]): how its VMM is run and
//! recognised, and how its control channel (QEMU's QMP, the `vmm`'s JSON-lines API) is asked
//! to report or change the run state.

use crate::dir::VmDir;
use crate::state::{VmFields, VmState};
use std::time::Duration;

/// What a VMM's control channel calls the run-state requests every one of them serves (QMP
/// commands, the vmm's ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commands {
    /// Report the run state (QMP `query-status`, the vmm's `state`).
    pub query: &'static str,
    /// Stop the vCPUs (QMP `stop`, the vmm's `pause`).
    pub pause: &'static str,
    /// Run the vCPUs again (QMP `cont`, the vmm's `resume`).
    pub resume: &'static str,
    /// Exit (QMP `quit`, the vmm's `shutdown`).
    pub quit: &'static str,
}

/// What the shared operations ask of a plugin. It is implemented by the plugin's state-blob
/// fields, so that a `VmState<F>` names its plugin.
pub trait Control: VmFields + Clone {
    /// The VMM as the subject of a sentence (`QEMU`, `the vmm`); [`VmFields::PROGRAM`] is
    /// the bare name (`QEMU`, `vmm`).
    const THE_PROGRAM: &'static str;
    /// The run-state requests' names in the control channel.
    const COMMANDS: Commands;
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

    /// Sends `command` (one of [`Control::COMMANDS`], or a plugin's own) over the VM's control
    /// channel and returns the answer.
    fn call(state: &VmState<Self>, command: &'static str, timeout: Duration) -> Result<serde_json::Value, Self::Error>;

    /// Whether an answer to [`Commands::query`] says the vCPUs run.
    fn running(answer: &serde_json::Value) -> bool;
}
