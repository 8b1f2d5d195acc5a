//! The QEMU hypervisor plugin (`qemu`): each VM is a daemonized `qemu-system-x86_64` that
//! outlives the process that started it, driven over QMP.
//!
//! - Plugin config ([`config::QemuConfig`], JSON, every key optional): `qemu`, `run_dir`,
//!   `accel` (`auto`, `kvm`, `tcg`; [`accel`] explains `auto`), `machine`, `agent_ports`,
//!   `network` (`user`, `none`), `stop_timeout_ms`. Unknown keys are errors.
//! - Each VM lives in `<run_dir>/<sandbox_id>/` (mode 0700): `qmp.sock`, `qmp.lock`,
//!   `qemu.pid`, `agent-<N>.sock` (one per virtio-serial agent port `agent.<N>`) and
//!   `vm-state.json` (the latest state blob, for `list_vms`). `stop_vm` removes it; the
//!   console log is the host's and stays.
//! - The state blob is [`state::VmState`] (JSON, `"schema": "qemu-vm/1"`).
//! - Agent endpoints, best first: `vsock:<cid>:1024` when the host has `/dev/vhost-vsock`,
//!   then `serial:<run_dir>/<id>/agent-<N>.sock` for every port.
//! - `HypervisorConfig.extra` must be `null` or `{}`: this plugin has no per-VM settings.
//!
//! - Templates ([`template`]): a VM created with a `memory_file` can be saved, paused, as a
//!   template (`qemu-template/1` descriptor: the device state migrated with `x-ignore-shared`
//!   beside the RAM file); clones map the RAM file copy-on-write and restore the state when
//!   they start.
//!
//! Creating a VM is in [`vm`]; starting, stopping, pausing, resuming and the status are
//! [`hypervisor_framework::ops`], over this plugin's hooks in [`control`]. QEMU's command line is in
//! [`argv`]; the QMP client in [`qmp`].

pub mod accel;
pub mod argv;
pub mod config;
pub mod control;
pub mod qmp;
pub mod spec;
pub mod state;
pub mod template;
pub mod vm;
#[cfg(test)]
mod vm_tests;

/// QEMU's process: pid + start time, pidfd signals (shared with the other hypervisor plugins).
pub use hypervisor_framework::process;

use config::QemuConfig;
use plugin_api::hypervisor::{HypervisorConfig, HypervisorPlugin};
use plugin_api::endpoint::AgentEndpoint;
use plugin_api::{ErrorKind, Plugin, PluginError, PluginKind};
use state::VmState;
use std::time::Duration;
use vm::QemuError;
use hypervisor_framework::plugin::{Hypervisor, VmOps};

/// The `qemu` hypervisor plugin.
pub struct QemuPlugin;

impl Plugin for QemuPlugin {
    const NAME: &'static str = "qemu";
    const KIND: PluginKind = PluginKind::HYPERVISOR;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const VENDOR: &'static str = "sandbox-runtime";

    fn new_hypervisor(config: &[u8]) -> Result<impl HypervisorPlugin, PluginError> {
        QemuHypervisor::new(config)
    }
}

plugin_api::register_static_plugin!(QemuPlugin);

/// A hypervisor instance: the plugin config, nothing else (all VM state is in the blobs).
pub type QemuHypervisor = Hypervisor<QemuConfig>;

impl VmOps for QemuConfig {
    type Fields = state::QemuFields;
    type Error = QemuError;

    fn parse(config: &[u8]) -> Result<QemuConfig, config::PluginConfigError> {
        QemuConfig::parse(config)
    }

    fn error_kind(error: &QemuError) -> ErrorKind {
        match error {
            QemuError::Op(e) => e.kind(|qmp| match qmp {
                qmp::QmpError::Busy { .. } => ErrorKind::BUSY,
                _ => ErrorKind::OTHER,
            }),
            QemuError::Accel(_) => ErrorKind::UNSUPPORTED,
            QemuError::QemuMissing(_) => ErrorKind::NOT_FOUND,
        }
    }

    fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.stop_timeout_ms)
    }

    fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }

    fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<VmState, QemuError> {
        vm::create_vm(self, sandbox_id, config)
    }

    fn agent_endpoint(&self, state: &VmState) -> Result<Vec<AgentEndpoint>, QemuError> {
        vm::agent_endpoint(state)
    }

    fn save_template(&self, state: &VmState, dir: &std::path::Path) -> Result<Vec<u8>, QemuError> {
        template::save_template(state, dir)
    }

    fn create_from_template(&self, sandbox_id: &str, template: &[u8], config: &HypervisorConfig) -> Result<VmState, QemuError> {
        template::create_from_template(self, sandbox_id, template, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hypervisor(run_dir: &std::path::Path, extra: &str) -> QemuHypervisor {
        let json = format!(r#"{{"run_dir": {:?}, "accel": "tcg"{extra}}}"#, run_dir.to_str().unwrap());
        QemuHypervisor::new(json.as_bytes()).unwrap()
    }

    fn config(dir: &std::path::Path) -> HypervisorConfig {
        std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
        hypervisor_framework::testing::config_with_rootfs(dir, dir.join("vmlinuz"))
    }

    #[test]
    fn manifest_and_config_errors() {
        assert_eq!((QemuPlugin::NAME, QemuPlugin::KIND, QemuPlugin::VENDOR), ("qemu", PluginKind::HYPERVISOR, "sandbox-runtime"));
        let e = QemuHypervisor::new(br#"{"agent_ports": 9}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::INVALID_INPUT);
        assert!(e.message.contains("agent_ports = 9"), "{e}");
    }

    #[test]
    fn create_status_endpoint_stop_without_booting() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        // `true` stands in for QEMU: create_vm only needs it to exist.
        let hv = hypervisor(&run_dir, r#", "qemu": "true", "agent_ports": 2"#);
        let blob = hv.create_vm("sb1", &config(tmp.path())).unwrap();
        let state = VmState::decode(&blob).unwrap();
        assert_eq!(state.lifecycle, state::Lifecycle::Created);
        assert!(state.argv[0].ends_with("/true") && state.argv.iter().any(|a| a == "sandbox-sb1"));
        let dir = run_dir.join("sb1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["vm-state.json"], "create_vm writes only the copy of the blob");
        assert_eq!(std::fs::read(dir.join("vm-state.json")).unwrap(), blob);
        assert_eq!(hv.vm_status(&blob).unwrap(), "created");
        let endpoint = hv.agent_endpoint(&blob).unwrap();
        let serial = format!("serial:{0}/agent-0.sock,serial:{0}/agent-1.sock", dir.display());
        assert!(endpoint == serial || endpoint.ends_with(&format!(",{serial}")), "{endpoint}");
        // A second create of the same id finds no live QEMU there and starts afresh.
        std::fs::write(dir.join("qemu.pid"), "999999999\n").unwrap();
        hv.create_vm("sb1", &config(tmp.path())).unwrap();
        assert!(!dir.join("qemu.pid").exists());
        // Pausing a created VM names its state.
        let e = hv.pause_vm(&blob).unwrap_err();
        assert!(e.kind == ErrorKind::INVALID_INPUT && e.message.contains("sb1 is created"), "{e}");
        let stopped = hv.stop_vm(&blob).unwrap();
        assert!(!dir.exists());
        assert_eq!(hv.vm_status(&stopped).unwrap(), "stopped");
        hv.stop_vm(&stopped).unwrap();
        let e = hv.start_vm(&stopped).unwrap_err();
        assert!(e.message.contains("is stopped: cannot start"), "{e}");
        assert!(hv.agent_endpoint(&stopped).is_err());
    }

    #[test]
    fn create_errors_are_typed_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let hv = hypervisor(&tmp.path().join("run"), r#", "qemu": "no-such-qemu-binary""#);
        let e = hv.create_vm("sb1", &config(tmp.path())).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NOT_FOUND);
        assert!(e.message.contains("no-such-qemu-binary") && e.message.contains("qemu-system-x86"), "{e}");
        let hv = hypervisor(&tmp.path().join("run"), r#", "qemu": "true""#);
        let e = hv.create_vm(".x", &config(tmp.path())).unwrap_err();
        assert!(e.kind == ErrorKind::INVALID_INPUT && e.message.contains("sandbox id"), "{e}");
        let mut c = config(tmp.path());
        c.vcpus = 0;
        let e = hv.create_vm("sb1", &c).unwrap_err();
        assert!(e.kind == ErrorKind::INVALID_INPUT && e.message.contains("vcpus = 0"), "{e}");
        let long = tmp.path().join("r".repeat(90));
        let hv = hypervisor(&long, r#", "qemu": "true""#);
        let e = hv.create_vm("sb1", &config(tmp.path())).unwrap_err();
        assert!(e.message.contains("longer than 107 bytes"), "{e}");
    }

    #[test]
    fn bad_blobs_are_invalid_input() {
        let hv = QemuHypervisor::new(b"{}").unwrap();
        for blob in [&b"not json"[..], br#"{"schema": "other/1"}"#, b"[]"] {
            let e = hv.vm_status(blob).unwrap_err();
            assert_eq!(e.kind, ErrorKind::INVALID_INPUT, "{e}");
            assert!(e.message.contains("QEMU VM state"), "{e}");
            assert!(hv.stop_vm(blob).is_err() && hv.start_vm(blob).is_err());
        }
    }
}
