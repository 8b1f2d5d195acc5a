//! The VM operations. Each takes the state blob, looks at the VM directory and the process,
//! and returns the updated blob; nothing is kept in memory between calls, so any host process
//! can carry on where another left off.

use super::config::{KvmConfig, Network};
use super::state::{KvmFields, Lifecycle, StateError, VmState};
use crate::api::client::{self, ClientError};
use crate::boot::KernelFormat;
use crate::layout::{MAX_DEVICES, MAX_VCPUS};
use crate::memory::{MAX_MEMORY_BYTES, MIN_MEMORY_BYTES};
use plugin_api::hypervisor::HypervisorConfig;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use vm_process::agent::{self, AGENT_VSOCK_PORT};
use vm_process::argv::Argv;
use vm_process::dir::{self as vm_dir, DirError};
use vm_process::process::{self, ProcessError, KILL_WAIT};
use vm_process::spec::{Limits, SpecError, VmSpec};
use vm_process::{validate_sandbox_id, SandboxIdError};

/// What this plugin lets a VM have: the vmm's own limits.
pub const LIMITS: Limits = Limits {
    plugin: "kvm",
    max_vcpus: MAX_VCPUS as u32,
    min_memory_mib: MIN_MEMORY_BYTES >> 20,
    max_memory_mib: MAX_MEMORY_BYTES >> 20,
};
/// The guest's vsock CID. Each VM has its own hybrid-vsock socket, so all can use the same.
pub const VSOCK_CID: u32 = 3;
/// Kernel parameters this plugin adds to the agent's: reboot through the i8042 reset line,
/// which the vmm turns into its exit (with `panic=-1`, a panic ends the vmm too), and
/// `pci=off`, since the vmm has no PCI bus for the kernel to probe.
pub const KERNEL_PARAMS: &str = "reboot=k pci=off";
/// The API timeout of every call but [`vm_status`].
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// The API timeout of [`vm_status`], which must answer quickly.
const STATUS_API_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemonizing vmm may take to build the VM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of the vmm's log an error carries.
const MAX_LOG: u64 = 4000;

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
    /// The kernel is neither an ELF vmlinux nor a bzImage.
    #[error("HypervisorConfig.kernel = {0:?} is neither an ELF vmlinux (booted through PVH, the fast path) nor a bzImage (the fallback)")]
    KernelFormat(PathBuf),
    /// The kernel could not be read.
    #[error("reading the kernel {path:?}")]
    KernelRead {
        /// The kernel.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// More devices than the vmm has interrupt lines for.
    #[error("the VM would have {count} virtio devices ({disks} disks, the agent's console, vsock and network as configured); the vmm supports {MAX_DEVICES}")]
    TooManyDevices {
        /// All devices.
        count: usize,
        /// The disks among them.
        disks: usize,
    },
    /// The vmm binary is not there.
    #[error("the vmm binary was not found (looked at {}): build it (cargo build -p hypervisor-kvm) or set \"vmm\" in the kvm plugin config", looked_at(.0))]
    VmmMissing(Vec<PathBuf>),
    /// A socket path is too long for a Unix socket address.
    #[error("socket path {0:?} is longer than 107 bytes: use a shorter run_dir")]
    SocketPathTooLong(PathBuf),
    /// A file-system operation on the VM directory failed.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The VM directory holds a live vmm.
    #[error("VM directory {dir:?} already holds a running vmm (pid {pid}): stop that VM first")]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
        /// The vmm's pid.
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
    /// The vmm could not be run, or exited with an error while starting.
    #[error("the vmm failed to start VM {sandbox_id}: {why}")]
    StartFailed {
        /// The sandbox.
        sandbox_id: String,
        /// Its status and log, or why it could not run.
        why: String,
    },
    /// A control API request failed.
    #[error("VM {sandbox_id}: the vmm API ({op})")]
    Api {
        /// The sandbox.
        sandbox_id: String,
        /// The op.
        op: &'static str,
        /// The cause.
        #[source]
        source: ClientError,
    },
    /// Stopping the vmm failed (a signal was refused, or it survived SIGKILL).
    #[error("VM {sandbox_id}: stopping the vmm")]
    Process {
        /// The sandbox.
        sandbox_id: String,
        /// The cause.
        #[source]
        source: ProcessError,
    },
}

