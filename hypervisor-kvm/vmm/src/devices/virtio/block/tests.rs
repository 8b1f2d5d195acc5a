//! Requests through a mock driver queue in real guest memory, against a real image file.

use std::io::Write;
use std::sync::atomic::AtomicU64;

use tempfile::NamedTempFile;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::Disk;
use super::metrics::BlockMetrics;
use super::queue::{process_queue, Processed};
pub(super) use crate::devices::virtio::test_driver::Driver;
use crate::devices::virtio::test_driver::QSIZE;
use crate::logger::RateLimit;

pub(super) const MEM_SIZE: u64 = 0x10_0000;
const HDR: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x9000;
pub(super) const W: bool = true;
pub(super) const R: bool = false;

pub(super) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// The initial content of byte `i` of the image.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8 ^ (i / 512) as u8
}

pub(super) fn image(sectors: u64) -> NamedTempFile {
    let mut f = NamedTempFile::new().unwrap();
    f.write_all(&(0..sectors * 512).map(pattern).collect::<Vec<_>>()).unwrap();
    f
}

/// Writes a request header (type, sector) at `addr`.
pub(super) fn header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

struct Backend {
    image: NamedTempFile,
    disk: Disk,
    metrics: BlockMetrics,
    log: RateLimit,
}

impl Backend {
    fn new(sectors: u64, read_only: bool) -> Self {
        let image = image(sectors);
        let disk = Disk::open(image.path(), read_only, "test-disk").unwrap();
        Self { image, disk, metrics: BlockMetrics::default(), log: RateLimit::default() }
    }

    fn process(&mut self, mem: &GuestMemoryMmap, q: &mut Queue) -> Processed {
        process_queue(mem, q, &self.disk, &self.metrics, &mut self.log)
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(self.image.path()).unwrap()
    }
}

fn count(c: &AtomicU64) -> u64 {
    BlockMetrics::get(c)
}

fn status(mem: &GuestMemoryMmap, addr: u64) -> u32 {
    u32::from(mem.read_obj::<u8>(GuestAddress(addr)).unwrap())
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// Serves one chain on a fresh queue; returns (status byte, used length).
fn one(be: &mut Backend, mem: &GuestMemoryMmap, kind: u32, sector: u64, bufs: &[(u64, u32, bool)]) -> (u32, u32) {
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut d = Driver::new(mem);
    header(mem, HDR, kind, sector);
    d.add(bufs);
    let mut q = d.queue(false);
    let done = be.process(mem, &mut q);
    assert_eq!(done, Processed { notify: true, more: false });
    let used = d.used();
    assert_eq!((used.len(), used[0].0), (1, 0), "one chain returned");
    (status(mem, STATUS), used[0].1)
}

#[test]
fn write_then_read_back() {
    let mem = memory();
    let mut be = Backend::new(8, false);
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 13 + 5) as u8).collect();
    mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    // Two data descriptors of 700 and 324 bytes: a request need not be split at sectors.
    let out = [(HDR, 16, R), (DATA, 700, R), (DATA + 700, 324, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_OUT, 3, &out), (VIRTIO_BLK_S_OK, 1));
    let contents = be.contents();
    assert_eq!(&contents[3 * 512..5 * 512], &data[..]);
    assert_eq!(contents[5 * 512], pattern(5 * 512), "nothing written past the request");
    assert_eq!(contents[3 * 512 - 1], pattern(3 * 512 - 1));

    let back = 0x4000;
    let inr = [(HDR, 16, R), (back, 1000, W), (back + 1000, 24, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 3, &inr), (VIRTIO_BLK_S_OK, 1025));
    assert_eq!(read(&mem, back, 1024), data);

    // A read of what was there before: sector 0.
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &inr), (VIRTIO_BLK_S_OK, 1025));
    assert_eq!(read(&mem, back, 1024), (0..1024).map(pattern).collect::<Vec<_>>());

    let m = &be.metrics;
    assert_eq!((count(&m.writes), count(&m.write_bytes)), (1, 1024));
    assert_eq!((count(&m.reads), count(&m.read_bytes)), (2, 2048));
    assert_eq!((count(&m.requests), count(&m.invalid), count(&m.io_errors)), (3, 0, 0));
}

