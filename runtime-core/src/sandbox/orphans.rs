//! VMs that no sandbox record owns: the hypervisor plugin still has them under its run
//! directory (a record lost with its store, a process killed between creating a VM and saving
//! its record), so `list` can show them and `delete` can stop them.

use super::context::RuntimeContext;
use super::{blocking, SandboxError};
use plugin_api::ErrorKind;
use serde::Serialize;

/// A VM under the hypervisor plugin's run directory that no sandbox record owns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrphanVm {
    /// The sandbox id the VM was created for (its directory's name).
    pub sandbox_id: String,
    /// What the plugin says of it (`running`, `paused`, `created` for a directory whose VMM
    /// never ran or is gone, ...).
    pub vm_status: String,
    /// The hypervisor plugin.
    pub hypervisor: String,
}

/// Every VM the plugin lists whose sandbox has no record, with its blob. No hypervisor, or one
/// that cannot list its VMs (built against plugin-api before 1.2), has none.
pub(crate) async fn list(rt: &RuntimeContext) -> Result<Vec<(OrphanVm, Vec<u8>)>, SandboxError> {
    let Ok((hv, _)) = rt.hypervisor() else { return Ok(vec![]) };
    let (hv, plugin) = (hv.clone(), hv.plugin().to_owned());
    let listed = match blocking(move || hv.list_vms()).await? {
        Ok(listed) => listed,
        Err(e) if e.kind == ErrorKind::UNSUPPORTED => {
            tracing::debug!(plugin, "the hypervisor plugin cannot list its VMs: {e}");
            return Ok(vec![]);
        }
        Err(source) => return Err(SandboxError::Hypervisor { plugin, op: "list", sandbox: "*".into(), source }),
    };
    let mut orphans = Vec::new();
    for (sandbox_id, blob) in listed {
        let store = rt.store.clone();
        let id = sandbox_id.clone();
        if blocking(move || store.load(&id)).await??.is_some() {
            continue;
        }
        let (hv, _) = rt.hypervisor()?;
        let (hv, probe) = (hv.clone(), blob.clone());
        let vm_status = match blocking(move || hv.vm_status(&probe)).await? {
            Ok(status) => status,
            Err(e) => format!("unknown ({e})"),
        };
        orphans.push((OrphanVm { sandbox_id, vm_status, hypervisor: plugin.clone() }, blob));
    }
    Ok(orphans)
}

/// Stops the VM of sandbox `id` if no record owns it, and removes the sandbox's directory
/// (its console log); `None` when there is no such VM (or a record owns it).
pub(crate) async fn remove(rt: &RuntimeContext, id: &str) -> Result<Option<OrphanVm>, SandboxError> {
    let (lock, record) = rt.lock(id, false).await?;
    if record.is_some() {
        return Ok(None);
    }
    let found = list(rt).await?.into_iter().find(|(vm, _)| vm.sandbox_id == id);
    let Some((orphan, blob)) = found else {
        lock.remove_file();
        return Ok(None);
    };
    let (hv, _) = rt.hypervisor()?;
    let hv = hv.clone();
    let plugin = hv.plugin().to_owned();
    blocking(move || hv.stop_vm(&blob))
        .await?
        .map_err(|source| SandboxError::Hypervisor { plugin, op: "stop", sandbox: id.to_owned(), source })?;
    let dir = rt.sandbox_dir(id);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(sandbox = id, "removing {}: {e}", dir.display());
        }
    }
    lock.remove_file();
    tracing::info!(sandbox = id, "stopped the VM that no record owned");
    Ok(Some(orphan))
}
