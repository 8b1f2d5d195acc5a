//! The backend of a block device: a raw image file, read and written with `pread`/`pwrite`
//! straight into and out of guest memory (no bounce buffer).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestMemoryMmap, ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::error::BlockError;
use super::request::{Segment, ID_BYTES, SECTOR_SIZE};

/// A raw disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Opens the image at `path` (read-write unless `read_only`). Its size must be a multiple
    /// of 512 bytes; `id` (at most 20 bytes) is what `VIRTIO_BLK_T_GET_ID` answers.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let shown = || path.display().to_string();
        let id = {
            let mut bytes = [0u8; ID_BYTES];
            bytes
                .get_mut(..id.len())
                .ok_or_else(|| BlockError::IdTooLong(id.to_owned()))?
                .copy_from_slice(id.as_bytes());
            bytes
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open { path: shown(), source })?;
        let kind = file.metadata().map_err(|source| BlockError::Open { path: shown(), source })?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(BlockError::NotAnImage(shown()));
        }
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(|source| BlockError::Size { path: shown(), source })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Unaligned { path: shown(), size });
        }
        Ok(Self { file, sectors: size / SECTOR_SIZE, read_only, id })
    }

    /// The capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The device ID (`VIRTIO_BLK_T_GET_ID`), NUL-padded.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Reads the image from byte `offset` into the guest buffers `segs`, in order.
    pub fn read_into(&self, mem: &GuestMemoryMmap, segs: &[Segment], offset: u64) -> std::io::Result<()> {
        let mut at = FileAt { file: &self.file, offset };
        for seg in segs {
            mem.read_exact_volatile_from(seg.addr, &mut at, seg.len as usize).map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// Writes the guest buffers `segs`, in order, to the image from byte `offset`.
    pub fn write_from(&self, mem: &GuestMemoryMmap, segs: &[Segment], offset: u64) -> std::io::Result<()> {
        let mut at = FileAt { file: &self.file, offset };
        for seg in segs {
            mem.write_all_volatile_to(seg.addr, &mut at, seg.len as usize).map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// Makes written data durable (`fdatasync`).
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

/// The image at a byte offset that advances with each transfer: `read_volatile` is a
/// `pread` into a guest memory slice, `write_volatile` a `pwrite` out of one.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    /// Runs `op(fd, ptr + done, len - done, offset)` until `len` bytes are transferred or it
    /// returns 0 (end of file); retries `EINTR`.
    fn transfer(
        &mut self,
        len: usize,
        mut op: impl FnMut(i32, usize, usize, libc::off_t) -> isize,
    ) -> Result<usize, VolatileMemoryError> {
        let mut done = 0;
        while done < len {
            let offset = self
                .offset
                .checked_add(done as u64)
                .and_then(|o| libc::off_t::try_from(o).ok())
                .ok_or_else(|| VolatileMemoryError::IOError(std::io::ErrorKind::InvalidInput.into()))?;
            let n = op(self.file.as_raw_fd(), done, len - done, offset);
            match usize::try_from(n) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        self.offset += done as u64;
                        return Err(VolatileMemoryError::IOError(e));
                    }
                }
            }
        }
        self.offset += done as u64;
        Ok(done)
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(&mut self, buf: &mut VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        let base = guard.as_ptr();
        let result = self.transfer(buf.len(), |fd, done, len, offset| {
            // SAFETY: `fd` is the open image, borrowed for the call. `base` points to
            // `buf.len()` bytes of mapped guest memory, kept mapped by `guard`, and
            // `done + len == buf.len()`, so the kernel writes only inside the slice. Guest
            // memory is shared with the guest, which may race with the write: that only
            // corrupts the guest's own data, and no Rust reference to it exists.
            unsafe { libc::pread(fd, base.add(done).cast(), len, offset) }
        });
        // Whatever the outcome, the kernel may have written to the whole slice.
        buf.bitmap().mark_dirty(0, buf.len());
        result
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(&mut self, buf: &VolatileSlice<B>) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        let base = guard.as_ptr();
        self.transfer(buf.len(), |fd, done, len, offset| {
            // SAFETY: `fd` is the open image, borrowed for the call. `base` points to
            // `buf.len()` bytes of mapped guest memory, kept mapped by `guard`, and
            // `done + len == buf.len()`, so the kernel reads only inside the slice.
            unsafe { libc::pwrite(fd, base.add(done).cast(), len, offset) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::GuestAddress;

    fn image(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn open_checks_the_image() {
        let f = image(&[0u8; 1024]);
        let disk = Disk::open(f.path(), false, "disk0").unwrap();
        assert_eq!(disk.sectors(), 2);
        assert_eq!(&disk.id()[..6], b"disk0\0");

        let missing = Path::new("/nonexistent/disk.img");
        let err = Disk::open(missing, true, "x").unwrap_err();
        assert!(matches!(err, BlockError::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");

        let odd = image(&[0u8; 1000]);
        let err = Disk::open(odd.path(), false, "x").unwrap_err();
        assert!(err.to_string().contains(&odd.path().display().to_string()), "{err}");
        assert!(err.to_string().contains("1000"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(Disk::open(dir.path(), true, "x"), Err(BlockError::NotAnImage(_))));
        assert!(matches!(Disk::open(f.path(), false, "123456789012345678901"), Err(BlockError::IdTooLong(_))));
        assert!(Disk::open(f.path(), false, "12345678901234567890").is_ok());
    }

    #[test]
    fn read_and_write_across_segments() {
        let f = image(&(0..2048u32).map(|i| i as u8).collect::<Vec<_>>());
        let disk = Disk::open(f.path(), false, "d").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let segs = [
            Segment { addr: GuestAddress(0x1000), len: 100 },
            Segment { addr: GuestAddress(0x3000), len: 412 },
        ];
        disk.read_into(&mem, &segs, 512).unwrap();
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got[..100], GuestAddress(0x1000)).unwrap();
        mem.read_slice(&mut got[100..], GuestAddress(0x3000)).unwrap();
        assert_eq!(got, (512..1024u32).map(|i| i as u8).collect::<Vec<_>>());

        mem.write_slice(&[0xaa; 100], GuestAddress(0x1000)).unwrap();
        disk.write_from(&mem, &segs, 1024).unwrap();
        let contents = std::fs::read(f.path()).unwrap();
        assert_eq!(&contents[1024..1124], &[0xaa; 100]);
        assert_eq!(&contents[1124..1536], &got[100..]);
        disk.flush().unwrap();

        // Reading past the end of the image is an error, not a short success.
        assert!(disk.read_into(&mem, &segs, 2048).is_err());
    }
}
