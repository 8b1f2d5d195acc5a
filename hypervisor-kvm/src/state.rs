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
//! names one process, so a reused pid is never mistaken for the vmm. The envelope and its
//! checks are [`hypervisor_framework::state`]'s; this plugin adds [`KvmFields`].

use crate::layout::KvmLayout;
use serde::{Deserialize, Serialize};
use hypervisor_framework::blob::Schema;
pub use hypervisor_framework::state::StateError;
use hypervisor_framework::state::VmFields;
pub use hypervisor_framework::Lifecycle;

/// This plugin's blob schema (`kvm-vm/1`).
pub const SCHEMA: Schema = Schema {
    what: "kvm VM state",
    prefix: "kvm-vm/",
    version: 1,
};

/// The state blob: the shared envelope around [`KvmFields`].
pub type VmState = hypervisor_framework::state::VmState<KvmFields>;

/// What this plugin adds to the state blob.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct KvmFields {
    /// How many serial agent ports the VM has.
    pub agent_ports: u32,
    /// Whether the VM has a vsock device (hybrid vsock on `<dir>/vsock.sock`).
    pub vsock: bool,
    /// For a VM created with a `memory_file` (one a template can be saved from): the config
    /// it was created with, which every clone of it must ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<plugin_api::hypervisor::HypervisorConfig>,
}

impl VmFields for KvmFields {
    const SCHEMA: Schema = SCHEMA;
    const PROGRAM: &'static str = "vmm";
    type Layout = KvmLayout;

    fn agent_ports(&self) -> u32 {
        self.agent_ports
    }

    fn check(state: &VmState) -> Result<(), String> {
        if state.pid.is_some_and(|pid| pid <= 1) {
            return Err(format!("pid {:?} cannot be a vmm process", state.pid));
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
            fields: KvmFields {
                agent_ports: 4,
                vsock: true,
                template: None,
            },
            lifecycle: Lifecycle::Running,
            pid: Some(4242),
            start_time: Some(99),
        }
    }

    fn error_with(key: &str, value: serde_json::Value) -> String {
        hypervisor_framework::testing::error_with(&state(), key, value)
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
        let e = hypervisor_framework::testing::decode_error::<KvmFields>(
            &json!({"schema": "qemu-vm/1", "pid": 3}),
        );
        assert!(
            e.contains("not a kvm VM state")
                && e.contains("\"qemu-vm/1\"")
                && e.contains("kvm-vm/1"),
            "{e}"
        );
        assert!(error_with("schema", json!("kvm-vm/2")).contains("newer"));
        assert!(error_with("lifecycle", json!("exploded")).contains("malformed kvm VM state"));
        assert!(error_with("surprise", json!(1)).contains("malformed"));
        assert!(error_with("sandbox_id", json!("../etc")).contains("sandbox id"));
        assert!(error_with("dir", json!("/run/k/other")).contains("/run/k/other"));
        assert!(error_with("argv", json!(["vmm"])).contains("argv"));
        assert!(error_with("agent_ports", json!(0)).contains("agent_ports 0"));
        assert!(error_with("pid", json!(1)).contains("pid Some(1)"));
        assert!(
            error_with("start_time", json!(null)).contains("running but has no pid and start_time")
        );
    }
}
