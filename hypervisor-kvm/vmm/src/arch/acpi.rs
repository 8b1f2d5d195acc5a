//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT (local APICs and the IOAPIC) and a
//! DSDT that describes each virtio-mmio device as `LNRO0005`, the ID the Linux virtio-mmio
//! driver matches. The guest finds the RSDP through the PVH start info.

use acpi_tables::aml::{Device, EISAName, Interrupt, Memory32Fixed, Name, Path, ResourceTemplate, IO};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR};

const OEM_ID: [u8; 6] = *b"KATART";
const OEM_TABLE: [u8; 8] = *b"VMM     ";
/// MADT flag: the platform also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1;
/// `IAPC_BOOT_ARCH`: no VGA, no MSI, no CMOS RTC.
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_MSI: u16 = 1 << 3;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;
/// MPS INTI flags for an interrupt source override: active high, edge triggered.
const INTI_HIGH_EDGE: u16 = 0x5;

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the ACPI area.
    #[error("the ACPI tables need {0} bytes, more than the {ACPI_START:#x}..{ACPI_END:#x} area")]
    TooBig(u64),
    /// Writing guest memory failed.
    #[error("writing the ACPI tables to guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// One virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Base of its register window.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// Its GSI (IOAPIC pin), edge triggered, active high.
    pub gsi: u32,
}

/// COM1 as a PNP0501 device. A hardware-reduced ACPI platform has no legacy PIC, so Linux
/// maps no ISA interrupts by itself: without this the 8250 driver's IRQ 4 never fires and
/// user-space writes to the console block for ever.
fn com1(body: &mut Vec<u8>) {
    let io = IO::new(crate::devices::legacy::serial::COM1_BASE, crate::devices::legacy::serial::COM1_BASE, 1, crate::devices::legacy::serial::COM1_LEN as u8);
    let irq = Interrupt::new(true, true, false, false, crate::devices::legacy::serial::COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = Name::new("_UID".into(), &0u32);
    let crs_name = Name::new("_CRS".into(), &crs);
    Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs_name]).to_aml_bytes(body);
}

fn dsdt(devices: &[MmioDeviceInfo]) -> Sdt {
    let mut body = Vec::new();
    com1(&mut body);
    for (i, dev) in devices.iter().enumerate() {
        let uid = i as u32;
        let mem = Memory32Fixed::new(true, dev.base as u32, dev.size as u32);
        let irq = Interrupt::new(true, true, false, false, dev.gsi);
        let crs = ResourceTemplate::new(vec![&mem, &irq]);
        let hid = Name::new("_HID".into(), &"LNRO0005");
        let uid_name = Name::new("_UID".into(), &uid);
        let crs_name = Name::new("_CRS".into(), &crs);
        let path = Path::new(&format!("_SB_.V{i:03X}"));
        Device::new(path, vec![&hid, &uid_name, &crs_name]).to_aml_bytes(&mut body);
    }
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    dsdt.append_slice(&body);
    dsdt
}

fn madt(vcpus: u8) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", 44, 4, OEM_ID, OEM_TABLE, 1);
    madt.write_u32(36, LAPIC_ADDR);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..vcpus {
        // Type 0, processor local APIC: UID, APIC ID, flags (enabled).
        madt.append_slice(&[0, 8, id, id, 1, 0, 0, 0]);
    }
    // Type 1, IOAPIC: ID (after the CPUs), address, GSI base 0.
    let mut ioapic = vec![1, 12, vcpus, 0];
    ioapic.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes());
    madt.append_slice(&ioapic);
    // Type 2, interrupt source override: ISA IRQ 0 (the PIT) is GSI 2, as on PCs (Linux
    // checks the timer through it). KVM's PIT drives IOAPIC pin 2 for GSI 2 as well.
    let mut iso = vec![2, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&INTI_HIGH_EDGE.to_le_bytes());
    madt.append_slice(&iso);
    madt
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    builder.iapc_boot_arch = (IAPC_NO_VGA | IAPC_NO_MSI | IAPC_NO_CMOS_RTC).into();
    bytes(&builder.finalize())
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

