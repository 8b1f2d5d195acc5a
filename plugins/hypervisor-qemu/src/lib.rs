//! The QEMU hypervisor plugin (`qemu`): each VM is a daemonized `qemu-system-x86_64` that
//! outlives the process that started it, driven over QMP.
//!
//! - Plugin config ([`config::QemuConfig`], JSON, every key optional): `qemu`, `run_dir`,
//!   `accel` (`auto`, `kvm`, `tcg`; [`accel`] explains `auto`), `machine`, `agent_ports`,
//!   `network` (`user`, `none`), `stop_timeout_ms`. Unknown keys are errors.
//! - Each VM lives in `<run_dir>/<sandbox_id>/` (mode 0700): `qmp.sock`, `qmp.lock`,
//!   `qemu.pid` and `agent-<N>.sock`, one per virtio-serial agent port `agent.<N>`.
//!   `stop_vm` removes it; the console log is the host's and stays.
//! - The state blob is [`state::VmState`] (JSON, `"schema": "qemu-vm/1"`).
//! - Agent endpoints, best first: `vsock:<cid>:1024` when the host has `/dev/vhost-vsock`,
//!   then `serial:<run_dir>/<id>/agent-<N>.sock` for every port.
//! - `HypervisorConfig.extra` must be `null` or `{}`: this plugin has no per-VM settings.
//!
//! The operations are in [`vm`]; QEMU's command line in [`argv`]; the QMP client in [`qmp`].

pub mod accel;
pub mod argv;
pub mod config;
pub mod qmp;
pub mod spec;
pub mod state;
pub mod vm;
#[cfg(test)]
mod vm_tests;

/// QEMU's process: pid + start time, pidfd signals (shared with the other hypervisor plugins).
pub use vm_process::process;

use config::QemuConfig;
use plugin_api::hypervisor::{HypervisorConfig, HypervisorPlugin};
use plugin_api::{ErrorKind, Plugin, PluginError, PluginKind};
use state::VmState;
use std::time::Duration;
use vm::VmError;
use vm_process::chain;

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
#[derive(Debug, Clone)]
pub struct QemuHypervisor {
    config: QemuConfig,
}

impl QemuHypervisor {
    /// Parses the plugin config.
    pub fn new(config: &[u8]) -> Result<QemuHypervisor, PluginError> {
        let config = QemuConfig::parse(config).map_err(|e| PluginError::invalid_input(chain(&e)))?;
        Ok(QemuHypervisor { config })
    }

    /// The parsed config.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }
}

fn kind_of(error: &VmError) -> ErrorKind {
    match error {
        VmError::SandboxId(_) | VmError::Spec(_) | VmError::State(_) | VmError::SocketPathTooLong(_) | VmError::WrongState { .. } => {
            ErrorKind::INVALID_INPUT
        }
        VmError::Accel(_) => ErrorKind::UNSUPPORTED,
        VmError::QemuMissing(_) => ErrorKind::NOT_FOUND,
        VmError::Dir(_) | VmError::Process { source: process::ProcessError::Signal { .. }, .. } => ErrorKind::IO,
        VmError::AlreadyRunning { .. } => ErrorKind::BUSY,
        VmError::Qmp { source: qmp::QmpError::Busy { .. }, .. } => ErrorKind::BUSY,
        VmError::StartFailed { .. } | VmError::Qmp { .. } | VmError::Process { .. } => ErrorKind::OTHER,
    }
}

/// Converts at the trait boundary: the kind from the variant, the whole chain as the message.
fn plugin_error(error: VmError) -> PluginError {
    PluginError::new(kind_of(&error), chain(&error))
}

fn decode(blob: &[u8]) -> Result<VmState, PluginError> {
    VmState::decode(blob).map_err(|e| plugin_error(e.into()))
}

impl HypervisorPlugin for QemuHypervisor {
    fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        vm::create_vm(&self.config, sandbox_id, config).map(|s| s.encode()).map_err(plugin_error)
    }

    fn start_vm(&self, blob: &[u8]) -> Result<Vec<u8>, PluginError> {
        vm::start_vm(&decode(blob)?).map(|s| s.encode()).map_err(plugin_error)
    }

    fn stop_vm(&self, blob: &[u8]) -> Result<Vec<u8>, PluginError> {
        let timeout = Duration::from_millis(self.config.stop_timeout_ms);
        vm::stop_vm(&decode(blob)?, timeout).map(|s| s.encode()).map_err(plugin_error)
    }

    fn pause_vm(&self, blob: &[u8]) -> Result<Vec<u8>, PluginError> {
        vm::pause_vm(&decode(blob)?).map(|s| s.encode()).map_err(plugin_error)
    }

    fn resume_vm(&self, blob: &[u8]) -> Result<Vec<u8>, PluginError> {
        vm::resume_vm(&decode(blob)?).map(|s| s.encode()).map_err(plugin_error)
    }

    fn agent_endpoint(&self, blob: &[u8]) -> Result<String, PluginError> {
        vm::agent_endpoint(&decode(blob)?).map_err(plugin_error)
    }

    fn vm_status(&self, blob: &[u8]) -> Result<String, PluginError> {
        Ok(vm::vm_status(&decode(blob)?).to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::hypervisor::DiskConfig;

    fn hypervisor(run_dir: &std::path::Path, extra: &str) -> QemuHypervisor {
        let json = format!(r#"{{"run_dir": {:?}, "accel": "tcg"{extra}}}"#, run_dir.to_str().unwrap());
        QemuHypervisor::new(json.as_bytes()).unwrap()
    }

    fn config(dir: &std::path::Path) -> HypervisorConfig {
        std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.join("root.img"), b"r").unwrap();
        HypervisorConfig {
            schema: 1,
            kernel: dir.join("vmlinuz"),
            initrd: None,
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 256,
            extra: serde_json::Value::Null,
            console_log: None,
            disks: vec![DiskConfig { name: "rootfs".into(), path: dir.join("root.img"), read_only: true }],
        }
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
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "create_vm writes nothing in the VM dir");
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
