//! The `kvm` hypervisor plugin: each VM is a daemonized `vmm` (the binary of
//! `hypervisor-kvm/vmm`, which this crate does not link) that outlives the process that
//! started it, driven over its control API through the types and client of [`vmm_api`].
//!
//! - Plugin config ([`config::KvmConfig`], JSON, every key optional): `vmm`, `run_dir`,
//!   `agent_ports`, `vsock`, `network` (`none`, `tap:<name>`), `stop_timeout_ms`. Unknown keys
//!   are errors.
//! - Each VM lives in `<run_dir>/<sandbox_id>/` (mode 0700, [`layout`]): `api.sock`, `vmm.pid`,
//!   `vsock.sock`, `agent-<N>.sock` (one per virtio-console agent port `agent.<N>`),
//!   `vmm.log` (the vmm's stderr) and `vm-state.json` (the latest state blob, for
//!   `list_vms`). `stop_vm` removes it; the console log is the host's and
//!   stays.
//! - The kernel is an ELF `vmlinux` (booted through PVH, the fast path) or a bzImage (the
//!   fallback, booted through the Linux 64-bit boot protocol); anything else is refused.
//! - The state blob is [`state::VmState`] (JSON, `"schema": "kvm-vm/1"`).
//! - Agent endpoints, best first: `hvsock:<dir>/vsock.sock:1024` when `vsock` is on, then
//!   `serial:<dir>/agent-<N>.sock` for every port.
//! - `HypervisorConfig.extra` must be `null` or `{}`: this plugin has no per-VM settings.
//!
//! - Templates ([`template`]): a VM created with a `memory_file` gets a `--state-file`;
//!   `save_template` has the paused vmm save its state and copies it into the template
//!   directory (descriptor `kvm-template/1`); `create_from_template` makes a vmm that
//!   `--restore`s it with the RAM file mapped private.
//!
//! Creating a VM and the vmm's command line are in [`vm`], its errors in [`error`]; starting, stopping, pausing,
//! resuming and the status are [`hypervisor_framework::ops`], over this plugin's hooks in [`control`].

pub mod config;
pub mod control;
pub mod error;
pub mod layout;
pub mod state;
pub mod template;
pub mod vm;

use config::KvmConfig;
use plugin_api::hypervisor::{HypervisorConfig, HypervisorPlugin};
use plugin_api::endpoint::AgentEndpoint;
use plugin_api::{ErrorKind, Plugin, PluginError, PluginKind};
use state::VmState;
use std::time::Duration;
use error::KvmError;
use hypervisor_framework::plugin::{Hypervisor, VmOps};

/// The `kvm` hypervisor plugin.
pub struct KvmPlugin;

impl Plugin for KvmPlugin {
    const NAME: &'static str = "kvm";
    const KIND: PluginKind = PluginKind::HYPERVISOR;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const VENDOR: &'static str = "sandbox-runtime";

    fn new_hypervisor(config: &[u8]) -> Result<impl HypervisorPlugin, PluginError> {
        KvmHypervisor::new(config)
    }
}

plugin_api::register_static_plugin!(KvmPlugin);

/// A hypervisor instance: the plugin config, nothing else (all VM state is in the blobs).
pub type KvmHypervisor = Hypervisor<KvmConfig>;

impl VmOps for KvmConfig {
    type Fields = state::KvmFields;
    type Error = KvmError;

    fn parse(config: &[u8]) -> Result<KvmConfig, config::PluginConfigError> {
        KvmConfig::parse(config)
    }

    fn error_kind(error: &KvmError) -> ErrorKind {
        match error {
            KvmError::Op(e) => e.kind(|_| ErrorKind::OTHER),
            KvmError::KernelFormat(_) | KvmError::TooManyDevices { .. } => ErrorKind::INVALID_INPUT,
            KvmError::VmmMissing(_) => ErrorKind::NOT_FOUND,
            KvmError::KernelRead { .. } => ErrorKind::IO,
        }
    }

    fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.stop_timeout_ms)
    }

    fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }

    fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<VmState, KvmError> {
        vm::create_vm(self, sandbox_id, config)
    }

    fn agent_endpoint(&self, state: &VmState) -> Result<Vec<AgentEndpoint>, KvmError> {
        vm::agent_endpoint(state)
    }

    fn save_template(&self, state: &VmState, dir: &std::path::Path) -> Result<Vec<u8>, KvmError> {
        template::save_template(state, dir, &self.network)
    }

    fn create_from_template(&self, sandbox_id: &str, template: &[u8], config: &HypervisorConfig) -> Result<VmState, KvmError> {
        template::create_from_template(&self.run_dir, sandbox_id, template, config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::hypervisor::DiskConfig;
    use std::path::Path;

    fn hypervisor(run_dir: &Path, extra: &str) -> KvmHypervisor {
        let json = format!(r#"{{"run_dir": {:?}{extra}}}"#, run_dir.to_str().unwrap());
        KvmHypervisor::new(json.as_bytes()).unwrap()
    }

    /// A kernel that passes the ELF check (nothing boots it here).
    fn elf_kernel(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("vmlinux");
        std::fs::write(&path, b"\x7fELF\x02\x01\x01").unwrap();
        path
    }

    fn config(dir: &Path) -> HypervisorConfig {
        hypervisor_framework::testing::config_with_rootfs(dir, elf_kernel(dir))
    }

    #[test]
    fn manifest_and_config_errors() {
        assert_eq!(
            (KvmPlugin::NAME, KvmPlugin::KIND, KvmPlugin::VENDOR),
            ("kvm", PluginKind::HYPERVISOR, "sandbox-runtime")
        );
        let e = KvmHypervisor::new(br#"{"agent_ports": 9}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::INVALID_INPUT);
        assert!(e.message.contains("agent_ports = 9"), "{e}");
        let e = KvmHypervisor::new(br#"{"accel": "kvm"}"#).unwrap_err();
        assert!(
            e.kind == ErrorKind::INVALID_INPUT && e.message.contains("unknown field `accel`"),
            "{e}"
        );
    }

    #[test]
    fn create_status_endpoint_stop_without_booting() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        // `true` stands in for the vmm: create_vm only needs it to exist.
        let hv = hypervisor(&run_dir, r#", "vmm": "true", "agent_ports": 2"#);
        let blob = hv.create_vm("sb1", &config(tmp.path())).unwrap();
        let state = VmState::decode(&blob).unwrap();
        assert_eq!(state.lifecycle, state::Lifecycle::Created);
        assert!(state.argv[0].ends_with("/true"));
        let dir = run_dir.join("sb1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["vm-state.json"], "create_vm writes only the copy of the blob");
        assert_eq!(std::fs::read(dir.join("vm-state.json")).unwrap(), blob);
        assert_eq!(hv.vm_status(&blob).unwrap(), "created");
        let endpoint = hv.agent_endpoint(&blob).unwrap();
        let d = dir.display();
        assert_eq!(
            endpoint,
            format!("hvsock:{d}/vsock.sock:1024,serial:{d}/agent-0.sock,serial:{d}/agent-1.sock")
        );
        // A second create of the same id finds no live vmm there and starts afresh.
        std::fs::write(dir.join("vmm.pid"), "999999999\n").unwrap();
        hv.create_vm("sb1", &config(tmp.path())).unwrap();
        assert!(!dir.join("vmm.pid").exists());
        let e = hv.pause_vm(&blob).unwrap_err();
        assert!(
            e.kind == ErrorKind::INVALID_INPUT && e.message.contains("sb1 is created"),
            "{e}"
        );
        let stopped = hv.stop_vm(&blob).unwrap();
        assert!(!dir.exists());
        assert_eq!(hv.vm_status(&stopped).unwrap(), "stopped");
        hv.stop_vm(&stopped).unwrap();
        let e = hv.start_vm(&stopped).unwrap_err();
        assert!(e.message.contains("is stopped: cannot start"), "{e}");
        assert!(hv.agent_endpoint(&stopped).is_err());

        let hv = hypervisor(
            &run_dir,
            r#", "vmm": "true", "vsock": false, "agent_ports": 1"#,
        );
        let blob = hv.create_vm("sb2", &config(tmp.path())).unwrap();
        assert_eq!(
            hv.agent_endpoint(&blob).unwrap(),
            format!("serial:{}/agent-0.sock", run_dir.join("sb2").display())
        );
        hv.stop_vm(&blob).unwrap();
    }

    #[test]
    fn create_errors_are_typed_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let hv = hypervisor(&tmp.path().join("run"), r#", "vmm": "/no/such/vmm""#);
        let e = hv.create_vm("sb1", &config(tmp.path())).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NOT_FOUND);
        assert!(
            e.message.contains("\"/no/such/vmm\"") && e.message.contains("vmm binary"),
            "{e}"
        );

        let hv = hypervisor(&tmp.path().join("run"), r#", "vmm": "true""#);
        let mut c = config(tmp.path());
        c.kernel = tmp.path().join("vmlinuz");
        std::fs::write(&c.kernel, b"MZ\x00\x00 not a kernel").unwrap();
        let e = hv.create_vm("sb1", &c).unwrap_err();
        assert_eq!(e.kind, ErrorKind::INVALID_INPUT);
        assert!(e.message.contains("neither an ELF vmlinux") && e.message.contains("vmlinuz"), "{e}");
        std::fs::write(&c.kernel, b"\x7f").unwrap();
        assert!(hv.create_vm("sb1", &c).unwrap_err().message.contains("neither an ELF vmlinux"));
        // A bzImage (HdrS at 0x202) is the fallback, accepted.
        let mut bzimage = vec![0u8; 0x300];
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&c.kernel, bzimage).unwrap();
        hv.create_vm("sb1", &c).expect("a bzImage is accepted");

        // RAM in a file: the vmm maps it shared and has a state file for a save.
        let mut c = config(tmp.path());
        c.memory_file = Some(tmp.path().join("memory"));
        let blob = hv.create_vm("sb1", &c).expect("a VM with its RAM in a file");
        let state = VmState::decode(&blob).unwrap();
        let argv = &state.argv;
        let at = argv.iter().position(|a| a == "--memory-file").expect("--memory-file");
        assert_eq!(argv[at + 1], tmp.path().join("memory").canonicalize().unwrap_or(tmp.path().join("memory")).display().to_string());
        assert!(argv.iter().any(|a| a == "--state-file"), "{argv:?}");
        assert_eq!(state.fields.template.as_ref(), Some(&c));
        let template_dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(template_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let e = hv.save_template(&blob, template_dir.path().to_str().unwrap()).unwrap_err();
        assert!(e.kind == ErrorKind::INVALID_INPUT && e.message.contains("only a paused VM can"), "{e}");
        hv.stop_vm(&blob).unwrap();
        // A VM without a RAM file cannot be a template; a descriptor that is not one is refused.
        let blob = hv.create_vm("sb1", &config(tmp.path())).unwrap();
        let e = hv.save_template(&blob, template_dir.path().to_str().unwrap()).unwrap_err();
        assert!(e.message.contains("memory_file"), "{e}");
        hv.stop_vm(&blob).unwrap();
        let e = hv.create_from_template("sb2", br#"{"schema": "qemu-template/1"}"#, &config(tmp.path())).unwrap_err();
        assert!(e.kind == ErrorKind::INVALID_INPUT && e.message.contains("kvm VM template"), "{e}");

        let e = hv.create_vm(".x", &config(tmp.path())).unwrap_err();
        assert!(
            e.kind == ErrorKind::INVALID_INPUT && e.message.contains("sandbox id"),
            "{e}"
        );
        let mut c = config(tmp.path());
        c.vcpus = 33;
        let e = hv.create_vm("sb1", &c).unwrap_err();
        assert!(
            e.kind == ErrorKind::INVALID_INPUT
                && e.message.contains("vcpus = 33")
                && e.message.contains("1 to 32"),
            "{e}"
        );
        let mut c = config(tmp.path());
        c.memory_mib = 4096;
        let e = hv.create_vm("sb1", &c).unwrap_err();
        assert!(
            e.message.contains("memory_mib = 4096") && e.message.contains("32 to 3072"),
            "{e}"
        );
        let mut c = config(tmp.path());
        c.extra = serde_json::json!({"cpus": 2});
        assert!(hv
            .create_vm("sb1", &c)
            .unwrap_err()
            .message
            .contains("the kvm plugin takes no per-VM extra settings"));
        let mut c = config(tmp.path());
        c.disks = (0..18)
            .map(|i| DiskConfig {
                name: format!("d{i}"),
                path: tmp.path().join("root.img"),
                read_only: true,
            })
            .collect();
        let e = hv.create_vm("sb1", &c).unwrap_err();
        assert!(
            e.kind == ErrorKind::INVALID_INPUT && e.message.contains("20 virtio devices (18 disks"),
            "{e}"
        );

        let long = tmp.path().join("r".repeat(90));
        let hv = hypervisor(&long, r#", "vmm": "true""#);
        let e = hv.create_vm("sb1", &config(tmp.path())).unwrap_err();
        assert!(e.message.contains("longer than 107 bytes"), "{e}");
    }

    #[test]
    fn bad_blobs_are_invalid_input() {
        let hv = KvmHypervisor::new(b"{}").unwrap();
        for blob in [&b"not json"[..], br#"{"schema": "qemu-vm/1"}"#, b"[]"] {
            let e = hv.vm_status(blob).unwrap_err();
            assert_eq!(e.kind, ErrorKind::INVALID_INPUT, "{e}");
            assert!(e.message.contains("kvm VM state"), "{e}");
            assert!(
                hv.stop_vm(blob).is_err()
                    && hv.start_vm(blob).is_err()
                    && hv.agent_endpoint(blob).is_err()
            );
        }
    }
}
