//! The factory's work directory, `<state_dir>/factory/<plugin>-<pid>.<n>/` (0700): its VMs'
//! console logs, and `vms/`, the run directory of the hypervisor instance that makes its own
//! VMs. One per factory (the `n`th of process `pid`), so that two runtimes with a pool each
//! never take each other's VMs;
//! removed when the factory closes. A directory whose process is gone (killed before it could
//! close its factory) is reaped by the next factory opened under the same state directory:
//! the VMs still listed in its `vms/` are stopped, then it is removed.

use plugin_api::hypervisor::HypervisorHandle;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The work directory could not be made.
#[derive(Debug, thiserror::Error)]
#[error("making the VM factory's work directory {path}")]
pub struct WorkDirError {
    /// The directory.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// A work directory, removed on drop.
pub(crate) struct WorkDir {
    path: Option<PathBuf>,
}

impl WorkDir {
    /// No directory (the built-in `new` factory needs none).
    pub fn none() -> WorkDir {
        WorkDir { path: None }
    }

    /// Makes `<state_dir>/factory/<plugin>-<pid>.<n>/` afresh.
    pub fn claim(state_dir: &Path, plugin: &str) -> Result<WorkDir, WorkDirError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = state_dir.join("factory").join(format!("{plugin}-{}.{n}", std::process::id()));
        let error = |source| WorkDirError { path: path.clone(), source };
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(error)?;
        }
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path).map_err(error)?;
        Ok(WorkDir { path: Some(path) })
    }

    /// The directory (empty for [`WorkDir::none`]).
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            if let Err(e) = std::fs::remove_dir_all(path) {
                tracing::warn!("removing the VM factory's work directory {}: {e}", path.display());
            }
        }
    }
}

/// The work directories under `state_dir` whose process is gone.
pub(crate) fn stale(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("factory")) else { return vec![] };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let pid = name.rsplit_once('-').and_then(|(_, tail)| tail.split('.').next()).and_then(|pid| pid.parse::<u32>().ok());
            pid.is_some_and(|pid| pid != std::process::id() && !hypervisor_framework::process::runs(pid as i32))
        })
        .collect()
}

/// Stops every VM `hypervisor` (an instance whose run directory is `<dir>/vms`) lists, then
/// removes `dir`; what cannot be stopped is logged and the directory kept.
pub(crate) fn reap(dir: &Path, hypervisor: &HypervisorHandle) {
    let vms = match hypervisor.list_vms() {
        Ok(vms) => vms,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "listing the VMs of a dead process's factory: {e}");
            return;
        }
    };
    let mut left = 0;
    for (id, blob) in vms {
        match hypervisor.stop_vm(&blob) {
            Ok(_) => tracing::info!(vm = %id, dir = %dir.display(), "stopped a VM of a dead process's factory"),
            Err(e) => {
                tracing::error!(vm = %id, dir = %dir.display(), "stopping a VM of a dead process's factory: {e}");
                left += 1;
            }
        }
    }
    if left == 0 {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!("removing {}: {e}", dir.display());
        }
    }
}
