//! The VM's state blob: what the host persists between calls, as versioned JSON.
//!
//! ```json
//! {"schema": "kvm-vm/1", "sandbox_id": "sb1", "dir": "/run/sandbox-runtime/kvm/sb1",
//!  "argv": ["/usr/libexec/vmm", "--kernel", "/img/vmlinux", ...],
//!  "agent_ports": 4, "vsock": true,
//!  "lifecycle": "running", "pid": 4242, "start_time": 1234567}
//! ```
//!
//! `start_time` is field 22 of `/proc/<pid>/stat` (clock ticks after boot): with the pid it
//! names one process, so a reused pid is never mistaken for the vmm.

use super::config::MAX_AGENT_PORTS;
use super::vm::VmDir;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vm_process::blob::{BlobError, Schema};
pub use vm_process::Lifecycle;

/// This plugin's blob schema (`kvm-vm/1`).
pub const SCHEMA: Schema = Schema {
    what: "kvm VM state",
    prefix: "kvm-vm/",
    version: 1,
};

/// Why a state blob is refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON, not this schema, or not its shape.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The right shape with inconsistent values.
    #[error("kvm VM state of sandbox {sandbox_id:?}: {what}")]
    Inconsistent {
        /// The sandbox the blob claims to be.
        sandbox_id: String,
        /// What is wrong.
        what: String,
    },
}

/// The state blob.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// `kvm-vm/<version>`.
    pub schema: String,
    /// The sandbox.
    pub sandbox_id: String,
    /// The VM directory (`<run_dir>/<sandbox_id>`).
    pub dir: PathBuf,
    /// The vmm's full argv, the binary first.
    pub argv: Vec<String>,
    /// How many serial agent ports the VM has.
    pub agent_ports: u32,
    /// Whether the VM has a vsock device (hybrid vsock on `<dir>/vsock.sock`).
    pub vsock: bool,
    /// Where the VM is in its life.
    pub lifecycle: Lifecycle,
    /// The vmm's pid, once started.
    pub pid: Option<i32>,
    /// The vmm's start time (field 22 of `/proc/<pid>/stat`), once started.
    pub start_time: Option<u64>,
}

impl VmState {
    /// The VM directory.
    pub fn vm_dir(&self) -> VmDir {
        VmDir(self.dir.clone())
    }

    /// The pid and start time of a started VM.
    pub fn process(&self) -> Option<(i32, u64)> {
        self.pid.zip(self.start_time)
    }

    /// Encodes the blob.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and enums always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a blob: the schema first (so a foreign blob says so), then the shape,
    /// then the values later calls rely on (the directory they delete, the pid they signal).
    pub fn decode(bytes: &[u8]) -> Result<VmState, StateError> {
        let state: VmState = SCHEMA.decode(bytes)?;
        state.check()?;
        Ok(state)
    }

    fn check(&self) -> Result<(), StateError> {
        let bad = |what: String| StateError::Inconsistent {
            sandbox_id: self.sandbox_id.clone(),
            what,
        };
        vm_process::validate_sandbox_id(&self.sandbox_id).map_err(|e| bad(e.to_string()))?;
        if !vm_process::dir::is_vm_dir(&self.dir, &self.sandbox_id) {
            return Err(bad(format!(
                "dir {:?} is not an absolute <run_dir>/<sandbox_id> path",
                self.dir
            )));
        }
        if !self.argv.first().is_some_and(|a| a.starts_with('/')) {
            return Err(bad(format!(
                "argv {:?} does not start with an absolute vmm path",
                self.argv.first()
            )));
        }
        if !(1..=MAX_AGENT_PORTS).contains(&self.agent_ports) {
            return Err(bad(format!(
                "agent_ports {} is not 1 to {MAX_AGENT_PORTS}",
                self.agent_ports
            )));
        }
        if self.pid.is_some_and(|pid| pid <= 1) {
            return Err(bad(format!("pid {:?} cannot be a vmm process", self.pid)));
        }
        if self.lifecycle.started() && self.process().is_none() {
            return Err(bad(format!(
                "it is {} but has no pid and start_time",
                self.lifecycle.name()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> VmState {
        VmState {
            schema: SCHEMA.current(),
            sandbox_id: "sb1".into(),
            dir: "/run/k/sb1".into(),
            argv: vec![
                "/usr/bin/vmm".into(),
                "--kernel".into(),
                "/img/vmlinux".into(),
            ],
            agent_ports: 4,
            vsock: true,
            lifecycle: Lifecycle::Running,
            pid: Some(4242),
            start_time: Some(99),
        }
    }

    fn error(value: serde_json::Value) -> String {
        vm_process::chain(&VmState::decode(&serde_json::to_vec(&value).unwrap()).unwrap_err())
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::to_value(state()).unwrap();
        v[key] = value;
        v
    }

    #[test]
    fn round_trip() {
        let s = state();
        let bytes = s.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (json["schema"].as_str(), json["lifecycle"].as_str()),
            (Some("kvm-vm/1"), Some("running"))
        );
        assert_eq!(
            (
                json["pid"].as_i64(),
                json["start_time"].as_u64(),
                json["vsock"].as_bool()
            ),
            (Some(4242), Some(99), Some(true))
        );
        assert_eq!(VmState::decode(&bytes).unwrap(), s);
        let created = VmState {
            lifecycle: Lifecycle::Created,
            pid: None,
            start_time: None,
            ..state()
        };
        assert_eq!(VmState::decode(&created.encode()).unwrap(), created);
    }

    #[test]
    fn foreign_malformed_and_inconsistent_blobs_are_errors() {
        let e = error(json!({"schema": "qemu-vm/1", "pid": 3}));
        assert!(
            e.contains("not a kvm VM state")
                && e.contains("\"qemu-vm/1\"")
                && e.contains("kvm-vm/1"),
            "{e}"
        );
        assert!(error(with("schema", json!("kvm-vm/2"))).contains("newer"));
        assert!(error(with("lifecycle", json!("exploded"))).contains("malformed kvm VM state"));
        assert!(error(with("surprise", json!(1))).contains("malformed"));
        assert!(error(with("sandbox_id", json!("../etc"))).contains("sandbox id"));
        assert!(error(with("dir", json!("/run/k/other"))).contains("/run/k/other"));
        assert!(error(with("argv", json!(["vmm"]))).contains("argv"));
        assert!(error(with("agent_ports", json!(0))).contains("agent_ports 0"));
        assert!(error(with("pid", json!(1))).contains("pid Some(1)"));
        assert!(error(with("start_time", json!(null)))
            .contains("running but has no pid and start_time"));
    }
}
