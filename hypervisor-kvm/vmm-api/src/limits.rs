//! The vmm's limits. The vmm refuses a VM outside them, and the kvm plugin checks them before
//! it runs a vmm, so a user sees the same numbers from both.

/// Most vCPUs one VM can have.
pub const MAX_VCPUS: u8 = 32;
/// Least guest RAM, in MiB: below this the kernel cannot unpack its initramfs.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Most guest RAM, in MiB: guest RAM is one region that must end below the 32-bit MMIO gap.
pub const MAX_MEMORY_MIB: u64 = 3072;
/// Most virtio devices one VM can have: one interrupt line each, on IOAPIC pins 5 to 23.
pub const MAX_DEVICES: usize = 19;
