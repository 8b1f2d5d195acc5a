//! The VM's state blob: what the host persists between calls, as versioned JSON. Every plugin's
//! blob is the same envelope ([`VmState`]: the sandbox, its directory, the VMM's argv, where the
//! VM is in its life and its process) around the plugin's own fields ([`VmFields`]), which sit
//! between `argv` and `lifecycle`:
//!
//! ```json
//! {"schema": "kvm-vm/1", "sandbox_id": "sb1", "dir": "/run/sandbox-runtime/kvm/sb1",
//!  "argv": ["/usr/libexec/vmm", "--kernel", "/img/vmlinux", ...],
//!  "agent_ports": 4, "vsock": true,
//!  "lifecycle": "running", "pid": 4242, "start_time": 1234567}
//! ```
//!
//! `start_time` is field 22 of `/proc/<pid>/stat` (clock ticks after boot): with the pid it
//! names one process, so a reused pid is never mistaken for the VMM.

use crate::blob::{BlobError, Schema};
use crate::dir::{Layout, VmDir};
use crate::Lifecycle;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Why a state blob is refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON, not this schema, or not its shape.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The right shape with inconsistent values.
    #[error("{state} of sandbox {sandbox_id:?}: {what}")]
    Inconsistent {
        /// What the blob is (its schema's `what`: `QEMU VM state`).
        state: &'static str,
        /// The sandbox the blob claims to be.
        sandbox_id: String,
        /// What is wrong.
        what: String,
    },
}

/// A plugin's own fields of its state blob.
pub trait VmFields: Serialize + DeserializeOwned {
    /// The blob's schema.
    const SCHEMA: Schema;
    /// The VMM, as messages name it (`QEMU`, `vmm`).
    const PROGRAM: &'static str;
    /// The names of the files in the VM directory.
    type Layout: Layout;

    /// How many agent ports the VM has.
    fn agent_ports(&self) -> u32;

    /// Checks the plugin's own fields and the pid, after the envelope's sandbox id, directory,
    /// argv and agent ports and before its lifecycle: `Err(what is wrong)`.
    fn check(state: &VmState<Self>) -> Result<(), String>;
}

/// The state blob: the envelope every plugin writes around its fields `F`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmState<F> {
    /// `<family>/<version>` ([`VmFields::SCHEMA`]).
    pub schema: String,
    /// The sandbox.
    pub sandbox_id: String,
    /// The VM directory (`<run_dir>/<sandbox_id>`).
    pub dir: PathBuf,
    /// The VMM's full argv, the binary first.
    pub argv: Vec<String>,
    /// The plugin's own fields (flattened into the blob's object).
    #[serde(flatten)]
    pub fields: F,
    /// Where the VM is in its life.
    pub lifecycle: Lifecycle,
    /// The VMM's pid, once started.
    pub pid: Option<i32>,
    /// The VMM's start time (field 22 of `/proc/<pid>/stat`), once started.
    pub start_time: Option<u64>,
}

impl<F: VmFields> VmState<F> {
    /// The state of a created VM (no process yet), in the current schema.
    pub fn created(sandbox_id: &str, dir: PathBuf, argv: Vec<String>, fields: F) -> VmState<F> {
        VmState {
            schema: F::SCHEMA.current(),
            sandbox_id: sandbox_id.to_owned(),
            dir,
            argv,
            fields,
            lifecycle: Lifecycle::Created,
            pid: None,
            start_time: None,
        }
    }

    /// The current schema string.
    pub fn schema_string() -> String {
        F::SCHEMA.current()
    }