fn looked_at(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The files in a VM's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir(pub PathBuf);

impl From<PathBuf> for VmDir {
    fn from(dir: PathBuf) -> VmDir {
        VmDir(dir)
    }
}

impl VmDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// The control API's socket.
    pub fn api_socket(&self) -> PathBuf {
        self.0.join("api.sock")
    }
    /// The vmm's pid file.
    pub fn pidfile(&self) -> PathBuf {
        self.0.join("vmm.pid")
    }
    /// The hybrid-vsock socket.
    pub fn vsock_socket(&self) -> PathBuf {
        self.0.join("vsock.sock")
    }
    /// The host socket of agent port `n` (`agent.<n>` in the guest).
    pub fn agent_socket(&self, n: u32) -> PathBuf {
        self.0.join(format!("agent-{n}.sock"))
    }
    /// The vmm's stderr (and stdout).
    pub fn log(&self) -> PathBuf {
        self.0.join("vmm.log")
    }
    /// Every socket of a VM with `agent_ports` ports.
    pub fn sockets(&self, agent_ports: u32) -> Vec<PathBuf> {
        let mut paths = vec![self.api_socket(), self.vsock_socket()];
        paths.extend((0..agent_ports).map(|n| self.agent_socket(n)));
        paths
    }
}

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
}

