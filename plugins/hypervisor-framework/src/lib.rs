//! What the hypervisor plugins (`hypervisor-qemu`, the `kvm` plugin of `hypervisor-kvm`)
//! share, so that each says it once:
//!
//! - [`process`]: the VMM's process named by pid *and* start time, signalled through a pidfd,
//!   stopped by asking, then SIGTERM, then SIGKILL;
//! - [`dir`]: the private per-VM directory `<run_dir>/<sandbox_id>/` and its socket paths;
//! - [`spec`]: the checked [`HypervisorConfig`](plugin_api::hypervisor::HypervisorConfig);
//! - [`blob`]: decoding versioned JSON state blobs;
//! - [`state`]: the state blob's envelope around each plugin's own fields;
//! - [`control`]: a plugin's hooks (its VMM's control channel, how it runs and is recognised);
//! - [`ops`]: the VM operations over those hooks, and why they fail;
//! - [`plugin`]: the `HypervisorPlugin` implementation over a plugin's typed operations;
//! - [`config`]: parsing a plugin config and checking the keys every plugin has;
//! - [`agent`]: the guest agent's channels and the kernel command line that names them;
//! - [`argv`]: building a VMM's command line;
//! - [`template`]: what saving a VM as a template and cloning it share;
//! - [`testing`] (feature `test-util`): fixtures for the plugins' tests;
//! - here: sandbox ids, the VM's [`Lifecycle`], program lookup and error-chain formatting.

pub mod agent;
pub mod argv;
pub mod blob;
pub mod config;
pub mod control;
pub mod dir;
pub mod ops;
pub mod plugin;
pub mod process;
pub mod spec;
pub mod state;
pub mod template;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The longest sandbox id.
pub const MAX_SANDBOX_ID_LEN: usize = plugin_api::ids::MAX_ID_LEN;

/// A sandbox id that cannot name a VM directory.
#[derive(Debug, thiserror::Error)]
#[error("sandbox id {0:?} must be {rule}", rule = plugin_api::ids::ID_RULE)]
pub struct SandboxIdError(pub String);

/// Checks a sandbox id (the runtime's one rule, [`plugin_api::ids::is_valid_id`]): it names
/// the VM's directory (and QEMU's `-name`).
pub fn validate_sandbox_id(id: &str) -> Result<(), SandboxIdError> {
    if plugin_api::ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(SandboxIdError(id.to_owned()))
    }
}

/// Where a VM is in its life, as its plugin last left it (the `lifecycle` of a state blob).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Created, not started.
    Created,
    /// Started (and not paused).
    Running,
    /// Paused through the plugin.
    Paused,
    /// Stopped through the plugin; its directory is gone.
    Stopped,
}

impl Lifecycle {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::Created => "created",
            Lifecycle::Running => "running",
            Lifecycle::Paused => "paused",
            Lifecycle::Stopped => "stopped",
        }
    }

    /// Whether the VM was started and not stopped (it should have a process).
    pub fn started(self) -> bool {
        matches!(self, Lifecycle::Running | Lifecycle::Paused)
    }
}

/// The `PATH` used when the environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether `path` is an executable regular file.
pub fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directories of `PATH` (or [`DEFAULT_PATH`]), absolute ones only.
pub fn path_dirs() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path).filter(|d| d.is_absolute()).collect()
}

/// Finds a program: a path (anything with a '/') is taken as is (made absolute), a name is
/// looked up in `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = std::path::absolute(name).ok()?;
        return is_executable(&path).then_some(path);
    }
    path_dirs().into_iter().map(|dir| dir.join(name)).find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids() {
        for ok in ["a", "sb-1", "A_b.c-9", &"x".repeat(64)] {
            validate_sandbox_id(ok).unwrap();
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "a,b", &"x".repeat(65), "é"] {
            let e = validate_sandbox_id(bad).unwrap_err().to_string();
            assert!(e.contains("sandbox id"), "{e}");
        }
    }

    #[test]
    fn programs_by_name_and_path() {
        let sh = find_program("sh").expect("sh in PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"));
        assert_eq!(find_program(&sh.display().to_string()), Some(sh));
        assert_eq!(find_program("no-such-program-here"), None);
        assert_eq!(find_program("/etc/hostname-not-there"), None);
        assert_eq!(find_program("/etc"), None, "a directory is no program");
    }

    #[test]
    fn lifecycles() {
        assert_eq!(serde_json::to_string(&Lifecycle::Paused).unwrap(), "\"paused\"");
        assert!(Lifecycle::Running.started() && !Lifecycle::Created.started() && !Lifecycle::Stopped.started());
    }
}
