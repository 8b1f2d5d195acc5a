//! A whole VM's state file: the `save` op of the control API writes it (to `--state-file`),
//! `--restore` starts a vmm from it. Guest RAM is not in it: it is the `--memory-file` of the
//! saved VM, which a restored vmm maps copy-on-write (see `vstate::snapshot` for the KVM part
//! and the header checks, `devices::virtio::save` for the devices).

use std::path::Path;

use crate::devices::bus::Bus;
pub use crate::devices::saved::DevicesState;
use crate::devices::virtio::save::SaveError;
use crate::vstate::runstate::{RunControl, RunStateError};
use crate::vstate::snapshot::{self, ChipState, Header, KvmState, SnapshotError, StateFile};
use crate::vstate::vm::Vm;

/// A vmm's state file.
pub type VmStateFile = StateFile<DevicesState>;

/// Errors of a save.
#[derive(Debug, thiserror::Error)]
pub enum VmSaveError {
    /// The vmm was started without `--state-file`.
    #[error("this vmm was started without --state-file: it has nowhere to save to")]
    NoStateFile,
    /// The VM is not paused, or a vCPU did not report.
    #[error(transparent)]
    RunState(#[from] RunStateError),
    /// KVM's state or the file.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A device.
    #[error(transparent)]
    Device(#[from] SaveError),
}

/// Saves the paused VM to `path`: the vCPUs (each read by its parked thread), the interrupt
/// controllers, PIT and clock, then every device. Nothing is written unless all of it was
/// read.
pub fn save(control: &RunControl, vm: &Vm, bus: &Bus, path: Option<&Path>) -> Result<(), VmSaveError> {
    let path = path.ok_or(VmSaveError::NoStateFile)?;
    snapshot::vcpu_state::check_host(&vm.kvm)?;
    let vcpus = control.save_vcpus()?;
    let chip = ChipState::capture(&vm.fd)?;
    let devices = bus.save_devices()?;
    let state = StateFile { header: Header::here(&vm.kvm)?, kvm: KvmState { chip, vcpus }, devices };
    snapshot::write(path, &state)?;
    tracing::info!(path = %path.display(), "VM state saved");
    Ok(())
}

/// Reads a state file for `--restore`, refusing one from another vmm or CPU before the rest
/// is decoded, and one whose shape is not this VM's (vCPU and device counts).
pub fn read(path: &Path, kvm: &kvm_ioctls::Kvm, vcpus: u8, devices: usize) -> Result<VmStateFile, SnapshotError> {
    let state: VmStateFile = snapshot::read(path, &Header::here(kvm)?)?;
    if state.kvm.vcpus.len() != usize::from(vcpus) {
        return Err(SnapshotError::Shape(format!("the state has {} vCPUs; this VM is given {vcpus} (--vcpus)", state.kvm.vcpus.len())));
    }
    if state.devices.mmio.len() != devices {
        return Err(SnapshotError::Shape(format!("the state has {} virtio devices; this VM is given {devices}", state.devices.mmio.len())));
    }
    Ok(state)
}
