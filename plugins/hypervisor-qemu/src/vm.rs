//! The VM operations. Each takes the state blob, looks at the VM directory and the process,
//! and returns the updated blob; nothing is kept in memory between calls, so any host process
//! can carry on where another left off.

use crate::accel::{self, AccelError};
use crate::argv::{self, VmArgs, VmDir, AGENT_VSOCK_PORT};
use crate::config::QemuConfig;
use crate::qmp::{self, QmpError};
use crate::spec::{self, SpecError};
use crate::state::{Lifecycle, QemuFields, StateError, VmState};
use plugin_api::hypervisor::HypervisorConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tracing::{debug, info, warn};
use vm_process::dir::{self as vm_dir, DirError};
use vm_process::process::{self, ProcessError, KILL_WAIT};
use vm_process::{find_program, validate_sandbox_id, SandboxIdError};

/// The QMP timeout of every call but [`vm_status`].
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// The QMP timeout of [`vm_status`], which must answer quickly.
const STATUS_QMP_TIMEOUT: Duration = Duration::from_secs(2);
/// How many vsock CIDs to try when QEMU reports one in use.
const VSOCK_ATTEMPTS: u32 = 5;
/// The most of QEMU's stderr an error carries.
const MAX_STDERR: usize = 4000;

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A bad sandbox id.
    #[error(transparent)]
    SandboxId(#[from] SandboxIdError),
    /// A bad HypervisorConfig.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A bad state blob.
    #[error(transparent)]
    State(#[from] StateError),
    /// KVM was asked for and cannot be used.
    #[error(transparent)]
    Accel(#[from] AccelError),
    /// The QEMU binary is not there.
    #[error("QEMU binary {0:?} not found (in PATH or as a path): install the Debian package qemu-system-x86 or set \"qemu\" in the plugin config")]
    QemuMissing(String),
    /// A socket path is too long for a Unix socket address.
    #[error("socket path {0:?} is longer than 107 bytes: use a shorter run_dir")]
    SocketPathTooLong(PathBuf),
    /// A file-system operation on the VM directory failed.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The VM directory holds a live QEMU.
    #[error("VM directory {dir:?} already holds a running QEMU (pid {pid}): stop that VM first")]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
        /// QEMU's pid.
        pid: i32,
    },
    /// The operation does not apply in the VM's state.
    #[error("VM {sandbox_id} is {state}: cannot {operation}")]
    WrongState {
        /// The sandbox.
        sandbox_id: String,
        /// Its state (`created`, `running`, `paused`, `stopped`, `dead`).
        state: &'static str,
        /// The operation.
        operation: &'static str,
    },
    /// QEMU could not be run, or exited with an error while starting.
    #[error("QEMU failed to start VM {sandbox_id}: {why}")]
    StartFailed {
        /// The sandbox.
        sandbox_id: String,
        /// Its status and stderr, or why it could not run.
        why: String,
    },
    /// A QMP exchange failed.
    #[error("VM {sandbox_id}")]
    Qmp {
        /// The sandbox.
        sandbox_id: String,
        /// The cause.
        #[source]
        source: QmpError,
    },
    /// Stopping QEMU failed (a signal was refused, or it survived SIGKILL).
    #[error("VM {sandbox_id}: stopping QEMU")]
    Process {
        /// The sandbox.
        sandbox_id: String,
        /// The cause.
        #[source]
        source: ProcessError,
    },
}

/// Creates the VM (its directory and its state); starts nothing.
pub fn create_vm(config: &QemuConfig, sandbox_id: &str, hv: &HypervisorConfig) -> Result<VmState, VmError> {
    validate_sandbox_id(sandbox_id)?;
    let spec = spec::validate(hv)?;
    let qemu = find_program(&config.qemu).ok_or_else(|| VmError::QemuMissing(config.qemu.clone()))?;
    let (kvm, cpuinfo) = accel::probe();
    let (accel, why) = accel::decide(config.accel, &kvm, &cpuinfo)?;
    info!(sandbox_id, "{why}");
    let dir = VmDir(config.run_dir.join(sandbox_id));
    if let Some(path) = argv::socket_path_too_long(&dir, config.agent_ports) {
        return Err(VmError::SocketPathTooLong(path));
    }
    let vsock_cid = Path::new("/dev/vhost-vsock").exists().then(|| argv::vsock_cid(sandbox_id, 0));
    prepare_dir(&dir, sandbox_id)?;
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
    };
    let argv = argv::build(&args);
    debug!(sandbox_id, ?argv, "QEMU command line");
    Ok(VmState::created(sandbox_id, dir.0, argv, QemuFields { accel, agent_ports: config.agent_ports, vsock_cid }))
}