    /// The VM directory.
    pub fn vm_dir(&self) -> VmDir<F::Layout> {
        VmDir::new(self.dir.clone())
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
    pub fn decode(bytes: &[u8]) -> Result<VmState<F>, StateError> {
        let state: VmState<F> = F::SCHEMA.decode(bytes)?;
        state.check()?;
        Ok(state)
    }

    fn check(&self) -> Result<(), StateError> {
        let bad = |what: String| StateError::Inconsistent { state: F::SCHEMA.what, sandbox_id: self.sandbox_id.clone(), what };
        crate::validate_sandbox_id(&self.sandbox_id).map_err(|e| bad(e.to_string()))?;
        if !crate::dir::is_vm_dir(&self.dir, &self.sandbox_id) {
            return Err(bad(format!("dir {:?} is not an absolute <run_dir>/<sandbox_id> path", self.dir)));
        }
        if !self.argv.first().is_some_and(|a| a.starts_with('/')) {
            return Err(bad(format!("argv {:?} does not start with an absolute {} path", self.argv.first(), F::PROGRAM)));
        }
        let (ports, max) = (self.fields.agent_ports(), crate::agent::MAX_AGENT_PORTS);
        if !(1..=max).contains(&ports) {
            return Err(bad(format!("agent_ports {ports} is not 1 to {max}")));
        }
        F::check(self).map_err(bad)?;
        if self.lifecycle.started() && self.process().is_none() {
            return Err(bad(format!("it is {} but has no pid and start_time", self.lifecycle.name())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct TestFields {
        agent_ports: u32,
        cid: Option<u32>,
    }

    impl VmFields for TestFields {
        const SCHEMA: Schema = Schema { what: "test VM state", prefix: "test-vm/", version: 1 };
        const PROGRAM: &'static str = "test VMM";
        type Layout = TestLayout;
        fn agent_ports(&self) -> u32 {
            self.agent_ports
        }
        fn check(state: &VmState<Self>) -> Result<(), String> {
            match state.fields.cid {
                Some(cid) if cid < 3 => Err(format!("cid {cid} is reserved")),
                _ => Ok(()),
            }
        }
    }

    struct TestLayout;

    impl Layout for TestLayout {
        const PIDFILE: &'static str = "vmm.pid";
        const CONTROL_SOCKET: &'static str = "ctl.sock";
        const OTHER_SOCKETS: &'static [&'static str] = &[];
    }

    fn state() -> VmState<TestFields> {
        let argv = vec!["/bin/vmm".into(), "-x".into()];
        let state = VmState::created("sb1", "/run/t/sb1".into(), argv, TestFields { agent_ports: 2, cid: Some(7) });
        VmState { lifecycle: Lifecycle::Running, pid: Some(42), start_time: Some(9), ..state }
    }

    fn error_with(key: &str, value: serde_json::Value) -> String {
        crate::testing::error_with(&state(), key, value)
    }

    #[test]
    fn the_fields_sit_flat_in_order() {
        let s = state();
        let text = String::from_utf8(s.encode()).unwrap();
        let keys = ["schema", "sandbox_id", "dir", "argv", "agent_ports", "cid", "lifecycle", "pid", "start_time"];
        let at: Vec<usize> = keys.iter().map(|k| text.find(&format!("\"{k}\":")).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(VmState::decode(text.as_bytes()).unwrap(), s);
        assert_eq!((s.vm_dir().path(), s.process()), (std::path::Path::new("/run/t/sb1"), Some((42, 9))));
        assert_eq!(VmState::<TestFields>::schema_string(), "test-vm/1");
        let created = VmState { lifecycle: Lifecycle::Created, pid: None, start_time: None, ..s };
        assert_eq!(VmState::decode(&created.encode()).unwrap(), created);
        let mut v = serde_json::to_value(&created).unwrap();
        v.as_object_mut().unwrap().remove("cid");
        assert_eq!(VmState::<TestFields>::decode(v.to_string().as_bytes()).unwrap().fields.cid, None);
    }

    #[test]
    fn unknown_missing_and_inconsistent_fields_are_errors() {
        assert!(error_with("surprise", json!(1)).contains("malformed test VM state: unknown field `surprise`"));
        let mut v = serde_json::to_value(state()).unwrap();
        v.as_object_mut().unwrap().remove("agent_ports");
        assert!(crate::testing::decode_error::<TestFields>(&v).contains("malformed"));
        assert!(error_with("lifecycle", json!("exploded")).contains("malformed"));
        assert!(error_with("schema", json!("other/1")).starts_with("not a test VM state"));
        assert!(error_with("sandbox_id", json!("../x")).contains("sandbox id"));
        let e = error_with("dir", json!("/run/t/other"));
        assert!(e.starts_with("test VM state of sandbox \"sb1\": dir \"/run/t/other\""), "{e}");
        assert!(error_with("argv", json!(["vmm"])).contains("absolute test VMM path"));
        assert!(error_with("agent_ports", json!(9)).contains("agent_ports 9 is not 1 to 8"));
        assert!(error_with("cid", json!(2)).contains("cid 2 is reserved"));
        assert!(error_with("pid", json!(null)).contains("running but has no pid and start_time"));
    }
}
