//! VM templates on QEMU, as Kata 1.x made them. A VM created with a `memory_file` has its RAM in
//! a `memory-backend-file` mapped `share=on`, so the guest's memory is that file. Saving it
//! ([`save_template`]) pauses nothing more: the paused VM's device state goes through QEMU's
//! migration with the `x-ignore-shared` capability into a file (the RAM stays in its file, out
//! of the stream). A clone ([`create_from_template`]) runs the same machine with the same RAM
//! file mapped `share=off` (copy-on-write: the clones share every page none of them wrote) and
//! `-incoming defer`; when it starts, [`restore`] feeds the state back with `migrate-incoming`
//! and continues it, its agent already up.
//!
//! The descriptor ([`Descriptor`], JSON, `"schema": "qemu-template/1"`) names the files and
//! everything the clone's command line is built from, so a clone does not depend on the plugin
//! config of the instance that cloned it, and names the QEMU binary (path, size, mtime) that
//! made it: a restore needs that very QEMU.

use crate::accel::Accel;
use crate::argv::{self, VmArgs, QMP_LOCK};
use crate::config::{Network, QemuConfig};
use crate::qmp::{self, QmpError, QmpSession};
use crate::spec;
use crate::state::{Lifecycle, QemuFields, VmState};
pub use crate::state::TemplateSource;
use crate::vm::QemuError;
use hypervisor_framework::blob::Schema;
use hypervisor_framework::ops::{self, OpError};
use hypervisor_framework::template::{self as shared, TemplateError};
use plugin_api::hypervisor::HypervisorConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::info;

/// The descriptor's schema (`qemu-template/1`).
pub const DESCRIPTOR: Schema = Schema { what: "QEMU VM template", prefix: "qemu-template/", version: 1 };
/// The device state's file in the template directory.
pub const STATE_FILE: &str = "qemu-device-state";
/// How long saving or restoring the device state may take (a few hundred KiB; the RAM is
/// not in the stream).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a migration's progress is asked for.
const MIGRATION_POLL: Duration = Duration::from_millis(10);

/// A saved template.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    /// `qemu-template/1`.
    pub schema: String,
    /// The QEMU binary that made it (absolute).
    pub qemu: PathBuf,
    /// Its identity then ([`shared::binary_identity`]).
    pub qemu_identity: String,
    /// The machine type.
    pub machine: String,
    /// The accelerator.
    pub accel: Accel,
    /// The number of agent ports.
    pub agent_ports: u32,
    /// The network.
    pub network: Network,
    /// Whether the VM has a vsock device (each clone gets a CID of its own).
    pub vsock: bool,
    /// The VM every clone is; its `memory_file` is the template's RAM.
    pub config: HypervisorConfig,
    /// The device state.
    pub state_file: PathBuf,
    /// Its SHA-256 (hex): a clone restores only the state that was saved.
    pub state_sha256: String,
}

/// Saves the paused VM `state` as a template in `dir` (checked: absolute, private, safe);
/// returns the descriptor.
pub fn save_template(state: &VmState, dir: &Path) -> Result<Vec<u8>, QemuError> {
    let id = state.sandbox_id.as_str();
    let Some(source) = &state.fields.template else {
        return Err(op(TemplateError::NoMemoryFile { sandbox_id: id.into() }));
    };
    let now = ops::vm_status(state);
    if state.lifecycle != Lifecycle::Paused || now != "paused" {
        return Err(QemuError::Op(OpError::wrong_state(state, now, "be saved as a template (only a paused VM can)")));
    }
    let memory = source.config.memory_file.clone().ok_or_else(|| op(TemplateError::NoMemoryFile { sandbox_id: id.into() }))?;
    let state_file = dir.join(STATE_FILE);
    match std::fs::remove_file(&state_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(op(TemplateError::Io { what: "removing the old", path: state_file, source: e }));
        }
        _ => {}
    }
    let began = Instant::now();
    let mut session = session(state).map_err(control(state))?;
    ignore_shared(&mut session).map_err(control(state))?;
    let uri = format!("exec:cat > '{}'", state_file.display());
    session.execute("migrate", Some(json!({ "uri": uri }))).map_err(control(state))?;
    wait_migration(&mut session, "save the device state").map_err(control(state))?;
    drop(session);
    shared::make_private(&[("RAM file", &memory), ("device state", &state_file)]).map_err(op)?;
    shared::mark_saved(state.vm_dir().path()).map_err(op)?;
    let qemu = PathBuf::from(&state.argv[0]);
    let descriptor = Descriptor {
        schema: DESCRIPTOR.current(),
        qemu_identity: shared::binary_identity(&qemu).map_err(op)?,
        qemu,
        machine: source.machine.clone(),
        accel: state.fields.accel,
        agent_ports: state.fields.agent_ports,
        network: source.network,
        vsock: state.fields.vsock_cid.is_some(),
        config: source.config.clone(),
        state_sha256: shared::file_digest("device state", &state_file).map_err(op)?,
        state_file,
    };
    let size = std::fs::metadata(&descriptor.state_file).map_or(0, |m| m.len());
    info!(sandbox_id = id, dir = %dir.display(), state_bytes = size, ms = began.elapsed().as_millis() as u64, "saved the VM as a template");
    Ok(serde_json::to_vec(&descriptor).unwrap_or_default())
}

