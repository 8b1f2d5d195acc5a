//! Checks a file is a complete ELF shared object exporting a plugin root module, before
//! `dlopen` sees it: mapping a truncated file can kill the host with SIGBUS, and opening
//! some other library would run its constructors.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use thiserror::Error;

const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const SHT_DYNSYM: u32 = 11;
const DT_NULL: u64 = 0;
const DT_FLAGS_1: u64 = 0x6fff_fffb;
const DF_1_PIE: u64 = 0x0800_0000;

/// Why a file is not a loadable plugin library.
#[derive(Debug, Error)]
pub enum ElfError {
    /// Reading the file failed.
    #[error("cannot read it")]
    Io(#[source] std::io::Error),
    /// Zero bytes.
    #[error("it is empty")]
    Empty,
    /// No ELF magic.
    #[error("it is not an ELF file")]
    NotElf,
    /// Wrong class, byte order or machine for this host.
    #[error("it is an ELF file for another platform ({0})")]
    WrongPlatform(String),
    /// An executable or object file rather than a shared object.
    #[error("it is not a shared library (ELF type {0})")]
    NotSharedObject(u16),
    /// A position-independent executable (ET_DYN too, but not loadable).
    #[error("it is a program (a position-independent executable), not a shared library")]
    Executable,
    /// Some header or segment points past the end of the file.
    #[error("it is truncated: {what} ends at byte {end}, the file has {len}")]
    Truncated {
        /// Which part.
        what: &'static str,
        /// Where that part ends.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// Malformed header fields.
    #[error("its ELF headers are malformed: {0}")]
    Malformed(&'static str),
    /// No dynamic symbol table, or no root module symbol in it.
    #[error("it is not a plugin: it exports no plugin root module (symbol {0})")]
    NoRootModule(&'static str),
}

struct Reader<'a> {
    file: &'a File,
    len: u64,
}

impl Reader<'_> {
    fn bytes(&self, what: &'static str, offset: u64, size: u64) -> Result<Vec<u8>, ElfError> {
        let end = offset.checked_add(size).ok_or(ElfError::Malformed("offset overflow"))?;
        if end > self.len {
            return Err(ElfError::Truncated { what, end, len: self.len });
        }
        if size > 64 << 20 {
            return Err(ElfError::Malformed("a table larger than 64 MiB"));
        }
        let mut buf = vec![0; size as usize];
        self.file.read_exact_at(&mut buf, offset).map_err(ElfError::Io)?;
        Ok(buf)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

/// Checks `path` and returns `Ok` if it is a complete 64-bit little-endian shared object for
/// this machine that exports `root_symbol`.
pub fn check_plugin_library(path: &Path, root_symbol: &'static str) -> Result<(), ElfError> {
    let file = File::open(path).map_err(ElfError::Io)?;
    let len = file.metadata().map_err(ElfError::Io)?.len();
    let r = Reader { file: &file, len };
    if len == 0 {
        return Err(ElfError::Empty);
    }
    let magic = r.bytes("the ELF magic", 0, len.min(4)).map_err(|_| ElfError::NotElf)?;
    if magic != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    let eh = r.bytes("the ELF header", 0, 64)?;
    if eh[4] != 2 || eh[5] != 1 {
        return Err(ElfError::WrongPlatform(format!("class {}, data {}", eh[4], eh[5])));
    }
    let machine = u16_at(&eh, 18);
    let native = if cfg!(target_arch = "aarch64") { EM_AARCH64 } else { EM_X86_64 };
    if machine != native {
        return Err(ElfError::WrongPlatform(format!("machine {machine}")));
    }
    let e_type = u16_at(&eh, 16);
    if e_type != ET_DYN {
        return Err(ElfError::NotSharedObject(e_type));
    }
    let (phoff, shoff) = (u64_at(&eh, 32), u64_at(&eh, 40));
    let (phentsize, phnum) = (u16_at(&eh, 54) as u64, u16_at(&eh, 56) as u64);
    let (shentsize, shnum) = (u16_at(&eh, 58) as u64, u16_at(&eh, 60) as u64);
    if phentsize < 56 || shentsize < 64 {
        return Err(ElfError::Malformed("header entry sizes"));
    }

    let phdrs = r.bytes("the program headers", phoff, phentsize * phnum)?;
    let mut dynamic = None;
    for i in 0..phnum as usize {
        let ph = &phdrs[i * phentsize as usize..];
        let (p_type, offset, filesz) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 32));
        if p_type == PT_LOAD || p_type == PT_DYNAMIC {
            let end = offset.checked_add(filesz).ok_or(ElfError::Malformed("segment overflow"))?;
            if end > len {
                return Err(ElfError::Truncated { what: "a loadable segment", end, len });
            }
        }
        if p_type == PT_DYNAMIC {
            dynamic = Some((offset, filesz));
        }
    }
    let (dyn_off, dyn_size) = dynamic.ok_or(ElfError::Malformed("no dynamic segment"))?;
    let dynamic = r.bytes("the dynamic segment", dyn_off, dyn_size)?;
    for entry in dynamic.chunks_exact(16) {
        let (tag, val) = (u64_at(entry, 0), u64_at(entry, 8));
        if tag == DT_NULL {
            break;
        }
        if tag == DT_FLAGS_1 && val & DF_1_PIE != 0 {
            return Err(ElfError::Executable);
        }
    }

    let shdrs = r.bytes("the section headers", shoff, shentsize * shnum)?;
    let sections: Vec<Section> = (0..shnum as usize)
        .map(|i| {
            let sh = &shdrs[i * shentsize as usize..];
            Section {
                kind: u32_at(sh, 4),
                offset: u64_at(sh, 24),
                size: u64_at(sh, 32),
                link: u32_at(sh, 40),
                entsize: u64_at(sh, 56),
            }
        })
        .collect();
    let dynsym = sections
        .iter()
        .find(|s| s.kind == SHT_DYNSYM)
        .ok_or(ElfError::NoRootModule(root_symbol))?;
    let strtab = sections.get(dynsym.link as usize).ok_or(ElfError::Malformed("dynsym link"))?;
    if dynsym.entsize < 24 {
        return Err(ElfError::Malformed("symbol entry size"));
    }
    let syms = r.bytes("the dynamic symbol table", dynsym.offset, dynsym.size)?;
    let strings = r.bytes("the dynamic string table", strtab.offset, strtab.size)?;
    let found = syms.chunks_exact(dynsym.entsize as usize).any(|sym| {
        let name_at = u32_at(sym, 0) as usize;
        let defined = u16_at(sym, 6) != 0; // st_shndx != SHN_UNDEF
        defined
            && strings
                .get(name_at..)
                .and_then(|s| s.split(|&b| b == 0).next())
                .is_some_and(|name| name == root_symbol.as_bytes())
    });
    if !found {
        return Err(ElfError::NoRootModule(root_symbol));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn check_bytes(bytes: &[u8]) -> ElfError {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        check_plugin_library(f.path(), "sym").unwrap_err()
    }

    #[test]
    fn non_elf_inputs_are_named() {
        assert!(matches!(check_bytes(b""), ElfError::Empty));
        assert!(matches!(check_bytes(b"hello, I am a text file\n"), ElfError::NotElf));
        assert!(matches!(check_bytes(b"\x7fEL"), ElfError::NotElf));
        assert!(matches!(check_bytes(b"\x7fELF\x02\x01"), ElfError::Truncated { .. }));
    }

    #[test]
    fn system_programs_and_libraries_are_refused() {
        // A PIE program: ET_DYN, but an executable.
        let e = check_plugin_library(Path::new("/bin/ls"), "sym").unwrap_err();
        assert!(matches!(e, ElfError::Executable | ElfError::NotSharedObject(2)), "{e}");
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("libc.so.6");
        let e = check_plugin_library(Path::new(libc), "sym").unwrap_err();
        assert!(matches!(e, ElfError::NoRootModule("sym")), "{e}");
        assert!(check_plugin_library(Path::new(libc), "malloc").is_ok());
    }

    #[test]
    fn every_truncation_of_a_real_library_is_caught() {
        let libc = std::fs::read("/lib/x86_64-linux-gnu/libc.so.6")
            .or_else(|_| std::fs::read("/lib/aarch64-linux-gnu/libc.so.6"))
            .unwrap();
        let len = libc.len();
        for cut in [1, 63, 64, 1000, len / 3, len / 2, len - 4096, len - 1] {
            let e = check_bytes(&libc[..cut]);
            assert!(matches!(e, ElfError::Truncated { .. } | ElfError::NotElf), "cut {cut}: {e}");
        }
    }
}