/// Makes `<run_dir>/<id>` fresh and private, after checking no live QEMU uses it.
fn prepare_dir(dir: &VmDir, sandbox_id: &str) -> Result<(), VmError> {
    if let Some((pid, _)) = live_qemu_from_pidfile(dir, sandbox_id) {
        return Err(VmError::AlreadyRunning { dir: dir.0.clone(), pid });
    }
    Ok(vm_dir::fresh_private(dir.path())?)
}

/// The QEMU named in the directory's pid file, if it is alive and runs this sandbox.
fn live_qemu_from_pidfile(dir: &VmDir, sandbox_id: &str) -> Option<(i32, u64)> {
    process::live_from_pidfile(&dir.pidfile(), &["-name", &format!("sandbox-{sandbox_id}")])
}

fn wrong_state(state: &VmState, current: &'static str, operation: &'static str) -> VmError {
    VmError::WrongState { sandbox_id: state.sandbox_id.clone(), state: current, operation }
}

/// Boots a created VM: runs QEMU daemonized, records its pid and start time and checks that
/// QMP answers.
pub fn start_vm(state: &VmState) -> Result<VmState, VmError> {
    if state.lifecycle != Lifecycle::Created {
        return Err(wrong_state(state, state.lifecycle.name(), "start (only a created VM can start)"));
    }
    let id = state.sandbox_id.as_str();
    let dir = state.vm_dir();
    if let Some((pid, _)) = live_qemu_from_pidfile(&dir, id) {
        return Err(VmError::AlreadyRunning { dir: dir.0.clone(), pid });
    }
    vm_dir::ensure_private(dir.path())?;
    let mut stale = vec![dir.pidfile(), dir.qmp_socket()];
    stale.extend((0..state.fields.agent_ports).map(|n| dir.agent_socket(n)));
    vm_dir::remove_stale(stale)?;
    let mut next = state.clone();
    run_daemonized(&mut next)?;
    let pidfile = dir.pidfile();
    let started = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok())
        .and_then(|pid| Some((pid, process::stat(pid)?.start_time)));
    let Some((pid, start_time)) = started else {
        // QEMU said it started but left no usable pid file (or exited at once).
        let _ = qmp::execute(&dir.qmp_socket(), &dir.qmp_lock(), "quit", QMP_TIMEOUT);
        return Err(VmError::StartFailed { sandbox_id: id.into(), why: format!("no live QEMU pid in {pidfile:?} after it started") });
    };
    next.pid = Some(pid);
    next.start_time = Some(start_time);
    next.lifecycle = Lifecycle::Running;
    match qmp::execute(&dir.qmp_socket(), &dir.qmp_lock(), "query-status", QMP_TIMEOUT) {
        Ok(status) => debug!(sandbox_id = id, %status, "QMP answers"),
        Err(source) => {
            warn!(sandbox_id = id, "QMP does not answer after start ({source}); killing QEMU pid {pid}");
            if process::signal("QEMU", pid, start_time, libc::SIGKILL).is_ok() {
                process::wait_gone(pid, start_time, KILL_WAIT);
            }
            return Err(VmError::Qmp { sandbox_id: id.into(), source });
        }
    }
    info!(sandbox_id = id, pid, accel = state.fields.accel.name(), "started VM");
    Ok(next)
}

