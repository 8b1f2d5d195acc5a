//! What a plugin keeps of each VM on disk besides the VMM's own files: a copy of the VM's
//! latest state blob, `<dir>/vm-state.json`, through which [`list_vms`] finds every VM under the
//! run directory (a VM whose host record was lost can still be stopped), and [`adopt_vm`],
//! which moves a VM made by another instance (a factory's pool) under this instance's run
//! directory as another sandbox's.

use super::{check_no_live_vmm, live_process, OpError};
use crate::control::Control;
use crate::dir::{self, io_error, DirError, VmDir};
use crate::state::VmState;
use crate::Lifecycle;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The copy of the state blob in the VM directory.
pub const STATE_FILE: &str = "vm-state.json";

/// Writes `state` to its directory's [`STATE_FILE`] (0600, replaced atomically). A stopped VM
/// has no directory: nothing is written.
pub fn save_state_file<F: Control>(state: &VmState<F>) -> Result<(), DirError> {
    if state.lifecycle == Lifecycle::Stopped {
        return Ok(());
    }
    let path = state.vm_dir().file(STATE_FILE);
    let tmp = state.vm_dir().file(&format!(".{STATE_FILE}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error("writing the VM state copy", &tmp))?;
    file.write_all(&state.encode()).map_err(io_error("writing the VM state copy", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error("replacing the VM state copy", &path))
}

/// Every VM under `run_dir` whose directory holds a state copy of this plugin naming that
/// directory, as `(sandbox id, blob)`. A VM whose copy records no process but whose VMM runs
/// (found through the pid file) gets that process, so stopping the blob stops it. Directories
/// without a readable copy of this plugin are skipped (logged at debug level); a missing run
/// directory is an empty list.
pub fn list_vms<F: Control>(run_dir: &Path) -> Result<Vec<(String, Vec<u8>)>, DirError> {
    let entries = match std::fs::read_dir(run_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        other => other.map_err(io_error("reading the run directory", run_dir))?,
    };
    let mut vms = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("reading the run directory", run_dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if crate::validate_sandbox_id(&name).is_err() || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match read_state::<F>(&run_dir.join(&name), &name) {
            Ok(state) => vms.push((name, state.encode())),
            Err(why) => tracing::debug!(dir = %entry.path().display(), "not a VM of this plugin: {why}"),
        }
    }
    vms.sort();
    Ok(vms)
}

fn read_state<F: Control>(dir: &Path, name: &str) -> Result<VmState<F>, String> {
    let bytes = std::fs::read(dir.join(STATE_FILE)).map_err(|e| format!("{STATE_FILE}: {e}"))?;
    let mut state = VmState::<F>::decode(&bytes).map_err(|e| error_report::chain(&e))?;
    if state.sandbox_id != name || state.dir != dir {
        return Err(format!("{STATE_FILE} names {:?} in {:?}", state.sandbox_id, state.dir));
    }
    if state.process().is_none() {
        if let Some((pid, start_time)) = live_process(&state) {
            state.lifecycle = Lifecycle::Running;
            state.pid = Some(pid);
            state.start_time = Some(start_time);
        }
    }
    Ok(state)
}

/// Moves the VM of `state` to `<run_dir>/<sandbox_id>` (one `rename` of its directory, sockets
/// and all: the VMM keeps serving them) and returns its state as that sandbox's VM. A VM already
/// there is returned as it is. The target must not hold a live VMM ([`OpError::AlreadyRunning`]);
/// a directory left there by a dead one is removed first.
pub fn adopt_vm<F: Control>(state: &VmState<F>, run_dir: &Path, sandbox_id: &str) -> Result<VmState<F>, OpError<F::Error>> {
    crate::validate_sandbox_id(sandbox_id)?;
    let target = VmDir::<F::Layout>::new(run_dir.join(sandbox_id));
    if state.dir == target.path() {
        return Ok(state.clone());
    }
    if state.lifecycle == Lifecycle::Stopped {
        return Err(OpError::wrong_state(state, "stopped", "be adopted"));
    }
    if let Some(path) = dir::too_long_socket(target.sockets(state.fields.agent_ports())) {
        return Err(OpError::SocketPathTooLong(path));
    }
    check_no_live_vmm::<F>(&target, sandbox_id)?;
    if let Ok(there) = read_state::<F>(target.path(), sandbox_id) {
        if let Some((pid, _)) = live_process(&there) {
            return Err(OpError::AlreadyRunning { dir: target.path().to_owned(), pid, program: F::PROGRAM });
        }
    }
    if std::fs::symlink_metadata(target.path()).is_ok() {
        tracing::info!("removing the stale VM directory {:?}", target.path());
        dir::remove(target.path())?;
    }
    std::fs::create_dir_all(run_dir).map_err(io_error("creating the run directory", run_dir))?;
    std::fs::rename(&state.dir, target.path()).map_err(io_error("moving the VM directory to", target.path()))?;
    let adopted = VmState { sandbox_id: sandbox_id.to_owned(), dir: target.path().to_owned(), ..state.clone() };
    tracing::info!(sandbox_id, from = %state.dir.display(), "adopted the VM of {}", state.sandbox_id);
    save_state_file(&adopted)?;
    Ok(adopted)
}
