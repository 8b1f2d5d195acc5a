//! Extracting the ELF `vmlinux` from a bzImage: the setup header locates the compressed
//! payload (XZ on Debian), which decompresses to the ELF a VMM can boot through its PVH entry.

use anyhow::{bail, ensure, Context, Result};
use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;
use std::io::Read;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point note.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];

fn u32_at(data: &[u8], off: usize) -> Result<u32> {
    let b = data.get(off..off + 4).context("bzImage too short for its setup header")?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Returns the uncompressed ELF kernel inside a bzImage.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>> {
    ensure!(bzimage.get(0x202..0x206) == Some(b"HdrS"), "not a bzImage: no HdrS setup header");
    let setup_sects = match *bzimage.get(0x1f1).context("bzImage too short")? {
        0 => 4,
        n => usize::from(n),
    };
    let protected_mode = (setup_sects + 1) * 512;
    let offset = protected_mode + u32_at(bzimage, 0x248)? as usize;
    let length = u32_at(bzimage, 0x24c)? as usize;
    let payload = bzimage
        .get(offset..offset + length)
        .with_context(|| format!("payload {offset:#x}+{length:#x} lies outside the {}-byte bzImage", bzimage.len()))?;
    if !payload.starts_with(XZ_MAGIC) {
        bail!("bzImage payload is not XZ (starts {:02x?}); only XZ is handled", &payload[..payload.len().min(6)]);
    }
    let mut out = Vec::with_capacity(64 << 20);
    liblzma::read::XzDecoder::new(payload).read_to_end(&mut out).context("decompressing the bzImage payload")?;
    Ok(out)
}

/// Checks that `data` is an x86-64 ELF executable with a PVH entry note; returns the entry.
pub fn pvh_entry(data: &[u8]) -> Result<u32> {
    let header = elf::FileHeader64::<Endianness>::parse(data).context("vmlinux is not an ELF64 file")?;
    let endian = header.endian()?;
    ensure!(header.e_machine(endian) == elf::EM_X86_64, "vmlinux is not x86-64");
    for segment in header.program_headers(endian, data)? {
        let Some(mut notes) = segment.notes(endian, data)? else { continue };
        while let Some(note) = notes.next()? {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                let d = note.desc();
                ensure!(d.len() >= 4, "PVH entry note too short");
                return Ok(u32::from_le_bytes([d[0], d[1], d[2], d[3]]));
            }
        }
    }
    bail!("vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert!(extract(b"hello").unwrap_err().to_string().contains("HdrS"));
        let mut fake = vec![0u8; 0x300];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        fake[0x24c..0x250].copy_from_slice(&0x1000u32.to_le_bytes());
        assert!(extract(&fake).unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn refuses_an_elf_without_pvh_note() {
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert!(pvh_entry(&me).unwrap_err().to_string().contains("PVH"));
        assert!(pvh_entry(b"not elf").is_err());
    }
}
