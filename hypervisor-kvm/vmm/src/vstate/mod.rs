//! The KVM state of a VM: guest memory, the VM (irqchip, PIT, memory slot), its vCPUs and the
//! run state they share with the control API; saving and restoring all of it (`snapshot`).

pub mod memory;
pub mod runstate;
pub mod snapshot;
pub mod vcpu;
pub mod vm;
