//! Guest RAM: one memfd-backed region starting at guest physical address 0.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use vmm_api::limits::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};

/// Most guest RAM: one region that must end below the 32-bit MMIO gap (no split).
pub const MAX_MEMORY_BYTES: u64 = MAX_MEMORY_MIB << 20;
/// Least guest RAM: below this the kernel cannot unpack its initramfs.
pub const MIN_MEMORY_BYTES: u64 = MIN_MEMORY_MIB << 20;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is outside what this VMM supports.
    #[error("memory size {0} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB")]
    BadSize(u64),
    /// memfd_create failed.
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    /// Sizing the memfd failed.
    #[error("setting the memfd size failed")]
    Truncate(#[source] std::io::Error),
    /// Mapping the memfd failed.
    #[error("mapping guest memory failed")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// Validates a size in MiB and returns it in bytes.
pub fn memory_bytes(mib: u64) -> Result<u64, MemoryError> {
    let bytes = mib.checked_mul(1 << 20).ok_or(MemoryError::BadSize(mib))?;
    if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&bytes) {
        return Err(MemoryError::BadSize(mib));
    }
    Ok(bytes)
}

fn memfd(name: &CStr, size: u64) -> Result<File, MemoryError> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; the flags are
    // valid memfd_create flags. The kernel does not keep the pointer.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Truncate)?;
    Ok(file)
}

/// Creates `mib` MiB of guest RAM at GPA 0, backed by a memfd (shared mapping).
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let size = memory_bytes(mib)?;
    let file = memfd(c"vmm-guest-ram", size)?;
    let len = usize::try_from(size).map_err(|_| MemoryError::BadSize(mib))?;
    let mem = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        len,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(MemoryError::Mmap)?;
    advise_huge_pages(&mem);
    Ok(mem)
}

/// Asks for transparent huge pages on guest RAM: each guest page the host must fault in is then
/// 2 MiB instead of 4 KiB, far fewer faults and EPT entries. Shared memory gets them only where
/// the host allows it (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` = `advise` or
/// `always`); elsewhere this does nothing, which is fine.
fn advise_huge_pages(mem: &GuestMemoryMmap) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else { continue };
        // SAFETY: `host` and `region.len()` describe exactly the mapping vm-memory made for
        // this region, which stays mapped while `mem` lives; MADV_HUGEPAGE only changes how
        // the kernel backs the pages, not their contents or validity.
        let rc = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "MADV_HUGEPAGE on guest RAM");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn sizes_are_validated() {
        assert!(matches!(memory_bytes(0), Err(MemoryError::BadSize(0))));
        assert!(matches!(memory_bytes(3073), Err(MemoryError::BadSize(_))));
        assert!(matches!(
            memory_bytes(u64::MAX),
            Err(MemoryError::BadSize(_))
        ));
        assert_eq!(memory_bytes(256).unwrap(), 256 << 20);
    }

    #[test]
    fn memfd_backed_memory_is_usable() {
        let mem = create_guest_memory(32).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.write_obj(1u8, GuestAddress(32 << 20)).is_err());
    }
}
