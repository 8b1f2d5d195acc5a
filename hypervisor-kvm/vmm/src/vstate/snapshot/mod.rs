//! Saving a paused VM's whole state to a file and restoring it in a new vmm process: the
//! template factory's clones (`docs/FACTORY.md`). Guest RAM is not in the state file: it is
//! the VM's memory file (`--memory-file`), which a clone maps copy-on-write.
//!
//! The file is JSON: a [`Header`] (format, vmm version, CPU model, KVM's CPUID) checked before
//! anything else is read, then the KVM state ([`ChipState`], one [`VcpuState`] per vCPU).
//! KVM's structs are hex strings of exactly their size ([`raw::Raw`]).

pub mod chip;
pub mod header;
pub mod raw;
pub mod vcpu_state;

pub use chip::ChipState;
pub use header::Header;
pub use vcpu_state::VcpuState;

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Largest state file read: far above a 32-vCPU VM's (about 40 KiB a vCPU).
const MAX_STATE_BYTES: u64 = 16 << 20;

/// Errors of saving and restoring.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A KVM ioctl failed; the string names it.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The file is not a state this vmm reads.
    #[error("not a vmm state file: {0}")]
    Format(String),
    /// Saved by another vmm version.
    #[error("the state was saved by {saved}; this is {running}: make the template again")]
    OtherVmm {
        /// Who saved it.
        saved: String,
        /// This vmm.
        running: String,
    },
    /// Saved on another CPU model.
    #[error("the state was saved on a {saved}; this host is a {here}: make the template again")]
    OtherCpu {
        /// Where it was saved.
        saved: String,
        /// This host.
        here: String,
    },
    /// KVM offers another CPUID here.
    #[error("KVM's CPUID leaf {function:#x} index {index} differs from the one the state was saved with: make the template again")]
    Cpuid {
        /// The leaf.
        function: u32,
        /// Its sub-leaf.
        index: u32,
    },
    /// The guest TSC frequency cannot be set to the saved one.
    #[error("the state's TSC runs at {saved} kHz; this host's at {here:?} kHz and KVM cannot scale it")]
    Tsc {
        /// Saved frequency.
        saved: u32,
        /// This host's, if KVM said.
        here: Option<u32>,
    },
    /// KVM refused a saved MSR.
    #[error("KVM refused saved MSR {0:#x}")]
    Msr(u32),
    /// The state does not fit the VM (counts, chip ids) or KVM's calls.
    #[error("{0}")]
    Shape(String),
    /// Reading or writing the file.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
}

/// The KVM state of a whole VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvmState {
    /// Interrupt controllers, PIT, clock.
    pub chip: ChipState,
    /// One per vCPU, by id.
    pub vcpus: Vec<VcpuState>,
}

/// A state file's contents. `T` is what the vmm adds besides KVM's state (its devices).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateFile<T> {
    /// Checked before the rest is used.
    pub header: Header,
    /// KVM's state.
    pub kvm: KvmState,
    /// The devices' state.
    pub devices: T,
}

/// Writes `state` to `path` (mode 0600) through a temporary file renamed into place, so a
/// crash leaves the old file or the new one.
pub fn write<T: Serialize>(path: &Path, state: &StateFile<T>) -> Result<(), SnapshotError> {
    let io = |what: &str, e| SnapshotError::Io(format!("{what} {}", path.display()), e);
    let json = serde_json::to_vec(state).map_err(|e| SnapshotError::Io(format!("encoding the state for {}", path.display()), e.into()))?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(&json).and_then(|()| file.sync_all()).map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into", e))
}

/// Reads a state file and checks its header against this host before the rest is decoded.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path, here: &Header) -> Result<StateFile<T>, SnapshotError> {
    let io = |e| SnapshotError::Io(format!("reading {}", path.display()), e);
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_STATE_BYTES {
        return Err(SnapshotError::Format(format!("{} is {len} bytes; a state is at most {MAX_STATE_BYTES}", path.display())));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    #[derive(Deserialize)]
    struct HeaderOnly {
        header: Header,
    }
    let head: HeaderOnly = serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Format(format!("{}: {e}", path.display())))?;
    head.header.check(here)?;
    serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Format(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
