//! The VM's state blob: what the host persists between calls, as versioned JSON.
//!
//! ```json
//! {"schema": "qemu-vm/1", "sandbox_id": "sb1", "dir": "/run/sandbox-runtime/qemu/sb1",
//!  "argv": ["/usr/bin/qemu-system-x86_64", "-name", "sandbox-sb1", ...],
//!  "accel": "tcg", "agent_ports": 4, "vsock_cid": null,
//!  "lifecycle": "running", "pid": 4242, "start_time": 1234567}
//! ```
//!
//! `start_time` is field 22 of `/proc/<pid>/stat` (clock ticks after boot): with the pid it
//! names one process, so a reused pid is never mistaken for QEMU. The envelope and its checks
//! are [`hypervisor_framework::state`]'s; this plugin adds [`QemuFields`].

use crate::accel::Accel;
use crate::argv::QemuLayout;
use crate::config::Network;
use plugin_api::hypervisor::HypervisorConfig;
use std::path::PathBuf;
use serde::{Deserialize, Serialize};
use hypervisor_framework::blob::Schema;
use hypervisor_framework::state::VmFields;
pub use hypervisor_framework::state::StateError;
pub use hypervisor_framework::Lifecycle;

/// This plugin's blob schema (`qemu-vm/1`).
pub const SCHEMA: Schema = Schema { what: "QEMU VM state", prefix: "qemu-vm/", version: 1 };

/// The state blob: the shared envelope around [`QemuFields`].
pub type VmState = hypervisor_framework::state::VmState<QemuFields>;

/// What the state blob of a VM that can be saved as a template keeps (the VM was created with
/// a `memory_file`): what its clones' command lines are built from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TemplateSource {
    /// The config it was created from, its `memory_file` absolute.
    pub config: HypervisorConfig,
    /// The machine type.
    pub machine: String,
    /// The network.
    pub network: Network,
}

/// What this plugin adds to the state blob.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QemuFields {
    /// The accelerator chosen at create time.
    pub accel: Accel,
    /// How many virtio-serial agent ports the VM has.
    pub agent_ports: u32,
    /// The vsock CID, when the VM has a vsock device.
    pub vsock_cid: Option<u32>,
    /// For a VM created with a `memory_file`: what a template saved from it is made of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<TemplateSource>>,
    /// For a template's clone: the device state it restores when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<PathBuf>,
}

impl VmFields for QemuFields {
    const SCHEMA: Schema = SCHEMA;
    const PROGRAM: &'static str = "QEMU";
    type Layout = QemuLayout;

    fn agent_ports(&self) -> u32 {
        self.agent_ports
    }

    fn check(state: &VmState) -> Result<(), String> {
        if let Some(cid) = state.fields.vsock_cid {
            if !(3..u32::MAX).contains(&cid) {
                return Err(format!("vsock_cid {cid} is reserved"));
            }
        }
        if let Some(pid) = state.pid {
            if pid <= 1 {
                return Err(format!("pid {pid} cannot be a QEMU process"));
            }
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
            schema: VmState::schema_string(),
            sandbox_id: "sb1".into(),
            dir: "/run/q/sb1".into(),
            argv: vec!["/usr/bin/qemu-system-x86_64".into(), "-name".into(), "sandbox-sb1".into()],
            fields: QemuFields { accel: Accel::Tcg, agent_ports: 4, vsock_cid: None, template: None, incoming: None },
            lifecycle: Lifecycle::Running,
            pid: Some(4242),
            start_time: Some(99),
        }
    }

    fn error(blob: serde_json::Value) -> String {
        hypervisor_framework::testing::decode_error::<QemuFields>(&blob)
    }

    fn error_with(key: &str, value: serde_json::Value) -> String {
        hypervisor_framework::testing::error_with(&state(), key, value)
    }

    #[test]
    fn round_trip() {
        let s = state();
        let bytes = s.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["schema"], "qemu-vm/1");
        assert_eq!(json["lifecycle"], "running");
        assert_eq!(json["pid"], 4242);
        assert_eq!(json["accel"], "tcg");
        assert_eq!(VmState::decode(&bytes).unwrap(), s);
        let created = VmState { lifecycle: Lifecycle::Created, pid: None, start_time: None, ..state() };
        assert_eq!(VmState::decode(&created.encode()).unwrap(), created);
    }

    #[test]
    fn malformed_and_foreign_blobs_are_errors() {
        assert!(VmState::decode(b"").unwrap_err().to_string().contains("malformed"));
        assert!(VmState::decode(b"{\"schema\": ").unwrap_err().to_string().contains("malformed"));
        assert!(VmState::decode(&[0xff, 0xfe]).is_err());
        assert!(error(json!([1, 2])).contains("expected a JSON object, got an array"));
        assert!(error(json!({"pid": 1})).contains("no \"schema\" field"));
        assert!(error(json!({"schema": 1})).contains("its schema is 1"));
        let e = error(json!({"schema": "kvm-vm/1", "pid": 3}));
        assert!(e.contains("\"kvm-vm/1\"") && e.contains("qemu-vm/1"), "{e}");
        assert!(error_with("schema", json!("qemu-vm/2")).contains("newer"));
        assert!(error_with("schema", json!("qemu-vm/0")).contains("qemu-vm/0"));
        let e = error_with("lifecycle", json!("exploded"));
        assert!(e.contains("malformed"), "{e}");
        assert!(error_with("surprise", json!(1)).contains("malformed"));
        let mut v = serde_json::to_value(state()).unwrap();
        v.as_object_mut().unwrap().remove("argv");
        assert!(error(v).contains("malformed"));
    }

    #[test]
    fn inconsistent_values_are_errors() {
        assert!(error_with("sandbox_id", json!("../etc")).contains("sandbox id"));
        for dir in ["relative/sb1", "/run/q/other", "/run/../sb1", "/"] {
            let e = error_with("dir", json!(dir));
            assert!(e.contains("dir") && e.contains(dir), "{e}");
        }
        assert!(error_with("argv", json!([])).contains("argv"));
        assert!(error_with("argv", json!(["qemu"])).contains("argv"));
        assert!(error_with("agent_ports", json!(0)).contains("agent_ports 0"));
        assert!(error_with("vsock_cid", json!(2)).contains("vsock_cid 2"));
        assert!(error_with("pid", json!(1)).contains("pid 1"));
        assert!(error_with("pid", json!(null)).contains("running but has no pid"));
        assert!(error_with("start_time", json!(null)).contains("no pid and start_time"));
    }
}
