//! Guest RAM: one region starting at guest physical address 0, backed by a memfd (the
//! default), by a file mapped shared (a VM that a template will be saved from: its RAM is the
//! file), or by a file mapped private (a template's clone: copy-on-write over the template's
//! RAM, which it opens read-only and never changes).

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

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
    /// The RAM file could not be opened or sized.
    #[error("guest RAM file {path:?}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file to map private is not the size of the RAM.
    #[error("guest RAM file {path:?} is {len} bytes, the RAM {expected}")]
    FileSize {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The RAM's.
        expected: u64,
    },
    /// Mapping the file failed.
    #[error("mapping guest RAM file {path:?}")]
    MapFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
}

/// What backs guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing<'a> {
    /// An anonymous memfd.
    Memfd,
    /// A file created (mode 0600) or truncated to the RAM's size and mapped shared: the guest's
    /// writes reach it (a VM to be saved as a template).
    SharedFile(&'a Path),
    /// An existing file of exactly the RAM's size, opened read-only and mapped private: the
    /// guest sees its content and its writes stay in this process (a template's clone).
    PrivateFile(&'a Path),
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

/// Creates `mib` MiB of guest RAM at GPA 0, backed as `backing` says.
pub fn create_guest_memory_backed(mib: u64, backing: Backing<'_>) -> Result<GuestMemoryMmap, MemoryError> {
    let path = match backing {
        Backing::Memfd => return create_guest_memory(mib),
        Backing::SharedFile(p) | Backing::PrivateFile(p) => p,
    };
    let size = memory_bytes(mib)?;
    let len = usize::try_from(size).map_err(|_| MemoryError::BadSize(mib))?;
    let file_error = |source| MemoryError::File { path: path.to_owned(), source };
    let (file, flags) = if let Backing::SharedFile(_) = backing {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path).map_err(file_error)?;
        file.set_len(size).map_err(file_error)?;
        (file, libc::MAP_SHARED | libc::MAP_NORESERVE)
    } else {
        let file = File::open(path).map_err(file_error)?;
        let actual = file.metadata().map_err(file_error)?.len();
        if actual != size {
            return Err(MemoryError::FileSize { path: path.to_owned(), len: actual, expected: size });
        }
        (file, libc::MAP_PRIVATE | libc::MAP_NORESERVE)
    };
    let region = MmapRegionBuilder::new(len)
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .build()
        .map_err(|source| MemoryError::MapFile { path: path.to_owned(), source })?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or(MemoryError::BadSize(mib))?;
    let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|_| MemoryError::BadSize(mib))?;
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

    #[test]
    fn a_shared_file_is_the_ram_and_a_private_one_is_copied_on_write() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("memory");
        let mem = create_guest_memory_backed(32, Backing::SharedFile(&path)).unwrap();
        mem.write_obj(0xfeed_u32, GuestAddress(0x2000)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32 << 20, 0o600));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[0x2000..0x2004], &0xfeed_u32.to_ne_bytes(), "the guest's write reached the file");
        drop(mem);
        // A clone sees the file and keeps its own writes.
        let clone = create_guest_memory_backed(32, Backing::PrivateFile(&path)).unwrap();
        assert_eq!(clone.read_obj::<u32>(GuestAddress(0x2000)).unwrap(), 0xfeed);
        clone.write_obj(0x1234_u32, GuestAddress(0x2000)).unwrap();
        assert_eq!(clone.read_obj::<u32>(GuestAddress(0x2000)).unwrap(), 0x1234);
        assert_eq!(&std::fs::read(&path).unwrap()[0x2000..0x2004], &0xfeed_u32.to_ne_bytes(), "the file is unchanged");
        // A file of another size is refused, naming both sizes.
        let e = create_guest_memory_backed(64, Backing::PrivateFile(&path)).unwrap_err();
        assert!(e.to_string().contains("is 33554432 bytes, the RAM 67108864"), "{e}");
        let e = create_guest_memory_backed(32, Backing::PrivateFile(&tmp.path().join("gone"))).unwrap_err();
        assert!(matches!(e, MemoryError::File { .. }), "{e}");
    }
}
