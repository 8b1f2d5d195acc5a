//! The fallback for kernels without a PVH entry: a bzImage through the Linux 64-bit boot
//! protocol (Documentation/arch/x86/boot.rst). The vCPU starts in long mode at the image's
//! `startup_64` (load address + 0x200) with RSI pointing at the zero page (`boot_params`:
//! the setup header, the e820 map, the command line, the initrd and the ACPI RSDP), on
//! identity-mapped page tables for the first GiB.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::common::{gdt_entry, memory_map, write, BootError, BootInfo, BootMode, CMDLINE_ADDR, GDT_ADDR, HIMEM_START};

/// The zero page (`boot_params`, 4 KiB).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// The boot stack pointer (the stack grows down towards the zero page's end).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory: 512 entries of 2 MiB, the first GiB.
pub const PD_ADDR: u64 = 0xb000;
/// Offset of `startup_64` in the loaded protected-mode kernel.
pub const STARTUP_64_OFFSET: u64 = 0x200;
/// `type_of_loader`: an undefined boot loader.
const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags`: the kernel is loaded high (bzImage), use the heap.
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
/// Page table entry bits: present, writable, 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_HUGE: u64 = 0x80;

/// The long-mode GDT: null, 64-bit code (L set), flat data, a TSS.
pub const GDT64: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// Identity-maps the first GiB with 2 MiB pages.
fn page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    write(mem, PDPT_ADDR | PTE_PRESENT_RW, PML4_ADDR)?;
    write(mem, PD_ADDR | PTE_PRESENT_RW, PDPT_ADDR)?;
    for i in 0..512u64 {
        write(mem, (i << 21) | PTE_PRESENT_RW | PDE_HUGE, PD_ADDR + i * 8)?;
    }
    Ok(())
}

/// Where the initrd goes: page-aligned at the top of RAM, but below the kernel's
/// `initrd_addr_max`, and above the kernel.
pub fn initrd_addr(mem_size: u64, addr_max: u32, kernel_end: u64, size: u64) -> Option<u64> {
    let top = mem_size.min(u64::from(addr_max) + 1);
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

/// Loads a bzImage, the initrd and the zero page; `cmdline_len` bytes of command line are
/// already at [`CMDLINE_ADDR`].
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&[u8]>,
    cmdline_len: usize,
    rsdp: u64,
) -> Result<BootInfo, BootError> {
    let mut file = File::open(kernel).map_err(|e| BootError::Read(kernel.display().to_string(), e))?;
    let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(BootError::BzImage)?;
    let Some(mut hdr) = loaded.setup_header else { return Err(BootError::NotAKernel) };
    let mem_size = mem.last_addr().raw_value() + 1;

    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if let Some(data) = initrd {
        let size = data.len() as u64;
        let addr = initrd_addr(mem_size, hdr.initrd_addr_max, loaded.kernel_end, size).ok_or(BootError::InitrdTooBig(size))?;
        mem.write_slice(data, GuestAddress(addr)).map_err(BootError::GuestMemory)?;
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }

    let mut params = boot_params { hdr, acpi_rsdp_addr: rsdp, ..Default::default() };
    let map = memory_map(mem_size);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry { addr: entry.addr, size: entry.size, r#type: entry.type_ };
    }
    params.e820_entries = map.len() as u8;
    write(mem, params, ZERO_PAGE_ADDR)?;
    page_tables(mem)?;
    for (i, entry) in GDT64.iter().enumerate() {
        write(mem, *entry, GDT_ADDR + 8 * i as u64)?;
    }
    Ok(BootInfo {
        entry: loaded.kernel_load.raw_value() + STARTUP_64_OFFSET,
        start_info: ZERO_PAGE_ADDR,
        mode: BootMode::Linux64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_stays_under_its_limit_and_above_the_kernel() {
        // 3 GiB of RAM, a kernel that takes initrds up to 2 GiB.
        assert_eq!(initrd_addr(3 << 30, 0x7fff_ffff, 16 << 20, 0x1000), Some((2 << 30) - 0x1000));
        assert_eq!(initrd_addr(256 << 20, 0x7fff_ffff, 16 << 20, 0x1800), Some((256 << 20) - 0x2000));
        assert_eq!(initrd_addr(64 << 20, 0x7fff_ffff, 60 << 20, 8 << 20), None);
    }

    #[test]
    fn page_tables_map_the_first_gib() {
        let mem = crate::vstate::memory::create_guest_memory(32).unwrap();
        page_tables(&mem).unwrap();
        assert_eq!(mem.read_obj::<u64>(GuestAddress(PML4_ADDR)).unwrap(), PDPT_ADDR | 3);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(PDPT_ADDR)).unwrap(), PD_ADDR | 3);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(PD_ADDR + 8 * 511)).unwrap(), (511 << 21) | 0x83);
    }

    #[test]
    fn the_code_segment_is_64_bit() {
        let cs = crate::vstate::vcpu::flat_segment(crate::boot::CODE_SELECTOR, GDT64[1]);
        assert_eq!((cs.l, cs.db, cs.type_), (1, 0, 0xb));
    }

    #[test]
    fn a_file_that_is_not_a_bzimage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-kernel");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let mem = crate::vstate::memory::create_guest_memory(32).unwrap();
        assert!(matches!(load(&mem, &path, None, 0, 0), Err(BootError::BzImage(_))));
    }
}
