//! Pausing, resuming, stopping and reporting on a VM: requests over its control channel, with
//! signals to stop a VMM that does not quit.

use super::{live_process, OpError, CONTROL_TIMEOUT, STATUS_TIMEOUT};
use crate::control::Control;
use crate::state::VmState;
use crate::{dir, process, Lifecycle};
use std::time::Duration;
use tracing::{debug, info};

/// Sends a command that changes the run state ([`Commands::pause`], [`Commands::resume`]) to a
/// live VM that is `from`; the VM is then `to`.
///
/// [`Commands::pause`]: crate::control::Commands::pause
/// [`Commands::resume`]: crate::control::Commands::resume
fn run_state_change<F: Control>(
    state: &VmState<F>,
    (from, to): (Lifecycle, Lifecycle),
    command: &'static str,
    operation: &'static str,
) -> Result<VmState<F>, OpError<F::Error>> {
    if state.lifecycle != from {
        return Err(OpError::wrong_state(state, state.lifecycle.name(), operation));
    }
    if live_process(state).is_none() {
        return Err(OpError::wrong_state(state, "dead", operation));
    }
    F::call(state, command, CONTROL_TIMEOUT).map_err(|source| OpError::Control { sandbox_id: state.sandbox_id.clone(), source })?;
    info!(sandbox_id = %state.sandbox_id, "VM {}", to.name());
    Ok(VmState { lifecycle: to, ..state.clone() })
}

/// Pauses a running VM.
pub fn pause_vm<F: Control>(state: &VmState<F>) -> Result<VmState<F>, OpError<F::Error>> {
    run_state_change(state, (Lifecycle::Running, Lifecycle::Paused), F::COMMANDS.pause, "pause (it is not running)")
}

/// Resumes a paused VM.
pub fn resume_vm<F: Control>(state: &VmState<F>) -> Result<VmState<F>, OpError<F::Error>> {
    run_state_change(state, (Lifecycle::Paused, Lifecycle::Running), F::COMMANDS.resume, "resume (it is not paused)")
}

/// Stops the VM (its [`Commands::quit`], then SIGTERM and, after `stop_timeout`, SIGKILL if need be)
/// and removes its directory. Idempotent; never touches the console log.
///
/// [`Commands::quit`]: crate::control::Commands::quit
pub fn stop_vm<F: Control>(state: &VmState<F>, stop_timeout: Duration) -> Result<VmState<F>, OpError<F::Error>> {
    let id = state.sandbox_id.as_str();
    if let Some((pid, start)) = live_process(state) {
        info!(sandbox_id = id, pid, "stopping VM");
        let quit = || F::call(state, F::COMMANDS.quit, CONTROL_TIMEOUT.min(stop_timeout)).map(drop).map_err(|e| crate::chain(&e));
        process::terminate(F::PROGRAM, pid, start, stop_timeout, quit)
            .map_err(|source| OpError::Process { sandbox_id: id.into(), program: F::THE_PROGRAM, source })?;
    }
    dir::remove(state.vm_dir().path())?;
    if state.lifecycle != Lifecycle::Stopped {
        info!(sandbox_id = id, "VM stopped");
    }
    Ok(VmState { lifecycle: Lifecycle::Stopped, ..state.clone() })
}

/// `created`, `running`, `paused`, `stopped` or `dead`. A live VMM whose vCPUs do not run
/// ([`Control::running`] is false for its answer to [`Commands::query`]) is `paused`: resuming
/// is what would run them. A live VMM whose control channel does not answer within
/// [`STATUS_TIMEOUT`] is `running`.
///
/// [`Commands::query`]: crate::control::Commands::query
pub fn vm_status<F: Control>(state: &VmState<F>) -> &'static str {
    match state.lifecycle {
        Lifecycle::Created => return "created",
        Lifecycle::Stopped => return "stopped",
        Lifecycle::Running | Lifecycle::Paused => {}
    }
    if live_process(state).is_none() {
        return "dead";
    }
    match F::call(state, F::COMMANDS.query, STATUS_TIMEOUT) {
        Ok(answer) if F::running(&answer) => "running",
        Ok(_) => "paused",
        Err(e) => {
            debug!(sandbox_id = %state.sandbox_id, "{}; the process is alive: running", crate::chain(&e));
            "running"
        }
    }
}
