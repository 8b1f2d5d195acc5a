//! The PVH boot path of an ELF vmlinux: the kernel loaded at 1 MiB, the initrd at the top of
//! RAM, and the PVH start info, module list, memory map and GDT the entry point reads.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::common::{memory_map, write, BootError, BootInfo, BootMode, CMDLINE_ADDR, CMDLINE_MAX, GDT, GDT_ADDR, HIMEM_START, LOW_RAM_END};

/// `hvm_start_info`, followed by the module list.
pub const START_INFO_ADDR: u64 = 0x6000;
/// The initrd's `hvm_modlist_entry`.
pub const MODLIST_ADDR: u64 = 0x6040;
/// The memory map (`hvm_memmap_table_entry` array).
pub const MEMMAP_ADDR: u64 = 0x7000;
/// Magic of `hvm_start_info` ("xEn3" with the high bit set).
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

// The boot structures must not overlap each other or the kernel.
const _: () = {
    assert!(GDT_ADDR + 8 * GDT.len() as u64 <= START_INFO_ADDR);
    assert!(START_INFO_ADDR + std::mem::size_of::<hvm_start_info>() as u64 <= MODLIST_ADDR);
    assert!(MODLIST_ADDR + std::mem::size_of::<hvm_modlist_entry>() as u64 <= MEMMAP_ADDR);
    assert!(
        MEMMAP_ADDR + 16 * std::mem::size_of::<hvm_memmap_table_entry>() as u64 <= CMDLINE_ADDR
    );
    assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= LOW_RAM_END);
};

/// Page-aligned GPA for an initrd of `size` bytes at the top of `mem_size` bytes of RAM, above
/// `kernel_end`.
pub fn initrd_addr(mem_size: u64, kernel_end: u64, size: u64) -> Option<u64> {
    let addr = mem_size.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

/// Builds the PVH start info for a memory map, an optional initrd (addr, size), the
/// cmdline and the ACPI RSDP's address.
pub fn start_info(memmap_entries: u32, initrd: Option<(u64, u64)>, rsdp: u64) -> hvm_start_info {
    hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { MODLIST_ADDR } else { 0 },
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries,
        rsdp_paddr: rsdp,
        ..Default::default()
    }
}

/// Loads an ELF vmlinux at 1 MiB and writes the PVH boot structures for it, the `initrd`
/// (already read) and the ACPI RSDP at `rsdp`. The command line is already in guest memory.
pub fn load(mem: &GuestMemoryMmap, kernel: &Path, initrd: Option<Vec<u8>>, rsdp: u64) -> Result<BootInfo, BootError> {
    let mut file =
        File::open(kernel).map_err(|e| BootError::Read(kernel.display().to_string(), e))?;
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::Kernel)?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvhEntry);
    };
    let mem_size = mem.last_addr().raw_value() + 1;

    let initrd = match initrd {
        Some(data) => {
            let size = data.len() as u64;
            let addr = initrd_addr(mem_size, loaded.kernel_end, size)
                .ok_or(BootError::InitrdTooBig(size))?;
            mem.write_slice(&data, GuestAddress(addr))
                .map_err(BootError::GuestMemory)?;
            write(
                mem,
                hvm_modlist_entry {
                    paddr: addr,
                    size,
                    ..Default::default()
                },
                MODLIST_ADDR,
            )?;
            Some((addr, size))
        }
        None => None,
    };

    let map = memory_map(mem_size);
    for (i, entry) in map.iter().enumerate() {
        let at = MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        write(mem, *entry, at)?;
    }
    write(
        mem,
        start_info(map.len() as u32, initrd, rsdp),
        START_INFO_ADDR,
    )?;
    for (i, entry) in GDT.iter().enumerate() {
        write(mem, *entry, GDT_ADDR + 8 * i as u64)?;
    }
    tracing::debug!(
        entry = entry.raw_value(),
        kernel_end = loaded.kernel_end,
        ?initrd,
        "loaded"
    );
    Ok(BootInfo {
        entry: entry.raw_value(),
        start_info: START_INFO_ADDR,
        mode: BootMode::Pvh,
    })
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::common::{gdt_entry, E820_RAM};
    use linux_loader::cmdline::Cmdline;
    use linux_loader::loader::load_cmdline;

    #[test]
    fn gdt_entries_are_flat() {
        assert_eq!(GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(GDT[3], 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(0x8093, 0x1234_5678, 0xabcde),
            0x128a_9334_5678_bcde
        );
    }

    #[test]
    fn memory_map_skips_the_legacy_hole() {
        let map = memory_map(256 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!((map[0].addr, map[0].size), (0, 0x9fc00));
        assert_eq!(
            (map[1].addr, map[1].addr + map[1].size),
            (0x10_0000, 256 << 20)
        );
        assert!(map.iter().all(|e| e.type_ == E820_RAM));
    }

    #[test]
    fn initrd_goes_page_aligned_at_the_top() {
        assert_eq!(
            initrd_addr(0x1000_0000, 0x200_0000, 0x1800),
            Some(0x0fff_e000)
        );
        assert_eq!(initrd_addr(0x1000_0000, 0x0fff_f000, 0x1800), None);
        assert_eq!(initrd_addr(0x1000, 0, 0x2000), None);
    }

    #[test]
    fn start_info_layout() {
        assert_eq!(std::mem::size_of::<hvm_start_info>(), 56);
        let si = start_info(2, Some((0x100_0000, 10)), 0xe_0000);
        assert_eq!(
            (si.magic, si.version, si.nr_modules),
            (XEN_HVM_START_MAGIC, 1, 1)
        );
        assert_eq!(
            (si.modlist_paddr, si.memmap_paddr, si.memmap_entries),
            (MODLIST_ADDR, MEMMAP_ADDR, 2)
        );
        assert_eq!(si.rsdp_paddr, 0xe_0000);
        assert_eq!(start_info(2, None, 0).nr_modules, 0);
        assert_eq!(start_info(2, None, 0).modlist_paddr, 0);
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let mem = crate::vstate::memory::create_guest_memory(32).unwrap();
        let cl = Cmdline::try_from("console=ttyS0 panic=-1", CMDLINE_MAX).unwrap();
        load_cmdline(&mem, GuestAddress(CMDLINE_ADDR), &cl).unwrap();
        let mut buf = [0u8; 24];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 panic=-1\0\0");
        assert!(Cmdline::try_from(&"x".repeat(CMDLINE_MAX), CMDLINE_MAX).is_err());
    }
}
