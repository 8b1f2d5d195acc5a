//! Why a shared VM operation failed ([`OpError`]), and the [`ErrorKind`] the host sees for it.

use crate::dir::DirError;
use crate::process::ProcessError;
use crate::spec::SpecError;
use crate::state::{StateError, VmState};
use crate::template::TemplateError;
use crate::SandboxIdError;
use plugin_api::ErrorKind;
use std::path::PathBuf;

/// Why a VM operation failed, for the reasons every plugin shares; `E` is why a request over
/// the plugin's control channel failed. Each plugin's own error embeds it.
#[derive(Debug, thiserror::Error)]
pub enum OpError<E> {
    /// A bad sandbox id.
    #[error(transparent)]
    SandboxId(#[from] SandboxIdError),
    /// A bad HypervisorConfig.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A bad state blob.
    #[error(transparent)]
    State(#[from] StateError),
    /// A socket path is too long for a Unix socket address.
    #[error("socket path {0:?} is longer than 107 bytes: use a shorter run_dir")]
    SocketPathTooLong(PathBuf),
    /// A file-system operation on the VM directory failed.
    #[error(transparent)]
    Dir(#[from] DirError),
    /// The VM directory holds a live VMM.
    #[error("VM directory {dir:?} already holds a running {program} (pid {pid}): stop that VM first")]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
        /// The VMM's pid.
        pid: i32,
        /// The VMM's bare name (`QEMU`, `vmm`).
        program: &'static str,
    },
    /// The operation does not apply in the VM's state.
    #[error("VM {sandbox_id} is {state}: cannot {operation}")]
    WrongState {
        /// The sandbox.
        sandbox_id: String,
        /// Its state (`created`, `running`, `paused`, `stopped`, `dead`).
        state: &'static str,
        /// The operation.
        operation: &'static str,
    },
    /// The VMM could not be run, or exited with an error while starting.
    #[error("{program} failed to start VM {sandbox_id}: {why}")]
    StartFailed {
        /// The sandbox.
        sandbox_id: String,
        /// The VMM as a subject (`QEMU`, `the vmm`).
        program: &'static str,
        /// Its status and output, or why it could not run.
        why: String,
    },
    /// A request over the control channel failed.
    #[error("VM {sandbox_id}")]
    Control {
        /// The sandbox.
        sandbox_id: String,
        /// The cause.
        #[source]
        source: E,
    },
    /// Saving a template or cloning one failed.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Stopping the VMM failed (a signal was refused, or it survived SIGKILL).
    #[error("VM {sandbox_id}: stopping {program}")]
    Process {
        /// The sandbox.
        sandbox_id: String,
        /// The VMM as a subject (`QEMU`, `the vmm`).
        program: &'static str,
        /// The cause.
        #[source]
        source: ProcessError,
    },
}

impl<E> OpError<E> {
    /// The operation `operation` does not apply to `vm`, which is `state`.
    pub fn wrong_state<F>(vm: &VmState<F>, state: &'static str, operation: &'static str) -> OpError<E> {
        OpError::WrongState { sandbox_id: vm.sandbox_id.clone(), state, operation }
    }

    /// The [`ErrorKind`] the host sees; `control` gives it for a control-channel error.
    pub fn kind(&self, control: impl FnOnce(&E) -> ErrorKind) -> ErrorKind {
        match self {
            OpError::SandboxId(_)
            | OpError::Spec(_)
            | OpError::State(_)
            | OpError::SocketPathTooLong(_)
            | OpError::WrongState { .. } => ErrorKind::INVALID_INPUT,
            OpError::Dir(_) | OpError::Process { source: ProcessError::Signal { .. }, .. } => ErrorKind::IO,
            OpError::AlreadyRunning { .. } => ErrorKind::BUSY,
            OpError::Control { source, .. } => control(source),
            OpError::Template(e) => e.kind(),
            OpError::StartFailed { .. } | OpError::Process { .. } => ErrorKind::OTHER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type E = OpError<std::io::Error>;

    #[test]
    fn kinds_and_messages() {
        let busy = |_: &std::io::Error| ErrorKind::BUSY;
        let already = E::AlreadyRunning { dir: "/run/q/sb1".into(), pid: 42, program: "QEMU" };
        assert_eq!(already.kind(busy), ErrorKind::BUSY);
        assert_eq!(already.to_string(), "VM directory \"/run/q/sb1\" already holds a running QEMU (pid 42): stop that VM first");
        let failed = E::StartFailed { sandbox_id: "sb1".into(), program: "the vmm", why: "exit status: 1".into() };
        assert_eq!((failed.kind(busy), failed.to_string().as_str()), (ErrorKind::OTHER, "the vmm failed to start VM sb1: exit status: 1"));
        let control = E::Control { sandbox_id: "sb1".into(), source: std::io::Error::other("no answer") };
        assert_eq!((control.kind(busy), error_report::chain(&control).as_str()), (ErrorKind::BUSY, "VM sb1: no answer"));
        let signal = ProcessError::Signal { program: "vmm".into(), pid: 42, signal: 9, source: std::io::Error::other("EPERM") };
        let refused = E::Process { sandbox_id: "sb1".into(), program: "the vmm", source: signal };
        assert_eq!((refused.kind(busy), refused.to_string().as_str()), (ErrorKind::IO, "VM sb1: stopping the vmm"));
        let unkillable = ProcessError::Unkillable { program: "QEMU".into(), pid: 42, waited: Duration::from_secs(5) };
        assert_eq!(E::Process { sandbox_id: "sb1".into(), program: "QEMU", source: unkillable }.kind(busy), ErrorKind::OTHER);
        assert_eq!(E::SocketPathTooLong("/x".into()).kind(busy), ErrorKind::INVALID_INPUT);
        let wrong = E::WrongState { sandbox_id: "sb1".into(), state: "dead", operation: "pause (it is not running)" };
        assert_eq!((wrong.kind(busy), wrong.to_string().as_str()), (ErrorKind::INVALID_INPUT, "VM sb1 is dead: cannot pause (it is not running)"));
    }
}
