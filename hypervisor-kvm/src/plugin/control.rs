//! This plugin's hooks into the shared VM operations ([`vm_process::ops`]): the vmm's control
//! API, the vmm of a VM directory (the one serving its API socket), and running the vmm
//! daemonized with its output in `vmm.log`.

use super::state::{KvmFields, VmState};
use super::vm::{VmDir, LOG};
use crate::api::client::{self, ClientError};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vm_process::control::{Commands, Control};

/// How long the daemonizing vmm may take to build the VM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of the vmm's log an error carries.
const MAX_LOG: u64 = 4000;

/// A control API request failed.
#[derive(Debug, thiserror::Error)]
#[error("the vmm API ({op})")]
pub struct ApiError {
    /// The op.
    pub op: &'static str,
    /// The cause.
    #[source]
    pub source: ClientError,
}

impl Control for KvmFields {
    const THE_PROGRAM: &'static str = "the vmm";
    const COMMANDS: Commands = Commands {
        query: "state",
        pause: "pause",
        resume: "resume",
        quit: "shutdown",
    };
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
        Self::call(state, "start", timeout).map(drop)
    }

    /// Sends `{"op": op}` to the VM's vmm.
    fn call(state: &VmState, op: &'static str, timeout: Duration) -> Result<Value, ApiError> {
        client::request(&state.vm_dir().control_socket(), op, timeout)
            .map_err(|source| ApiError { op, source })
    }

    /// The vCPUs run in API state `running` (not in `paused`, `created`, nor `stopping` on the
    /// vmm's way out).
    fn running(answer: &Value) -> bool {
        answer["state"] == "running"
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
