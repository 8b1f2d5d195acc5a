//! This plugin's hooks into the shared VM operations ([`hypervisor_framework::ops`]): the vmm's control
//! API, the vmm of a VM directory (the one serving its API socket), and running the vmm
//! daemonized with its output in `vmm.log`.

use crate::layout::{VmDir, LOG};
use crate::state::{KvmFields, VmState};
use hypervisor_framework::control::{Control, RunRequest};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmm_api::{Client, ClientError, Request, RunState};

/// How long the daemonizing vmm may take to build the VM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of the vmm's log an error carries.
const MAX_LOG: u64 = 4000;

/// A control API request failed.
#[derive(Debug, thiserror::Error)]
#[error("the vmm API ({op})")]
pub struct ApiError {
    /// The request.
    pub op: Request,
    /// The cause.
    #[source]
    pub source: ClientError,
}

impl Control for KvmFields {
    const THE_PROGRAM: &'static str = "the vmm";
    type Error = ApiError;

    /// `--api-socket <dir>/api.sock`.
    fn argv_marker(dir: &VmDir, _sandbox_id: &str) -> Option<Vec<String>> {
        Some(vec![
            "--api-socket".into(),
            dir.control_socket().to_str()?.to_owned(),
        ])
    }

    /// Runs `state.argv` with its output appended to `vmm.log` and waits for the daemonizing
    /// parent to exit (0 once the VM is built and its API socket bound).
    fn run_daemonized(state: &mut VmState) -> Result<(), String> {
        let Some((program, args)) = state.argv.split_first() else {
            return Err("its argv is empty".into());
        };
        let log_path = state.vm_dir().file(LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| format!("opening its log {log_path:?}: {e}"))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stdout = log
            .try_clone()
            .map_err(|e| format!("duplicating the log descriptor: {e}"))?;
        let mut child = Command::new(program)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("running {program}: {e}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "it was not ready within {START_TIMEOUT:?}: {}",
                        log_tail(&log_path, log_start)
                    ));
                }
                Err(e) => return Err(format!("waiting for {program}: {e}")),
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} exited with {status}: {}",
                log_tail(&log_path, log_start)
            ))
        }
    }

    /// The vmm daemonizes paused: `start` runs its vCPUs.
    fn start_guest(state: &VmState, timeout: Duration) -> Result<(), ApiError> {
        run_state(state, Request::Start, timeout).map(drop)
    }

    /// `pause`, `resume` and `shutdown`.
    fn request(state: &VmState, request: RunRequest, timeout: Duration) -> Result<(), ApiError> {
        let op = match request {
            RunRequest::Pause => Request::Pause,
            RunRequest::Resume => Request::Resume,
            RunRequest::Quit => Request::Shutdown,
        };
        run_state(state, op, timeout).map(drop)
    }

    /// The vCPUs run in API state `running` (not in `paused`, `created`, nor `stopping` on the
    /// vmm's way out).
    fn vcpus_running(state: &VmState, timeout: Duration) -> Result<bool, ApiError> {
        let info = client(state, timeout).info().map_err(|source| ApiError { op: Request::State, source })?;
        Ok(info.state == RunState::Running)
    }
}

/// A client of the VM's vmm.
fn client(state: &VmState, timeout: Duration) -> Client {
    Client::new(state.vm_dir().control_socket(), timeout)
}

/// Sends a run-state request to the VM's vmm: the state it left the VM in.
fn run_state(state: &VmState, op: Request, timeout: Duration) -> Result<RunState, ApiError> {
    client(state, timeout).run_state(op).map_err(|source| ApiError { op, source })
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