/// The vmm's full argv, the binary first. It starts paused (`start_vm` checks the API, then
/// starts the vCPUs) and daemonizes. Paths are absolute and were checked to hold no ','.
pub fn build(a: &VmArgs<'_>) -> Vec<String> {
    let s = a.spec;
    let mut argv = Argv::new(a.vmm);
    argv.path("--kernel", &s.kernel);
    argv.opt_path("--initrd", s.initrd.as_deref());
    let cmdline = agent::kernel_cmdline(a.agent_ports, a.vsock, KERNEL_PARAMS, &s.kernel_params);
    argv.push(&["--cmdline", &cmdline]);
    argv.push(&[
        "--memory-mib",
        &s.memory_mib.to_string(),
        "--vcpus",
        &s.vcpus.to_string(),
    ]);
    let console = s.console_log.as_deref().unwrap_or(Path::new("/dev/null"));
    argv.path("--console-log", console);
    argv.path("--api-socket", &a.dir.api_socket());
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
            &format!("cid={VSOCK_CID},socket={}", a.dir.vsock_socket().display()),
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
fn check_kernel_format(kernel: &Path) -> Result<(), VmError> {
    match crate::boot::kernel_format(kernel) {
        Ok(KernelFormat::Elf | KernelFormat::BzImage) => Ok(()),
        Ok(KernelFormat::Unknown) => Err(VmError::KernelFormat(kernel.to_owned())),
        Err(source) => Err(VmError::KernelRead { path: kernel.to_owned(), source }),
    }
}

/// Creates the VM (its directory and its state); starts nothing.
pub fn create_vm(
    config: &KvmConfig,
    sandbox_id: &str,
    hv: &HypervisorConfig,
) -> Result<VmState, VmError> {
    validate_sandbox_id(sandbox_id)?;
    let spec = vm_process::spec::validate(hv, &LIMITS)?;
    check_kernel_format(&spec.kernel)?;
    let devices = spec.disks.len()
        + 1
        + usize::from(config.vsock)
        + usize::from(config.network != Network::None);
    if devices > MAX_DEVICES {
        return Err(VmError::TooManyDevices {
            count: devices,
            disks: spec.disks.len(),
        });
    }
    let vmm = config.find_vmm().map_err(VmError::VmmMissing)?;
    let dir = VmDir(config.run_dir.join(sandbox_id));
    if let Some(path) = vm_dir::too_long_socket(dir.sockets(config.agent_ports)) {
        return Err(VmError::SocketPathTooLong(path));
    }
    if let Some((pid, _)) = live_vmm_from_pidfile(&dir) {
        return Err(VmError::AlreadyRunning {
            dir: dir.0.clone(),
            pid,
        });
    }
    vm_dir::fresh_private(dir.path())?;
    let args = VmArgs {
        vmm: &vmm,
        dir: &dir,
        agent_ports: config.agent_ports,
        vsock: config.vsock,
        network: &config.network,
        spec: &spec,
    };
    let argv = build(&args);
    debug!(sandbox_id, ?argv, "vmm command line");
    let fields = KvmFields {
        agent_ports: config.agent_ports,
        vsock: config.vsock,
    };
    Ok(VmState::created(sandbox_id, dir.0, argv, fields))
}

/// The vmm named in the directory's pid file, if it is alive and serves this directory's API
/// socket.
fn live_vmm_from_pidfile(dir: &VmDir) -> Option<(i32, u64)> {
    let api = dir.api_socket();
    process::live_from_pidfile(&dir.pidfile(), &["--api-socket", api.to_str()?])
}

fn wrong_state(state: &VmState, current: &'static str, operation: &'static str) -> VmError {
    VmError::WrongState {
        sandbox_id: state.sandbox_id.clone(),
        state: current,
        operation,
    }
}

fn api(state: &VmState, op: &'static str, timeout: Duration) -> Result<serde_json::Value, VmError> {
    client::request(&state.vm_dir().api_socket(), op, timeout).map_err(|source| VmError::Api {
        sandbox_id: state.sandbox_id.clone(),
        op,
        source,
    })
}

/// Boots a created VM: runs the vmm daemonized and paused, records its pid and start time,
/// checks that its API answers, then starts the vCPUs.
pub fn start_vm(state: &VmState) -> Result<VmState, VmError> {
    if state.lifecycle != Lifecycle::Created {
        return Err(wrong_state(
            state,
            state.lifecycle.name(),
            "start (only a created VM can start)",
        ));
    }
    let id = state.sandbox_id.as_str();
    let dir = state.vm_dir();
    if let Some((pid, _)) = live_vmm_from_pidfile(&dir) {
        return Err(VmError::AlreadyRunning {
            dir: dir.0.clone(),
            pid,
        });
    }
    vm_dir::ensure_private(dir.path())?;
    let mut stale = dir.sockets(state.fields.agent_ports);
    stale.push(dir.pidfile());
    vm_dir::remove_stale(stale)?;
    run_daemonized(state, &dir)?;
    let pidfile = dir.pidfile();
    let started =
        process::read_pidfile(&pidfile).and_then(|pid| Some((pid, process::stat(pid)?.start_time)));
    let Some((pid, start_time)) = started else {
        let _ = client::request(&dir.api_socket(), "shutdown", API_TIMEOUT);
        return Err(VmError::StartFailed {
            sandbox_id: id.into(),
            why: format!("no live vmm pid in {pidfile:?} after it started"),
        });
    };
    let next = VmState {
        lifecycle: Lifecycle::Running,
        pid: Some(pid),
        start_time: Some(start_time),
        ..state.clone()
    };
    let checked = api(&next, "state", API_TIMEOUT).and_then(|answer| {
        debug!(sandbox_id = id, %answer, "the vmm API answers");
        api(&next, "start", API_TIMEOUT)
    });
    if let Err(e) = checked {
        warn!(
            sandbox_id = id,
            "{}; killing vmm pid {pid}",
            vm_process::chain(&e)
        );
        if process::signal("vmm", pid, start_time, libc::SIGKILL).is_ok() {
            process::wait_gone(pid, start_time, KILL_WAIT);
        }
        return Err(e);
    }
    info!(sandbox_id = id, pid, "started VM");
    Ok(next)
}

/// Runs `state.argv` with its output appended to `vmm.log` and waits for the daemonizing
/// parent to exit (0 once the VM is built and its API socket bound).
fn run_daemonized(state: &VmState, dir: &VmDir) -> Result<(), VmError> {
    let id = &state.sandbox_id;
    let failed = |why: String| VmError::StartFailed {
        sandbox_id: id.clone(),
        why,
    };
    let log_path = dir.log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| failed(format!("opening its log {log_path:?}: {e}")))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let stdout = log
        .try_clone()
        .map_err(|e| failed(format!("duplicating the log descriptor: {e}")))?;
    let mut child = Command::new(&state.argv[0])
        .args(&state.argv[1..])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log)
        .spawn()
        .map_err(|e| failed(format!("running {}: {e}", state.argv[0])))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "it was not ready within {START_TIMEOUT:?}: {}",
                    log_tail(&log_path, log_start)
                )));
            }
            Err(e) => return Err(failed(format!("waiting for {}: {e}", state.argv[0]))),
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "{} exited with {status}: {}",
            state.argv[0],
            log_tail(&log_path, log_start)
        )))
    }
}

/// What the vmm wrote to its log since `start`, the last [`MAX_LOG`] bytes of it.
fn log_tail(path: &Path, start: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let end = file.metadata()?.len();
        let from = start.max(end.saturating_sub(MAX_LOG));
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.take(MAX_LOG).read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).trim().to_owned();
        Ok(if from > start {
            format!("...{text}")
        } else {
            text
        })
    };
    match read() {
        Ok(text) if text.is_empty() => format!("nothing in {path:?}"),
        Ok(text) => text,
        Err(e) => format!("its log {path:?} could not be read: {e}"),
    }
}

