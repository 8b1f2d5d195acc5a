//! The x86_64 platform the guest sees: the guest physical address map and interrupt lines
//! ([`layout`]) and the ACPI tables that describe the devices ([`acpi`]).

pub mod acpi;
pub mod layout;