/// Runs `state.argv`, retrying with other vsock CIDs while QEMU reports the CID in use.
fn run_daemonized(state: &mut VmState) -> Result<(), VmError> {
    let id = state.sandbox_id.clone();
    let mut attempt = 0;
    loop {
        let output = Command::new(&state.argv[0])
            .args(&state.argv[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| VmError::StartFailed { sandbox_id: id.clone(), why: format!("running {}: {e}", state.argv[0]) })?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let cid_in_use = stderr.contains("guest-cid") || stderr.contains("guest cid") || stderr.contains("in use");
        if let (Some(cid), true) = (state.fields.vsock_cid, cid_in_use && attempt + 1 < VSOCK_ATTEMPTS) {
            let new_cid = argv::vsock_cid(&id, attempt + 1);
            warn!(sandbox_id = %id, "vsock CID {cid} seems taken ({}); trying {new_cid}", stderr.trim());
            argv::set_vsock_cid(&mut state.argv, new_cid);
            state.fields.vsock_cid = Some(new_cid);
            attempt += 1;
            continue;
        }
        let mut text = stderr.trim().to_owned();
        if text.len() > MAX_STDERR {
            let cut = (text.len() - MAX_STDERR..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text = format!("...{}", &text[cut..]);
        }
        return Err(VmError::StartFailed { sandbox_id: id, why: format!("{} exited with {}: {text}", state.argv[0], output.status) });
    }
}

/// The VM's process, if it is alive (the recorded one, or for a VM that never recorded one,
/// a QEMU of this sandbox named by the pid file).
fn live_process(state: &VmState) -> Option<(i32, u64)> {
    match state.process() {
        Some((pid, start)) => process::is_alive(pid, start).then_some((pid, start)),
        None => live_qemu_from_pidfile(&state.vm_dir(), &state.sandbox_id),
    }
}

/// Sends a QMP command that changes the run state (`stop`, `cont`).
fn run_state_change(state: &VmState, from: Lifecycle, to: Lifecycle, command: &'static str, operation: &'static str) -> Result<VmState, VmError> {
    if state.lifecycle != from {
        return Err(wrong_state(state, state.lifecycle.name(), operation));
    }
    if live_process(state).is_none() {
        return Err(wrong_state(state, "dead", operation));
    }
    let dir = state.vm_dir();
    qmp::execute(&dir.qmp_socket(), &dir.qmp_lock(), command, QMP_TIMEOUT)
        .map_err(|source| VmError::Qmp { sandbox_id: state.sandbox_id.clone(), source })?;
    info!(sandbox_id = %state.sandbox_id, "VM {}", to.name());
    Ok(VmState { lifecycle: to, ..state.clone() })
}

/// Pauses a running VM (QMP `stop`).
pub fn pause_vm(state: &VmState) -> Result<VmState, VmError> {
    run_state_change(state, Lifecycle::Running, Lifecycle::Paused, "stop", "pause (it is not running)")
}

/// Resumes a paused VM (QMP `cont`).
pub fn resume_vm(state: &VmState) -> Result<VmState, VmError> {
    run_state_change(state, Lifecycle::Paused, Lifecycle::Running, "cont", "resume (it is not paused)")
}

/// Stops the VM (QMP `quit`, then SIGTERM/SIGKILL if need be) and removes its directory.
/// Idempotent; never touches the console log.
pub fn stop_vm(state: &VmState, stop_timeout: Duration) -> Result<VmState, VmError> {
    let id = state.sandbox_id.as_str();
    let dir = state.vm_dir();
    if let Some((pid, start)) = live_process(state) {
        info!(sandbox_id = id, pid, "stopping VM");
        let quit = || qmp::execute(&dir.qmp_socket(), &dir.qmp_lock(), "quit", QMP_TIMEOUT.min(stop_timeout)).map(drop);
        process::terminate("QEMU", pid, start, stop_timeout, quit)
            .map_err(|source| VmError::Process { sandbox_id: id.into(), source })?;
    }
    vm_dir::remove(dir.path())?;
    if state.lifecycle != Lifecycle::Stopped {
        info!(sandbox_id = id, "VM stopped");
    }
    Ok(VmState { lifecycle: Lifecycle::Stopped, ..state.clone() })
}

/// The agent's addresses, best first.
pub fn agent_endpoint(state: &VmState) -> Result<String, VmError> {
    if state.lifecycle == Lifecycle::Stopped {
        return Err(wrong_state(state, "stopped", "give an agent endpoint"));
    }
    let dir = state.vm_dir();
    let vsock = state.fields.vsock_cid.map(|cid| format!("vsock:{cid}:{AGENT_VSOCK_PORT}"));
    let serial = (0..state.fields.agent_ports).map(|n| format!("serial:{}", dir.agent_socket(n).display()));
    Ok(vsock.into_iter().chain(serial).collect::<Vec<_>>().join(","))
}

/// `created`, `running`, `paused`, `stopped` or `dead`. A live QEMU whose vCPUs do not run
/// (QMP `running: false`: paused, but also `suspended`, `io-error`, `guest-panicked`,
/// `internal-error`, migration states, `shutdown` on its way out) is `paused`: `cont` is what
/// would resume it. A live QEMU whose QMP does not answer within 2 s is `running`.
pub fn vm_status(state: &VmState) -> &'static str {
    match state.lifecycle {
        Lifecycle::Created => return "created",
        Lifecycle::Stopped => return "stopped",
        Lifecycle::Running | Lifecycle::Paused => {}
    }
    if live_process(state).is_none() {
        return "dead";
    }
    let dir = state.vm_dir();
    match qmp::execute(&dir.qmp_socket(), &dir.qmp_lock(), "query-status", STATUS_QMP_TIMEOUT) {
        Ok(status) => {
            let running = status.get("running").and_then(serde_json::Value::as_bool);
            let running = running.unwrap_or_else(|| status.get("status").and_then(serde_json::Value::as_str) == Some("running"));
            if running {
                "running"
            } else {
                "paused"
            }
        }
        Err(e) => {
            debug!(sandbox_id = %state.sandbox_id, "QMP did not answer query-status ({e}); the process is alive: running");
            "running"
        }
    }
}
