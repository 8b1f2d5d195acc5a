//! This plugin's hooks into the shared VM operations ([`hypervisor_framework::ops`]): QMP, the QEMU of a
//! sandbox (the one named `sandbox-<id>`), and running QEMU daemonized, trying other vsock CIDs
//! while the one it was given is taken.

use crate::argv::{self, VmDir, QMP_LOCK};
use crate::qmp::{self, QmpError};
use crate::state::{QemuFields, VmState};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use tracing::warn;
use hypervisor_framework::control::{Control, RunRequest};

/// How many vsock CIDs to try when QEMU reports one in use.
const VSOCK_ATTEMPTS: u32 = 5;
/// The most of QEMU's stderr an error carries.
const MAX_STDERR: usize = 4000;

impl Control for QemuFields {
    const THE_PROGRAM: &'static str = "QEMU";
    type Error = QmpError;

    /// `-name sandbox-<id>`.
    fn argv_marker(_dir: &VmDir, sandbox_id: &str) -> Option<Vec<String>> {
        Some(vec!["-name".into(), format!("sandbox-{sandbox_id}")])
    }

    /// Runs `state.argv`, retrying with other vsock CIDs while QEMU reports the CID in use.
    fn run_daemonized(state: &mut VmState) -> Result<(), String> {
        let id = state.sandbox_id.clone();
        let mut attempt = 0;
        loop {
            let Some((program, args)) = state.argv.split_first() else { return Err("its argv is empty".into()) };
            let output = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(|e| format!("running {program}: {e}"))?;
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
            return Err(format!("{program} exited with {}: {text}", output.status));
        }
    }

    /// A template's clone restores the template's device state and runs.
    fn start_guest(state: &VmState, _timeout: Duration) -> Result<(), QmpError> {
        match &state.fields.incoming {
            Some(file) => crate::template::restore(state, file),
            None => Ok(()),
        }
    }

    /// QMP `stop`, `cont` or `quit`.
    fn request(state: &VmState, request: RunRequest, timeout: Duration) -> Result<(), QmpError> {
        let command = match request {
            RunRequest::Pause => "stop",
            RunRequest::Resume => "cont",
            RunRequest::Quit => "quit",
        };
        execute(state, command, timeout).map(drop)
    }

    /// QMP `query-status`: its `running` (false when paused, but also `suspended`, `io-error`,
    /// `guest-panicked`, `internal-error`, migration states, `shutdown` on its way out: `cont`
    /// is what would resume it), or else whether the `status` is `running`.
    fn vcpus_running(state: &VmState, timeout: Duration) -> Result<bool, QmpError> {
        let answer = execute(state, "query-status", timeout)?;
        let running = answer.get("running").and_then(Value::as_bool);
        Ok(running.unwrap_or_else(|| answer.get("status").and_then(Value::as_str) == Some("running")))
    }
}

/// Runs the QMP `command` in a session of its own.
fn execute(state: &VmState, command: &'static str, timeout: Duration) -> Result<Value, QmpError> {
    let dir = state.vm_dir();
    qmp::execute(&dir.control_socket(), &dir.file(QMP_LOCK), command, timeout)
}