#[test]
fn header_and_data_in_one_descriptor_and_a_split_header() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    // Header and 512 bytes of data in one 528-byte readable buffer.
    let mut d = Driver::new(&mem);
    header(&mem, HDR, VIRTIO_BLK_T_OUT, 1);
    mem.write_slice(&[0x5a; 512], GuestAddress(HDR + 16)).unwrap();
    d.add(&[(HDR, 528, R), (STATUS, 1, W)]);
    // Header split 8 + 8 over two descriptors; data and status in one writable buffer.
    let hdr2 = 0x1800;
    header(&mem, hdr2, VIRTIO_BLK_T_IN, 1);
    d.add(&[(hdr2, 8, R), (hdr2 + 8, 8, R), (DATA, 513, W)]);
    let mut q = d.queue(false);
    assert!(be.process(&mem, &mut q).notify);
    assert_eq!(d.used(), [(0, 1), (2, 513)]);
    assert_eq!(status(&mem, STATUS), VIRTIO_BLK_S_OK);
    assert_eq!(read(&mem, DATA, 512), vec![0x5a; 512]);
    assert_eq!(status(&mem, DATA + 512), VIRTIO_BLK_S_OK);
}

#[test]
fn read_only_rejects_writes() {
    let mem = memory();
    let mut be = Backend::new(4, true);
    mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    let out = [(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_OUT, 0, &out), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(be.contents(), (0..2048).map(pattern).collect::<Vec<_>>());
    assert_eq!(count(&be.metrics.read_only_rejects), 1);
    assert_eq!(count(&be.metrics.writes), 0);
    // Reads and flushes still work.
    let inr = [(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 2, &inr), (VIRTIO_BLK_S_OK, 513));
    assert_eq!(read(&mem, DATA, 512), (1024..1536).map(pattern).collect::<Vec<_>>());
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &[(HDR, 16, R), (STATUS, 1, W)]), (VIRTIO_BLK_S_OK, 1));
}

#[test]
fn flush() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    let chain = [(HDR, 16, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &chain), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(count(&be.metrics.flushes), 1);
    // A flush carries no data.
    let chain = [(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(count(&be.metrics.flushes), 1);
    assert_eq!(count(&be.metrics.invalid), 1);
}

#[test]
fn get_id() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
    let chain = [(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_GET_ID, 0, &chain), (VIRTIO_BLK_S_OK, 21));
    let mut want = b"test-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(read(&mem, DATA, 20), want);
    // A shorter buffer gets what fits; nothing is written beyond it.
    mem.write_slice(&[0xff; 32], GuestAddress(DATA)).unwrap();
    let chain = [(HDR, 16, R), (DATA, 4, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_GET_ID, 0, &chain), (VIRTIO_BLK_S_OK, 5));
    assert_eq!(read(&mem, DATA, 6), b"test\xff\xff");
    assert_eq!(count(&be.metrics.get_ids), 2);
}

#[test]
fn unsupported_types() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_T_SCSI_CMD, u32::MAX] {
        let chain = [(HDR, 16, R), (DATA, 64, R), (STATUS, 1, W)];
        assert_eq!(one(&mut be, &mem, kind, 0, &chain), (VIRTIO_BLK_S_UNSUPP, 1), "type {kind}");
    }
    assert_eq!(count(&be.metrics.unsupported), 4);
    assert_eq!(be.contents(), (0..2048).map(pattern).collect::<Vec<_>>());
}

#[test]
fn sectors_beyond_capacity() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    mem.write_slice(&[0xcc; 1024], GuestAddress(DATA)).unwrap();
    let one_sector = [(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)];
    let two_sectors = [(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 4, &one_sector), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 3, &two_sectors), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(read(&mem, DATA, 1024), vec![0xcc; 1024], "nothing read");
    let out = [(HDR, 16, R), (DATA, 1024, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_OUT, 3, &out), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(be.contents().len(), 2048, "the image did not grow");
    assert_eq!(count(&be.metrics.invalid), 3);
    // The last sector itself is fine.
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 3, &one_sector), (VIRTIO_BLK_S_OK, 513));
    assert_eq!(read(&mem, DATA, 512), (1536..2048).map(pattern).collect::<Vec<_>>());
}

