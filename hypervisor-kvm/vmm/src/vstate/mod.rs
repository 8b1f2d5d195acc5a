//! The KVM state of a VM: guest memory, the VM (irqchip, PIT, memory slot), its vCPUs and the
//! run state they share with the control API.

pub mod memory;
pub mod runstate;
pub mod vcpu;
pub mod vm;
