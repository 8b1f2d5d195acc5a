//! The VM-wide KVM state: the in-kernel interrupt controllers (two PICs and the IOAPIC), the
//! PIT and the KVM clock.

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::raw::Raw;
use super::SnapshotError;

/// The saved interrupt controllers, PIT and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChipState {
    /// The master 8259.
    pub pic_master: Raw<kvm_irqchip>,
    /// The slave 8259.
    pub pic_slave: Raw<kvm_irqchip>,
    /// The IOAPIC.
    pub ioapic: Raw<kvm_irqchip>,
    /// The 8254 PIT.
    pub pit: Raw<kvm_pit_state2>,
    /// The KVM clock (the guest's nanoseconds since boot).
    pub clock: Raw<kvm_clock_data>,
}

fn chip(vm: &VmFd, chip_id: u32) -> Result<Raw<kvm_irqchip>, SnapshotError> {
    let mut chip = kvm_irqchip { chip_id, ..Default::default() };
    vm.get_irqchip(&mut chip).map_err(|e| SnapshotError::Kvm("KVM_GET_IRQCHIP", e))?;
    Ok(Raw(chip))
}

impl ChipState {
    /// Reads the state of a VM whose vCPUs are not running.
    pub fn capture(vm: &VmFd) -> Result<ChipState, SnapshotError> {
        Ok(ChipState {
            pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
            pit: Raw(vm.get_pit2().map_err(|e| SnapshotError::Kvm("KVM_GET_PIT2", e))?),
            clock: Raw(vm.get_clock().map_err(|e| SnapshotError::Kvm("KVM_GET_CLOCK", e))?),
        })
    }

    /// Loads the state into a VM created with an in-kernel irqchip and PIT, before its vCPUs
    /// first run. Each chip must say which one it is.
    pub fn restore(&self, vm: &VmFd) -> Result<(), SnapshotError> {
        for (chip, id) in [(&self.pic_master, KVM_IRQCHIP_PIC_MASTER), (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE), (&self.ioapic, KVM_IRQCHIP_IOAPIC)] {
            if chip.0.chip_id != id {
                return Err(SnapshotError::Shape(format!("interrupt controller {id} is saved as chip {}", chip.0.chip_id)));
            }
            vm.set_irqchip(&chip.0).map_err(|e| SnapshotError::Kvm("KVM_SET_IRQCHIP", e))?;
        }
        vm.set_pit2(&self.pit.0).map_err(|e| SnapshotError::Kvm("KVM_SET_PIT2", e))?;
        // Only the clock's value: the flags KVM_GET_CLOCK reports (stable TSC, realtime) are
        // not inputs.
        let clock = kvm_clock_data { clock: self.clock.0.clock, ..Default::default() };
        vm.set_clock(&clock).map_err(|e| SnapshotError::Kvm("KVM_SET_CLOCK", e))?;
        Ok(())
    }
}
