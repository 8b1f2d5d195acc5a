//! Booting a created VM: the VMM runs daemonized, outliving the process that started it.

use super::{check_no_live_vmm, OpError, CONTROL_TIMEOUT};
use crate::control::{Control, RunRequest};
use crate::dir;
use crate::process::{self, KILL_WAIT};
use crate::state::VmState;
use crate::Lifecycle;
use tracing::{debug, info, warn};

/// Boots a created VM: clears what an earlier run left in its directory, runs the VMM daemonized
/// ([`Control::run_daemonized`]), records its pid and start time from the pid file, checks that
/// its control channel answers and lets the plugin start the guest ([`Control::start_guest`]).
/// A VMM that does not answer is killed.
pub fn start_vm<F: Control>(state: &VmState<F>) -> Result<VmState<F>, OpError<F::Error>> {
    if state.lifecycle != Lifecycle::Created {
        return Err(OpError::wrong_state(state, state.lifecycle.name(), "start (only a created VM can start)"));
    }
    let id = state.sandbox_id.as_str();
    let dir = state.vm_dir();
    check_no_live_vmm::<F>(&dir, id)?;
    dir::ensure_private(dir.path())?;
    let mut stale = dir.sockets(state.fields.agent_ports());
    stale.push(dir.pidfile());
    dir::remove_stale(stale)?;
    let failed = |why: String| OpError::StartFailed { sandbox_id: id.into(), program: F::THE_PROGRAM, why };
    let mut next = state.clone();
    F::run_daemonized(&mut next).map_err(failed)?;
    let pidfile = dir.pidfile();
    let started = process::read_pidfile(&pidfile).and_then(|pid| Some((pid, process::stat(pid)?.start_time)));
    let Some((pid, start_time)) = started else {
        // The VMM said it started but left no usable pid file (or exited at once).
        let _ = F::request(&next, RunRequest::Quit, CONTROL_TIMEOUT);
        return Err(failed(format!("no live {} pid in {pidfile:?} after it started", F::PROGRAM)));
    };
    next.lifecycle = Lifecycle::Running;
    next.pid = Some(pid);
    next.start_time = Some(start_time);
    let checked = F::vcpus_running(&next, CONTROL_TIMEOUT).and_then(|running| {
        debug!(sandbox_id = id, running, "{} answers", F::THE_PROGRAM);
        F::start_guest(&next, CONTROL_TIMEOUT)
    });
    if let Err(source) = checked {
        let e = OpError::Control { sandbox_id: id.into(), source };
        warn!(sandbox_id = id, "{}; killing {} pid {pid}", error_report::chain(&e), F::PROGRAM);
        if process::signal(F::PROGRAM, pid, start_time, libc::SIGKILL).is_ok() {
            process::wait_gone(pid, start_time, KILL_WAIT);
        }
        return Err(e);
    }
    info!(sandbox_id = id, pid, "started VM");
    Ok(next)
}
