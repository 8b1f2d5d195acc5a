//! VM templates on our vmm. A VM created with a `memory_file` has its RAM in that file, mapped
//! shared, and the vmm has a `--state-file` in its directory. Saving it ([`save_template`])
//! asks the paused vmm's API to `save` (vCPUs, interrupt controllers, clock and every device:
//! docs/VMM.md) and copies the state into the template directory. A clone
//! ([`create_from_template`]) is a vmm started with `--restore` on that state and the same RAM
//! file, which it maps private (copy-on-write); its own sockets, console log and directory
//! are the clone's. When it starts, the guest goes on from the save, its agent already up
//! (the vsock device tells it the saved VM's connections are gone).
//!
//! The descriptor ([`Descriptor`], JSON, `"schema": "kvm-template/1"`) names the files and
//! everything the clone's command line is built from, and the vmm binary (path, size, mtime)
//! that made it: a restore needs that very vmm (its state file says which version wrote it,
//! and the vmm refuses another's, or another CPU's, before it builds anything).

use crate::config::Network;
use crate::error::KvmError;
use crate::state::{KvmFields, Lifecycle, VmState};
use crate::vm::{self, VmArgs};
use hypervisor_framework::blob::Schema;
use hypervisor_framework::ops::{self, OpError};
use hypervisor_framework::template::{self as shared, TemplateError};
use plugin_api::hypervisor::HypervisorConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::info;
use vmm_api::{Client, Request};

/// The descriptor's schema (`kvm-template/1`).
pub const DESCRIPTOR: Schema = Schema { what: "kvm VM template", prefix: "kvm-template/", version: 1 };
pub use crate::layout::VM_STATE_FILE;
/// The saved state in the template directory.
pub const STATE_FILE: &str = "vmm-state.json";
/// How long the vmm may take to save (tens of KiB: the RAM is not in it).
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);

/// A saved template.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    /// `kvm-template/1`.
    pub schema: String,
    /// The vmm binary that made it (absolute).
    pub vmm: PathBuf,
    /// Its identity then ([`shared::binary_identity`]).
    pub vmm_identity: String,
    /// The number of agent ports.
    pub agent_ports: u32,
    /// Whether the VM has a vsock device.
    pub vsock: bool,
    /// The network.
    pub network: Network,
    /// The VM every clone is; its `memory_file` is the template's RAM.
    pub config: HypervisorConfig,
    /// The vmm's saved state.
    pub state_file: PathBuf,
    /// Its SHA-256 (hex): a clone restores only the state that was saved.
    pub state_sha256: String,
}

fn op(e: TemplateError) -> KvmError {
    KvmError::Op(OpError::Template(e))
}

/// The value of `option` in a vmm command line.
fn option<'a>(argv: &'a [String], option: &str) -> Option<&'a str> {
    argv.iter().position(|a| a == option).and_then(|i| argv.get(i + 1)).map(String::as_str)
}

/// Saves the paused VM `state` as a template in `dir` (checked: absolute, private, safe);
/// returns the descriptor. `template` is how the VM was created (its config, network).
pub fn save_template(state: &VmState, dir: &Path, network: &Network) -> Result<Vec<u8>, KvmError> {
    let id = state.sandbox_id.as_str();
    let no_memory = || op(TemplateError::NoMemoryFile { sandbox_id: id.into() });
    let memory = option(&state.argv, "--memory-file").map(PathBuf::from).ok_or_else(no_memory)?;
    let vm_state = option(&state.argv, "--state-file").map(PathBuf::from).ok_or_else(no_memory)?;
    let config = state.fields.template.clone().ok_or_else(no_memory)?;
    let now = ops::vm_status(state);
    if state.lifecycle != Lifecycle::Paused || now != "paused" {
        return Err(KvmError::Op(OpError::wrong_state(state, now, "be saved as a template (only a paused VM can)")));
    }
    let began = Instant::now();
    let client = Client::new(state.vm_dir().control_socket(), SAVE_TIMEOUT);
    client
        .run_state(Request::Save)
        .map_err(|source| KvmError::Op(OpError::Control { sandbox_id: id.into(), source: crate::control::ApiError { op: Request::Save, source } }))?;
    let state_file = dir.join(STATE_FILE);
    // The VM directory and the template directory are on different file systems (a run
    // directory, /dev/shm): a copy, not a rename.
    std::fs::copy(&vm_state, &state_file).map_err(|source| op(TemplateError::Io { what: "copying the vmm's state to", path: state_file.clone(), source }))?;
    shared::make_private(&[("RAM file", &memory), ("vmm state", &state_file)]).map_err(op)?;
    shared::mark_saved(state.vm_dir().path()).map_err(op)?;
    let vmm = PathBuf::from(&state.argv[0]);
    let descriptor = Descriptor {
        schema: DESCRIPTOR.current(),
        vmm_identity: shared::binary_identity(&vmm).map_err(op)?,
        vmm,
        agent_ports: state.fields.agent_ports,
        vsock: state.fields.vsock,
        network: network.clone(),
        config,
        state_sha256: shared::file_digest("vmm state", &state_file).map_err(op)?,
        state_file,
    };
    let size = std::fs::metadata(&descriptor.state_file).map_or(0, |m| m.len());
    info!(sandbox_id = id, dir = %dir.display(), state_bytes = size, ms = began.elapsed().as_millis() as u64, "saved the VM as a template");
    Ok(serde_json::to_vec(&descriptor).unwrap_or_default())
}

