//! The guest physical address map and interrupt numbers.
//!
//! | range | what |
//! |---|---|
//! | 0 .. 0x9fc00 | low RAM (GDT 0x500, PVH start info 0x6000, memory map 0x7000, cmdline 0x20000) |
//! | 0xe0000 .. 0x100000 | ACPI tables (RSDP first), not RAM |
//! | 1 MiB .. RAM end (at most 3 GiB) | RAM: kernel at 1 MiB, initrd at the top |
//! | 0xd000_0000 + n * 4 KiB | virtio-mmio device n |
//! | 0xfec0_0000 | IOAPIC (in-kernel) |
//! | 0xfee0_0000 | local APICs (in-kernel) |

/// Where the ACPI tables start (the RSDP).
pub const ACPI_START: u64 = 0xe_0000;
/// End of the ACPI area (exclusive).
pub const ACPI_END: u64 = 0x10_0000;
/// First virtio-mmio device window.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// The IOAPIC's MMIO address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' MMIO address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;
/// GSI of the first virtio device (0-4 are the timer, keyboard, cascade and COM1).
pub const FIRST_DEVICE_GSI: u32 = 5;
/// Most virtio devices one VM can have: one GSI each, up to IOAPIC pin 23 (the limit its
/// clients see, [`vmm_api::limits::MAX_DEVICES`]).
pub const MAX_DEVICES: usize = (IOAPIC_PINS - FIRST_DEVICE_GSI) as usize;
/// Most vCPUs one VM can have.
pub use vmm_api::limits::MAX_VCPUS;

const _: () = assert!(MAX_DEVICES == vmm_api::limits::MAX_DEVICES, "the device limit clients check is the layout's");