#[test]
fn length_overflows() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    let chain = [(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)];
    // sector * 512 overflows u64; so does sector * 512 + length.
    for sector in [u64::MAX, u64::MAX / 512 + 1, u64::MAX / 512] {
        assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, sector, &chain), (VIRTIO_BLK_S_IOERR, 1), "sector {sector}");
    }
    // The sector of types other than In and Out is not used, whatever it is.
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, u64::MAX, &[(HDR, 16, R), (STATUS, 1, W)]), (VIRTIO_BLK_S_OK, 1));
    let chain = [(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_GET_ID, u64::MAX, &chain), (VIRTIO_BLK_S_OK, 21));
    // Buffers whose end overflows the guest address space.
    let chain = [(HDR, 16, R), (u64::MAX - 100, 512, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    let chain = [(HDR, 16, R), (u64::MAX - 1, 0x1000, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (0xff, 0));
    // A chain of more than 4 GiB: the chain iterator stops at the descriptor that overflows
    // the total, so the chain ends in a huge buffer outside memory and has no status byte.
    let chain = [(HDR, 16, R), (DATA, u32::MAX - 8, W), (DATA, 512, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (0xff, 0));
    assert_eq!((count(&be.metrics.invalid), count(&be.metrics.no_status)), (4, 2));
    assert_eq!(be.contents(), (0..2048).map(pattern).collect::<Vec<_>>());
}

#[test]
fn malformed_headers() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    mem.write_slice(&[0xcc; 512], GuestAddress(DATA)).unwrap();
    // A 17-byte readable header buffer: one byte of data in the wrong direction for a read,
    // and a write of 1 byte, not a whole sector.
    let chain = [(HDR, 17, R), (DATA, 512, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(read(&mem, DATA, 512), vec![0xcc; 512]);
    let chain = [(HDR, 17, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_OUT, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    // A 15-byte header, and a header in a device-writable buffer.
    let chain = [(HDR, 15, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    let chain = [(HDR, 16, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    // Data of a length that is not a multiple of 512.
    let chain = [(HDR, 16, R), (DATA, 100, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    // Write data in device-writable buffers; readable data after writable data.
    let chain = [(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_OUT, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    let chain = [(HDR, 16, R), (DATA, 512, W), (DATA, 512, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    // The header after the read buffer it describes.
    let chain = [(DATA, 512, W), (HDR, 16, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(read(&mem, DATA, 512), vec![0xcc; 512]);
    // Out of order even where the type does not matter.
    let chain = [(HDR, 16, R), (DATA, 1, W), (DATA, 4, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_DISCARD, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(count(&be.metrics.invalid), 9);
    assert_eq!((count(&be.metrics.reads), count(&be.metrics.writes), count(&be.metrics.flushes)), (0, 0, 0));
    assert_eq!(be.contents(), (0..2048).map(pattern).collect::<Vec<_>>());
}

#[test]
fn no_writable_status_byte() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    mem.write_slice(&[0xcc; 512], GuestAddress(DATA)).unwrap();
    // The status descriptor is device-readable: nothing may be written, not even the data.
    let chain = [(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (0xff, 0));
    assert_eq!(read(&mem, DATA, 512), vec![0xcc; 512]);
    // No status at all; an empty trailing descriptor does not count as one.
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &[(HDR, 16, R)]), (0xff, 0));
    let chain = [(HDR, 16, R), (STATUS, 0, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &chain), (0xff, 0));
    // A status byte outside guest memory.
    let chain = [(HDR, 16, R), (MEM_SIZE, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &chain), (0xff, 0));
    assert_eq!(count(&be.metrics.no_status), 4);
    assert_eq!(count(&be.metrics.requests), 4);
    assert_eq!(count(&be.metrics.flushes), 0);
}

#[test]
fn buffers_outside_guest_memory() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    // The header outside memory.
    let chain = [(MEM_SIZE + 0x1000, 16, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_FLUSH, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    // Data straddling the end of memory, for a read and for a write.
    let chain = [(HDR, 16, R), (MEM_SIZE - 256, 512, W), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_IN, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(read(&mem, MEM_SIZE - 256, 256), vec![0; 256], "nothing read into the part inside");
    let chain = [(HDR, 16, R), (MEM_SIZE - 256, 512, R), (STATUS, 1, W)];
    assert_eq!(one(&mut be, &mem, VIRTIO_BLK_T_OUT, 0, &chain), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(count(&be.metrics.invalid), 3);
    assert_eq!(be.contents(), (0..2048).map(pattern).collect::<Vec<_>>());

    // A descriptor whose `next` points outside the table: the chain ends there, without a
    // status byte.
    let mut d = Driver::new(&mem);
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    d.add_raw(0, &[RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 200))]);
    let mut q = d.queue(false);
    assert!(be.process(&mem, &mut q).notify);
    assert_eq!(d.used(), [(0, 0)]);
}

#[test]
fn looping_chain_ends() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    let mut d = Driver::new(&mem);
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    // 0 -> 1 -> 0 -> ...: the chain iterator stops after QSIZE descriptors.
    d.add_raw(
        0,
        &[
            RawDescriptor::from(Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1)),
            RawDescriptor::from(Descriptor::new(STATUS, 1, (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16, 0)),
        ],
    );
    let mut q = d.queue(false);
    assert!(be.process(&mem, &mut q).notify);
    // Readable descriptors after writable ones: refused, with the status written.
    assert_eq!(d.used(), [(0, 1)]);
    assert_eq!(status(&mem, STATUS), VIRTIO_BLK_S_IOERR);
}

#[test]
fn several_chains_and_a_broken_available_index() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    let mut d = Driver::new(&mem);
    header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
    for i in 0..5u64 {
        d.add(&[(HDR, 16, R), (DATA + i * 0x400, 512, W), (STATUS + i, 1, W)]);
    }
    let mut q = d.queue(false);
    assert_eq!(be.process(&mem, &mut q), Processed { notify: true, more: false });
    let used = d.used();
    assert_eq!(used.len(), 5);
    for i in 0..5u16 {
        assert_eq!(used[usize::from(i)], (u32::from(i) * 3, 513));
        assert_eq!(status(&mem, STATUS + u64::from(i)), VIRTIO_BLK_S_OK);
    }
    // Nothing new: nothing to do, no interrupt.
    assert_eq!(be.process(&mem, &mut q), Processed::default());
    // The driver claims more chains than the queue holds.
    mem.write_obj(100u16, GuestAddress(d.addrs()[1] + 2)).unwrap();
    assert_eq!(be.process(&mem, &mut q), Processed::default());
    assert_eq!(count(&be.metrics.queue_errors), 1);
    assert_eq!(count(&be.metrics.requests), 5);
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mem = memory();
    let mut be = Backend::new(4, false);
    let mut d = Driver::new(&mem);
    header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    d.add(&[(HDR, 16, R), (STATUS, 1, W)]);
    d.add(&[(HDR, 16, R), (STATUS, 1, W)]);
    let mut q = d.queue(false);
    q.set_event_idx(true);
    // used_event (after the available ring) = 5: the driver wants an interrupt only once
    // the sixth chain is used.
    d.set_used_event(5);
    assert_eq!(be.process(&mem, &mut q), Processed { notify: false, more: false });
    assert_eq!(d.used().len(), 2);
    // The device published avail_event = its next available index.
    assert_eq!(mem.read_obj::<u16>(GuestAddress(d.addrs()[2] + 4 + 8 * u64::from(QSIZE))).unwrap(), 2);
    d.set_used_event(2);
    d.add(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(be.process(&mem, &mut q), Processed { notify: true, more: false });
}