/// Creates the VM of `sandbox_id` as a clone of the template `template` describes, with
/// `hv`'s console log; starts nothing ([`restore`] runs when it starts).
pub fn create_from_template(config: &QemuConfig, sandbox_id: &str, template: &[u8], hv: &HypervisorConfig) -> Result<VmState, QemuError> {
    let d: Descriptor = DESCRIPTOR.decode(template).map_err(|e| op(e.into()))?;
    let saved = shared::SavedFiles { config: &d.config, state_what: "device state", state: &d.state_file, state_sha256: &d.state_sha256, binary: &d.qemu, binary_identity: &d.qemu_identity };
    let memory = shared::check_clone(&saved, hv).map_err(op)?;
    let mut spec = ops::check_request::<QemuFields>(sandbox_id, hv, &spec::LIMITS)?;
    spec.memory_file = Some(memory);
    if let Some(log) = &spec.console_log {
        shared::note_clone(log, "QEMU", d.state_file.parent().unwrap_or(Path::new("/"))).map_err(op)?;
    }
    let dir = ops::prepare_dir::<QemuFields>(&config.run_dir, sandbox_id, d.agent_ports)?;
    let vsock_cid = d.vsock.then(|| argv::vsock_cid(sandbox_id, 0));
    let args = VmArgs {
        qemu: &d.qemu,
        sandbox_id,
        dir: &dir,
        machine: &d.machine,
        accel: d.accel,
        agent_ports: d.agent_ports,
        network: d.network,
        vsock_cid,
        spec: &spec,
        clone: true,
    };
    let argv = argv::build(&args);
    tracing::debug!(sandbox_id, ?argv, "QEMU command line of a template's clone");
    let fields = QemuFields { accel: d.accel, agent_ports: d.agent_ports, vsock_cid, template: None, incoming: Some(d.state_file) };
    Ok(VmState::created(sandbox_id, dir.path().to_owned(), argv, fields))
}

/// Restores a clone that QEMU just started with `-incoming defer`: the template's device state
/// from `state_file`, then the vCPUs run.
pub fn restore(state: &VmState, state_file: &Path) -> Result<(), QmpError> {
    let began = Instant::now();
    let mut session = session(state)?;
    ignore_shared(&mut session)?;
    let uri = format!("exec:cat '{}'", state_file.display());
    session.execute("migrate-incoming", Some(json!({ "uri": uri })))?;
    wait_migration(&mut session, "restore the device state")?;
    session.execute("cont", None)?;
    info!(sandbox_id = %state.sandbox_id, ms = began.elapsed().as_millis() as u64, "restored a template's clone");
    Ok(())
}

/// A QMP session with time for a migration.
fn session(state: &VmState) -> Result<QmpSession, QmpError> {
    let dir = state.vm_dir();
    qmp::connect(&dir.control_socket(), &dir.file(QMP_LOCK), MIGRATION_TIMEOUT)
}

/// Keeps shared RAM out of the migration stream.
fn ignore_shared(session: &mut QmpSession) -> Result<(), QmpError> {
    let capabilities = json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": true }] });
    session.execute("migrate-set-capabilities", Some(capabilities)).map(drop)
}

/// Polls `query-migrate` until the migration completed; `failed` or `cancelled` is an error
/// with QEMU's words.
fn wait_migration(session: &mut QmpSession, what: &'static str) -> Result<(), QmpError> {
    let began = Instant::now();
    loop {
        let answer = session.execute("query-migrate", None)?;
        let status = answer.get("status").and_then(Value::as_str).unwrap_or("");
        match status {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let desc = answer.get("error-desc").and_then(Value::as_str).unwrap_or("no error-desc");
                return Err(QmpError::Migration { what, why: format!("{status}: {desc}") });
            }
            _ if began.elapsed() > MIGRATION_TIMEOUT => {
                return Err(QmpError::Migration { what, why: format!("still {status:?} after {MIGRATION_TIMEOUT:?}") });
            }
            _ => std::thread::sleep(MIGRATION_POLL),
        }
    }
}

fn op(e: TemplateError) -> QemuError {
    QemuError::Op(OpError::Template(e))
}

fn control(state: &VmState) -> impl Fn(QmpError) -> QemuError + '_ {
    move |source| QemuError::Op(OpError::Control { sandbox_id: state.sandbox_id.clone(), source })
}