fn align8(addr: u64) -> u64 {
    (addr + 7) & !7
}

/// The tables laid out from [`ACPI_START`]: `(address, bytes)` pairs, RSDP first.
pub fn build(vcpus: u8, devices: &[MmioDeviceInfo]) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align8(rsdp_addr + Rsdp::len() as u64);
    // The XSDT has three entries: FADT, MADT and (through the FADT) the DSDT is not listed.
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align8(xsdt_addr + xsdt_len);
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_addr = align8(fadt_addr + fadt_len);
    let madt = madt(vcpus);
    let dsdt_addr = align8(madt_addr + madt.len() as u64);
    let dsdt = dsdt(devices);
    let end = dsdt_addr + dsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooBig(end - ACPI_START));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt = bytes(&xsdt);
    debug_assert_eq!(xsdt.len() as u64, xsdt_len);
    Ok(vec![
        (rsdp_addr, bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
        (xsdt_addr, xsdt),
        (fadt_addr, fadt(dsdt_addr)),
        (madt_addr, madt.as_slice().to_vec()),
        (dsdt_addr, dsdt.as_slice().to_vec()),
    ])
}

/// Writes the tables to guest memory and returns the RSDP's address.
pub fn write(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    devices: &[MmioDeviceInfo],
) -> Result<u64, AcpiError> {
    let tables = build(vcpus, devices)?;
    for (addr, data) in &tables {
        mem.write_slice(data, GuestAddress(*addr))
            .map_err(AcpiError::GuestMemory)?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn devices(n: usize) -> Vec<MmioDeviceInfo> {
        (0..n)
            .map(|i| MmioDeviceInfo {
                base: 0xd000_0000 + 0x1000 * i as u64,
                size: 0x1000,
                gsi: 5 + i as u32,
            })
            .collect()
    }

    #[test]
    fn tables_are_consistent() {
        let tables = build(4, &devices(3)).unwrap();
        let (rsdp_addr, rsdp) = &tables[0];
        assert_eq!(*rsdp_addr, ACPI_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        assert_eq!(xsdt_addr, tables[1].0);
        for (addr, table) in &tables[1..] {
            assert!(checksum_ok(table), "checksum of the table at {addr:#x}");
            let len = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
            assert_eq!(
                len,
                table.len(),
                "length of {:?}",
                std::str::from_utf8(&table[..4])
            );
            assert_eq!(addr % 8, 0);
        }
        let xsdt = &tables[1].1;
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries, vec![tables[2].0, tables[3].0]);
        assert_eq!(&tables[2].1[..4], b"FACP");
        // FADT X_DSDT at offset 140 points at the DSDT.
        let x_dsdt = u64::from_le_bytes(tables[2].1[140..148].try_into().unwrap());
        assert_eq!(x_dsdt, tables[4].0);
        let flags = u32::from_le_bytes(tables[2].1[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let madt = madt(3);
        let body = &madt.as_slice()[44..];
        let mut lapics = 0;
        let mut ioapics = 0;
        let mut at = 0;
        while at < body.len() {
            let (kind, len) = (body[at], body[at + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(body[at + 3], lapics);
                    lapics += 1;
                }
                1 => {
                    ioapics += 1;
                    assert_eq!(
                        u32::from_le_bytes(body[at + 4..at + 8].try_into().unwrap()),
                        IOAPIC_ADDR
                    );
                }
                2 => assert_eq!(body[at + 3], 0),
                other => panic!("unexpected MADT entry type {other}"),
            }
            at += len;
        }
        assert_eq!((lapics, ioapics), (3, 1));
    }

    #[test]
    fn dsdt_names_the_virtio_mmio_devices() {
        let dsdt = dsdt(&devices(2));
        let aml = dsdt.as_slice();
        let count = aml.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 2);
        assert!(aml.windows(4).any(|w| w == b"COM1"), "COM1 is described");
        assert!(aml.windows(4).any(|w| w == b"V001"));
    }

    #[test]
    fn too_many_devices_do_not_fit() {
        assert!(matches!(
            build(32, &devices(2000)),
            Err(AcpiError::TooBig(_))
        ));
    }
}
