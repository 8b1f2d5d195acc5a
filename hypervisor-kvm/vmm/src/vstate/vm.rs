//! The KVM VM: memory slot, in-kernel irqchip and PIT, TSS.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Three pages just below 4 GiB that KVM needs for the real-mode TSS (Intel), unused RAM.
pub const TSS_ADDR: usize = 0xfffb_d000;

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmSetupError {
    /// Opening /dev/kvm failed.
    #[error("opening /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("creating the VM (KVM_CREATE_VM)")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// A host address for guest memory could not be found.
    #[error("guest memory region has no host mapping")]
    HostAddress(#[source] vm_memory::GuestMemoryError),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("registering guest memory with KVM")]
    MemorySlot(#[source] kvm_ioctls::Error),
    /// KVM_SET_TSS_ADDR failed.
    #[error("setting the TSS address")]
    Tss(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("creating the in-kernel irqchip")]
    IrqChip(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_PIT2 failed.
    #[error("creating the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    /// KVM_IRQFD failed.
    #[error("registering irqfd for GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
}

/// An open KVM system and VM.
pub struct Vm {
    /// The /dev/kvm handle.
    pub kvm: Kvm,
    /// The VM.
    pub fd: VmFd,
}

impl Vm {
    /// Creates a VM with `mem` mapped, an in-kernel irqchip (PIC, IOAPIC, LAPIC) and a PIT.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self, VmSetupError> {
        let kvm = Kvm::new().map_err(VmSetupError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmSetupError::CreateVm)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(VmSetupError::HostAddress)?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: `host` maps `region.len()` bytes that stay mapped for as long as `mem`
            // lives; the caller keeps `mem` alive for the VM's lifetime (`run` owns both), and
            // slots do not overlap since each region gets its own slot.
            unsafe { fd.set_user_memory_region(desc) }.map_err(VmSetupError::MemorySlot)?;
        }
        fd.set_tss_address(TSS_ADDR).map_err(VmSetupError::Tss)?;
        fd.create_irq_chip().map_err(VmSetupError::IrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmSetupError::Pit)?;
        Ok(Self { kvm, fd })
    }

    /// Routes `evt` to GSI `gsi` (on the PIC and IOAPIC).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmSetupError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| VmSetupError::Irqfd(gsi, e))
    }
}
