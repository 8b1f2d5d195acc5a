//! Writing the initramfs: a gzip-compressed cpio (newc) archive, with the `cpio` crate.
//! Entries are written in a fixed order with mtime 0, so the same inputs give the same bytes.

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One entry of the archive.
pub enum Entry {
    /// A directory.
    Dir { path: String },
    /// A regular file with its contents and permission bits.
    File { path: String, mode: u32, data: Vec<u8> },
    /// A character device node.
    CharDev { path: String, mode: u32, major: u32, minor: u32 },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path } | Entry::File { path, .. } | Entry::CharDev { path, .. } => path,
        }
    }
}

/// Writes `entries` to `out` (through a temporary file renamed into place). Returns its size.
pub fn write(entries: &[Entry], out: &Path) -> Result<u64> {
    let tmp = out.with_extension("tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut gz = GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::best());
    for (i, entry) in entries.iter().enumerate() {
        let name = entry.path().trim_start_matches('/');
        let ino = u32::try_from(i + 1)?;
        let builder = cpio::newc::Builder::new(name).ino(ino).uid(0).gid(0).mtime(0);
        let (builder, data): (_, &[u8]) = match entry {
            Entry::Dir { .. } => (builder.mode(S_IFDIR | 0o755).nlink(2), &[]),
            Entry::File { mode, data, .. } => (builder.mode(S_IFREG | mode).nlink(1), data),
            Entry::CharDev { mode, major, minor, .. } => {
                (builder.mode(S_IFCHR | mode).nlink(1).rdev_major(*major).rdev_minor(*minor), &[])
            }
        };
        let size = u32::try_from(data.len()).with_context(|| format!("{name} is over 4 GiB"))?;
        let mut writer = builder.write(&mut gz, size);
        writer.write_all(data)?;
        writer.finish()?;
    }
    cpio::newc::trailer(&mut gz)?;
    let file = gz.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(std::fs::metadata(out)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_through_the_cpio_reader() {
        let dir = tempfile_dir();
        let out = dir.join("initrd.img");
        let entries = vec![
            Entry::Dir { path: "/dev".into() },
            Entry::CharDev { path: "/dev/console".into(), mode: 0o600, major: 5, minor: 1 },
            Entry::File { path: "/init".into(), mode: 0o755, data: b"#!agent".to_vec() },
        ];
        write(&entries, &out).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&out).unwrap()).read_to_end(&mut raw).unwrap();
        let mut rest = &raw[..];
        let mut seen = Vec::new();
        loop {
            let mut reader = cpio::NewcReader::new(rest).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let e = reader.entry();
            seen.push((e.name().to_owned(), e.mode(), e.rdev_major(), e.file_size()));
            let mut body = Vec::new();
            reader.read_to_end(&mut body).unwrap();
            rest = reader.finish().unwrap();
        }
        assert_eq!(
            seen,
            vec![
                ("dev".to_owned(), S_IFDIR | 0o755, 0, 0),
                ("dev/console".to_owned(), S_IFCHR | 0o600, 5, 0),
                ("init".to_owned(), S_IFREG | 0o755, 0, 7),
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-initramfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