/// Creates the VM of `sandbox_id` as a clone of the template `template` describes, with
/// `hv`'s console log; starts nothing (`start_vm` starts the restored vmm, whose guest goes on
/// from the save).
pub fn create_from_template(run_dir: &Path, sandbox_id: &str, template: &[u8], hv: &HypervisorConfig) -> Result<VmState, KvmError> {
    let d: Descriptor = DESCRIPTOR.decode(template).map_err(|e| op(e.into()))?;
    let saved = shared::SavedFiles { config: &d.config, state_what: "vmm state", state: &d.state_file, state_sha256: &d.state_sha256, binary: &d.vmm, binary_identity: &d.vmm_identity };
    let memory = shared::check_clone(&saved, hv).map_err(op)?;
    let mut spec = ops::check_request::<KvmFields>(sandbox_id, hv, &vm::LIMITS)?;
    spec.memory_file = Some(memory);
    if let Some(log) = &spec.console_log {
        shared::note_clone(log, "kvm", d.state_file.parent().unwrap_or(Path::new("/"))).map_err(op)?;
    }
    let dir = ops::prepare_dir::<KvmFields>(run_dir, sandbox_id, d.agent_ports)?;
    let args = VmArgs { vmm: &d.vmm, dir: &dir, agent_ports: d.agent_ports, vsock: d.vsock, network: &d.network, spec: &spec, restore: Some(&d.state_file) };
    let argv = vm::build(&args);
    tracing::debug!(sandbox_id, ?argv, "vmm command line of a template's clone");
    let fields = KvmFields { agent_ports: d.agent_ports, vsock: d.vsock, template: None };
    Ok(VmState::created(sandbox_id, dir.path().to_owned(), argv, fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::hypervisor::DiskConfig;

    /// A template directory as `save_template` leaves it, without a real VM: a sparse RAM file,
    /// a state file, the descriptor (made by `true` as the vmm).
    fn made(dir: &Path) -> (Descriptor, HypervisorConfig) {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF\x02\x01\x01").unwrap();
        let rootfs = dir.join("root.img");
        std::fs::write(&rootfs, b"r").unwrap();
        let clone_config = HypervisorConfig {
            memory_mib: 256,
            disks: vec![DiskConfig { name: "rootfs".into(), path: rootfs, read_only: true }],
            ..hypervisor_framework::testing::hypervisor_config(kernel)
        };
        let template = dir.join("template");
        std::fs::create_dir(&template).unwrap();
        let memory = template.join("memory");
        std::fs::File::create(&memory).unwrap().set_len(256 << 20).unwrap();
        let state_file = template.join(STATE_FILE);
        std::fs::write(&state_file, b"{\"header\": {}}").unwrap();
        let vmm = hypervisor_framework::find_program("true").expect("true");
        let descriptor = Descriptor {
            schema: DESCRIPTOR.current(),
            vmm_identity: shared::binary_identity(&vmm).unwrap(),
            vmm,
            agent_ports: 2,
            vsock: true,
            network: Network::None,
            config: HypervisorConfig { memory_file: Some(memory), ..clone_config.clone() },
            state_sha256: shared::file_digest("vmm state", &state_file).unwrap(),
            state_file,
        };
        (descriptor, clone_config)
    }

    fn clone(dir: &Path, d: &Descriptor, config: &HypervisorConfig) -> Result<VmState, String> {
        create_from_template(&dir.join("run"), "clone1", &serde_json::to_vec(d).unwrap(), config).map_err(|e| error_report::chain(&e))
    }

    #[test]
    fn a_clone_restores_the_state_on_the_template_s_ram() {
        let tmp = tempfile::tempdir().unwrap();
        let (d, mut config) = made(tmp.path());
        config.console_log = Some(tmp.path().join("clone-console.log"));
        let state = clone(tmp.path(), &d, &config).unwrap();
        let argv = state.argv.join(" ");
        assert!(argv.contains(&format!("--restore {}", d.state_file.display())), "{argv}");
        assert!(argv.contains(&format!("--memory-file {}", d.config.memory_file.as_ref().unwrap().display())), "{argv}");
        for booted_only in ["--kernel", "--cmdline", "--state-file", "--initrd"] {
            assert!(!argv.contains(booted_only), "a clone is not booted: {argv}");
        }
        assert!(argv.contains(&format!("{}/vsock.sock", tmp.path().join("run/clone1").display())), "the clone's own sockets: {argv}");
        assert_eq!((state.fields.agent_ports, state.fields.vsock, state.fields.template.is_none()), (2, true, true));
        let console = std::fs::read_to_string(tmp.path().join("clone-console.log")).unwrap();
        assert!(console.contains("is a clone of the kvm VM template"), "{console}");
    }

    #[test]
    fn a_clone_that_cannot_be_the_template_s_is_refused_naming_why() {
        let tmp = tempfile::tempdir().unwrap();
        let (d, config) = made(tmp.path());
        let bigger = HypervisorConfig { memory_mib: 512, ..config.clone() };
        assert!(clone(tmp.path(), &d, &bigger).unwrap_err().contains("memory_mib"));
        std::fs::write(&d.state_file, b"{\"header\": 1}").unwrap();
        let e = clone(tmp.path(), &d, &config).unwrap_err();
        assert!(e.contains("vmm state"), "a changed state is refused: {e}");
        std::fs::write(&d.state_file, b"{\"header\": {}}").unwrap();
        std::fs::File::options().write(true).open(d.config.memory_file.as_ref().unwrap()).unwrap().set_len(1 << 20).unwrap();
        let e = clone(tmp.path(), &d, &config).unwrap_err();
        assert!(e.contains("RAM file"), "a truncated RAM file is refused: {e}");
        let e = create_from_template(&tmp.path().join("run"), "clone1", br#"{"schema": "kvm-template/9"}"#, &config).unwrap_err();
        assert!(error_report::chain(&e).contains("kvm-template/9"), "{e}");
    }
}
