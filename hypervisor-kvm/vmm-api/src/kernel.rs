//! Which kernel files the vmm boots, told from their first bytes: an ELF `vmlinux` (through
//! its PVH entry, the fast path) or a bzImage (through the Linux 64-bit boot protocol, the
//! fallback).

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// What a kernel file is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// The ELF magic at offset 0 (a vmlinux).
    Elf,
    /// `HdrS` at offset 0x202 (a bzImage's setup header).
    BzImage,
    /// Neither: the vmm cannot boot it.
    Unknown,
}

/// Reads enough of `path` to tell an ELF vmlinux from a bzImage.
pub fn kernel_format(path: &Path) -> std::io::Result<KernelFormat> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_the_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            kernel_format(&path).unwrap()
        };
        assert_eq!(check(b"\x7fELF\x02\x01\x01"), KernelFormat::Elf);
        let mut bzimage = vec![0u8; 0x300];
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(check(&bzimage), KernelFormat::BzImage);
        assert_eq!(check(b"MZ not a kernel"), KernelFormat::Unknown);
        assert_eq!(check(b""), KernelFormat::Unknown);
        assert!(kernel_format(&dir.path().join("missing")).is_err());
    }
}