/// The VM's process, if it is alive (the recorded one, or for a VM that never recorded one,
/// a vmm of this directory named by the pid file).
fn live_process(state: &VmState) -> Option<(i32, u64)> {
    match state.process() {
        Some((pid, start)) => process::is_alive(pid, start).then_some((pid, start)),
        None => live_vmm_from_pidfile(&state.vm_dir()),
    }
}

/// Sends an API op that changes the run state (`pause`, `resume`).
fn run_state_change(
    state: &VmState,
    from: Lifecycle,
    to: Lifecycle,
    op: &'static str,
    operation: &'static str,
) -> Result<VmState, VmError> {
    if state.lifecycle != from {
        return Err(wrong_state(state, state.lifecycle.name(), operation));
    }
    if live_process(state).is_none() {
        return Err(wrong_state(state, "dead", operation));
    }
    api(state, op, API_TIMEOUT)?;
    info!(sandbox_id = %state.sandbox_id, "VM {}", to.name());
    Ok(VmState {
        lifecycle: to,
        ..state.clone()
    })
}

/// Pauses a running VM.
pub fn pause_vm(state: &VmState) -> Result<VmState, VmError> {
    run_state_change(
        state,
        Lifecycle::Running,
        Lifecycle::Paused,
        "pause",
        "pause (it is not running)",
    )
}

/// Resumes a paused VM.
pub fn resume_vm(state: &VmState) -> Result<VmState, VmError> {
    run_state_change(
        state,
        Lifecycle::Paused,
        Lifecycle::Running,
        "resume",
        "resume (it is not paused)",
    )
}

/// Stops the VM (API `shutdown`, then SIGTERM/SIGKILL if need be) and removes its directory.
/// Idempotent; never touches the console log.
pub fn stop_vm(state: &VmState, stop_timeout: Duration) -> Result<VmState, VmError> {
    let id = state.sandbox_id.as_str();
    if let Some((pid, start)) = live_process(state) {
        info!(sandbox_id = id, pid, "stopping VM");
        let shutdown = || {
            api(state, "shutdown", API_TIMEOUT.min(stop_timeout))
                .map(drop)
                .map_err(|e| vm_process::chain(&e))
        };
        process::terminate("vmm", pid, start, stop_timeout, shutdown).map_err(|source| {
            VmError::Process {
                sandbox_id: id.into(),
                source,
            }
        })?;
    }
    vm_dir::remove(state.vm_dir().path())?;
    if state.lifecycle != Lifecycle::Stopped {
        info!(sandbox_id = id, "VM stopped");
    }
    Ok(VmState {
        lifecycle: Lifecycle::Stopped,
        ..state.clone()
    })
}

/// The agent's addresses, best first: hybrid vsock, then every serial port.
pub fn agent_endpoint(state: &VmState) -> Result<String, VmError> {
    if state.lifecycle == Lifecycle::Stopped {
        return Err(wrong_state(state, "stopped", "give an agent endpoint"));
    }
    let dir = state.vm_dir();
    let vsock = state
        .fields
        .vsock
        .then(|| format!("hvsock:{}:{AGENT_VSOCK_PORT}", dir.vsock_socket().display()));
    let serial =
        (0..state.fields.agent_ports).map(|n| format!("serial:{}", dir.agent_socket(n).display()));
    Ok(vsock
        .into_iter()
        .chain(serial)
        .collect::<Vec<_>>()
        .join(","))
}

/// `created`, `running`, `paused`, `stopped` or `dead`. A live vmm whose vCPUs do not run
/// (API state `paused`, `created`, or `stopping` on its way out) is `paused`; a live vmm whose
/// API does not answer within 2 s is `running`.
pub fn vm_status(state: &VmState) -> &'static str {
    match state.lifecycle {
        Lifecycle::Created => return "created",
        Lifecycle::Stopped => return "stopped",
        Lifecycle::Running | Lifecycle::Paused => {}
    }
    if live_process(state).is_none() {
        return "dead";
    }
    match api(state, "state", STATUS_API_TIMEOUT) {
        Ok(answer) if answer["state"] == "running" => "running",
        Ok(_) => "paused",
        Err(e) => {
            debug!(sandbox_id = %state.sandbox_id, "{}; the process is alive: running", vm_process::chain(&e));
            "running"
        }
    }
}
