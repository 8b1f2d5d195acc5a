//! Pausing, resuming, stopping and reporting on a VM: requests over its control channel, with
//! signals to stop a VMM that does not quit.

use super::{live_process, OpError, CONTROL_TIMEOUT, STATUS_TIMEOUT};
use crate::control::{Control, RunRequest};
use crate::state::VmState;
use crate::{dir, process, Lifecycle};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Sends a request that changes the run state ([`RunRequest::Pause`], [`RunRequest::Resume`])
/// to a live VM that is `from`; the VM is then `to`.
fn run_state_change<F: Control>(
    state: &VmState<F>,
    (from, to): (Lifecycle, Lifecycle),
    request: RunRequest,
    operation: &'static str,
) -> Result<VmState<F>, OpError<F::Error>> {
    if state.lifecycle != from {
        return Err(OpError::wrong_state(state, state.lifecycle.name(), operation));
    }
    if live_process(state).is_none() {
        return Err(OpError::wrong_state(state, "dead", operation));
    }
    F::request(state, request, CONTROL_TIMEOUT).map_err(|source| OpError::Control { sandbox_id: state.sandbox_id.clone(), source })?;
    info!(sandbox_id = %state.sandbox_id, "VM {}", to.name());
    Ok(VmState { lifecycle: to, ..state.clone() })
}

/// Pauses a running VM.
pub fn pause_vm<F: Control>(state: &VmState<F>) -> Result<VmState<F>, OpError<F::Error>> {
    run_state_change(state, (Lifecycle::Running, Lifecycle::Paused), RunRequest::Pause, "pause (it is not running)")
}

/// Resumes a paused VM; one saved as a template never runs again.
pub fn resume_vm<F: Control>(state: &VmState<F>) -> Result<VmState<F>, OpError<F::Error>> {
    if crate::template::is_saved(state.vm_dir().path()) {
        return Err(crate::template::TemplateError::Saved { sandbox_id: state.sandbox_id.clone() }.into());
    }
    run_state_change(state, (Lifecycle::Paused, Lifecycle::Running), RunRequest::Resume, "resume (it is not paused)")
}

/// Stops the VM ([`RunRequest::Quit`], then SIGTERM and, after `stop_timeout`, SIGKILL if need
/// be) and removes its directory. Idempotent; never touches the console log.
pub fn stop_vm<F: Control>(state: &VmState<F>, stop_timeout: Duration) -> Result<VmState<F>, OpError<F::Error>> {
    let id = state.sandbox_id.as_str();
    if let Some((pid, start)) = live_process(state) {
        info!(sandbox_id = id, pid, "stopping VM");
        let quit = || F::request(state, RunRequest::Quit, CONTROL_TIMEOUT.min(stop_timeout)).map_err(|e| error_report::chain(&e));
        process::terminate(F::PROGRAM, pid, start, stop_timeout, quit)
            .map_err(|source| OpError::Process { sandbox_id: id.into(), program: F::THE_PROGRAM, source })?;
    } else if matches!(state.lifecycle, Lifecycle::Running | Lifecycle::Paused) {
        // It died behind the plugin's back: what it said last goes before its directory does.
        if let Some(tail) = vmm_log_tail::<F>(state) {
            warn!(sandbox_id = id, "{} had exited on its own; its log ends with:\n{tail}", F::THE_PROGRAM);
        }
    }
    dir::remove(state.vm_dir().path())?;
    if state.lifecycle != Lifecycle::Stopped {
        info!(sandbox_id = id, "VM stopped");
    }
    Ok(VmState { lifecycle: Lifecycle::Stopped, ..state.clone() })
}

/// How much of a dead VMM's log [`stop_vm`] logs.
const VMM_LOG_TAIL: usize = 4096;

/// The end of the VMM's log (the layout's [`Layout::VMM_LOG`](crate::dir::Layout::VMM_LOG)),
/// at most [`VMM_LOG_TAIL`] bytes from a line start; `None` without one or when it is empty.
pub fn vmm_log_tail<F: Control>(state: &VmState<F>) -> Option<String> {
    use crate::dir::Layout;
    let text = std::fs::read(state.vm_dir().path().join(<F::Layout as Layout>::VMM_LOG?)).ok()?;
    let start = text.len().saturating_sub(VMM_LOG_TAIL);
    let start = if start == 0 { 0 } else { text[start..].iter().position(|&b| b == b'\n').map_or(start, |n| start + n + 1) };
    let tail = String::from_utf8_lossy(&text[start..]).trim_end().to_owned();
    (!tail.is_empty()).then_some(tail)
}

/// `created`, `running`, `paused`, `stopped` or `dead`. A live VMM whose vCPUs do not run
/// ([`Control::vcpus_running`] is false) is `paused`: resuming is what would run them. A live
/// VMM whose control channel does not answer within [`STATUS_TIMEOUT`] is `running`.
pub fn vm_status<F: Control>(state: &VmState<F>) -> &'static str {
    match state.lifecycle {
        Lifecycle::Created => return "created",
        Lifecycle::Stopped => return "stopped",
        Lifecycle::Running | Lifecycle::Paused => {}
    }
    if live_process(state).is_none() {
        return "dead";
    }
    match F::vcpus_running(state, STATUS_TIMEOUT) {
        Ok(true) => "running",
        Ok(false) => "paused",
        Err(e) => {
            debug!(sandbox_id = %state.sandbox_id, "{}; the process is alive: running", error_report::chain(&e));
            "running"
        }
    }
}
