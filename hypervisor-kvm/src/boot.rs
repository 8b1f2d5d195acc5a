//! Kernel, initrd and command line loading, and the PVH boot structures (start info, memory
//! map, GDT). An ELF vmlinux boots through its PVH entry; anything else is tried as a bzImage
//! (`bzimage.rs`). Everything here only touches guest memory, so it is testable without KVM.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Where the GDT lives (4 entries: null, code, data, TSS).
pub const GDT_ADDR: u64 = 0x500;
/// `hvm_start_info`, followed by the module list.
pub const START_INFO_ADDR: u64 = 0x6000;
/// The initrd's `hvm_modlist_entry`.
pub const MODLIST_ADDR: u64 = 0x6040;
/// The memory map (`hvm_memmap_table_entry` array).
pub const MEMMAP_ADDR: u64 = 0x7000;
/// The kernel command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Linux's x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX: usize = 2048;
/// Start of memory above the legacy hole; the kernel must load above this.
pub const HIMEM_START: u64 = 0x10_0000;
/// End of usable low memory (start of the EBDA).
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// Magic of `hvm_start_info` ("xEn3" with the high bit set).
pub const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// GDT selectors: index * 8.
pub const CODE_SELECTOR: u16 = 0x08;
/// Data selector (DS, ES, SS, FS, GS).
pub const DATA_SELECTOR: u16 = 0x10;
/// TSS selector.
pub const TSS_SELECTOR: u16 = 0x18;

/// Errors loading the guest's boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Opening or reading a boot file failed.
    #[error("reading {0}")]
    Read(String, #[source] std::io::Error),
    /// linux-loader rejected the ELF kernel image.
    #[error("loading the ELF kernel")]
    Kernel(#[source] linux_loader::loader::Error),
    /// The kernel is neither ELF nor a loadable bzImage.
    #[error("the kernel is neither an ELF vmlinux nor a bzImage")]
    BzImage(#[source] linux_loader::loader::Error),
    /// linux-loader returned no setup header for a bzImage.
    #[error("the bzImage has no setup header")]
    NotAKernel,
    /// The kernel has no PVH entry note.
    #[error("the kernel has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhEntry,
    /// The command line is invalid or too long.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line into guest memory failed.
    #[error("writing the kernel command line")]
    CmdlineLoad(#[source] linux_loader::loader::Error),
    /// The initrd does not fit between the kernel and the top of memory.
    #[error("the initrd ({0} bytes) does not fit in guest memory")]
    InitrdTooBig(u64),
    /// A write into guest memory failed.
    #[error("writing boot data into guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

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

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// PVH: 32-bit protected mode, paging off, EBX = start info.
    Pvh,
    /// The Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64,
}

/// What the vCPU setup needs from the loaded images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// The entry point.
    pub entry: u64,
    /// GPA of `hvm_start_info` (PVH, goes into EBX) or of the zero page (Linux64, RSI).
    pub start_info: u64,
    /// Which protocol.
    pub mode: BootMode,
}

/// A GDT entry from flags (type/S/DPL/P in bits 0..8, AVL/L/D/G in bits 12..16), base, limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The boot GDT: null, flat 32-bit code (exec/read), flat data (read/write), a TSS.
pub const GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];

/// RAM ranges (start, size) reported to the guest for `mem_size` bytes from GPA 0.
pub fn memory_map(mem_size: u64) -> Vec<hvm_memmap_table_entry> {
    let ram = |addr, size| hvm_memmap_table_entry {
        addr,
        size,
        type_: E820_RAM,
        reserved: 0,
    };
    vec![
        ram(0, LOW_RAM_END),
        ram(HIMEM_START, mem_size - HIMEM_START),
    ]
}

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

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    at: u64,
) -> Result<(), BootError> {
    mem.write_obj(val, GuestAddress(at))
        .map_err(BootError::GuestMemory)
}

fn read_file(path: &Path) -> Result<Vec<u8>, BootError> {
    std::fs::read(path).map_err(|e| BootError::Read(path.display().to_string(), e))
}

/// What a kernel file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// The ELF magic at offset 0 (a vmlinux).
    Elf,
    /// `HdrS` at offset 0x202 (a bzImage's setup header).
    BzImage,
    /// Neither.
    Unknown,
}

/// Reads enough of `path` to tell an ELF vmlinux from a bzImage.
pub fn kernel_format(path: &Path) -> std::io::Result<KernelFormat> {
    use std::io::Read;
    let mut head = Vec::with_capacity(0x206);
    File::open(path)?.take(0x206).read_to_end(&mut head)?;
    Ok(if head.starts_with(b"\x7fELF") {
        KernelFormat::Elf
    } else if head.get(0x202..0x206) == Some(&b"HdrS"[..]) {
        KernelFormat::BzImage
    } else {
        KernelFormat::Unknown
    })
}

/// Loads kernel, initrd and command line: an ELF vmlinux with the PVH boot structures, or
/// (the fallback) a bzImage with the Linux boot protocol's zero page.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp: u64,
) -> Result<BootInfo, BootError> {
    let initrd = initrd.map(read_file).transpose()?;
    let cmdline = Cmdline::try_from(cmdline, CMDLINE_MAX).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline).map_err(BootError::CmdlineLoad)?;
    let format = kernel_format(kernel).map_err(|e| BootError::Read(kernel.display().to_string(), e))?;
    if format != KernelFormat::Elf {
        let len = cmdline.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0);
        let boot = crate::bzimage::load(mem, kernel, initrd.as_deref(), len, rsdp)?;
        tracing::info!(entry = boot.entry, "booting a bzImage through the Linux 64-bit boot protocol");
        return Ok(boot);
    }
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
        let mem = crate::memory::create_guest_memory(32).unwrap();
        let cl = Cmdline::try_from("console=ttyS0 panic=-1", CMDLINE_MAX).unwrap();
        load_cmdline(&mem, GuestAddress(CMDLINE_ADDR), &cl).unwrap();
        let mut buf = [0u8; 24];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0 panic=-1\0\0");
        assert!(Cmdline::try_from(&"x".repeat(CMDLINE_MAX), CMDLINE_MAX).is_err());
    }
}
