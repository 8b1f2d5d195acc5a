//! What both boot paths share: the boot data's guest addresses below 1 MiB, the boot errors,
//! the result the vCPU setup takes, the GDT and the e820-style RAM map.

use linux_loader::loader::elf::start_info::hvm_memmap_table_entry;
use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the GDT lives (4 entries: null, code, data, TSS).
pub const GDT_ADDR: u64 = 0x500;
/// The kernel command line (NUL-terminated).
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Linux's x86 COMMAND_LINE_SIZE.
pub const CMDLINE_MAX: usize = 2048;
/// Start of memory above the legacy hole; the kernel must load above this.
pub const HIMEM_START: u64 = 0x10_0000;
/// End of usable low memory (start of the EBDA).
pub const LOW_RAM_END: u64 = 0x9_fc00;
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

/// Writes `val` at guest address `at`.
pub(super) fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    val: T,
    at: u64,
) -> Result<(), BootError> {
    mem.write_obj(val, GuestAddress(at))
        .map_err(BootError::GuestMemory)
}

/// Reads a whole boot file.
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, BootError> {
    std::fs::read(path).map_err(|e| BootError::Read(path.display().to_string(), e))
}

