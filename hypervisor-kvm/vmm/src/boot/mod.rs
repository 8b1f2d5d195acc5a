//! Kernel, initrd and command line loading. An ELF vmlinux boots through its PVH entry
//! ([`pvh`]); anything else is tried as a bzImage through the Linux 64-bit boot protocol
//! ([`bzimage`]). Everything here only touches guest memory, so it is testable without KVM.

pub mod bzimage;
pub mod common;
pub mod pvh;

use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_api::kernel::{kernel_format, KernelFormat};

pub use common::{BootError, BootInfo, BootMode, CODE_SELECTOR, DATA_SELECTOR, GDT, GDT_ADDR, TSS_SELECTOR};
use common::{read_file, CMDLINE_ADDR, CMDLINE_MAX};

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
        let boot = bzimage::load(mem, kernel, initrd.as_deref(), len, rsdp)?;
        tracing::info!(entry = boot.entry, "booting a bzImage through the Linux 64-bit boot protocol");
        return Ok(boot);
    }
    pvh::load(mem, kernel, initrd, rsdp)
}
