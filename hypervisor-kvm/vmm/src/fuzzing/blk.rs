//! virtio-blk request queue: guest memory and the queue layout come from the fuzz input; the
//! queue is served against a temporary image file, as the device's worker would serve it.
//!
//! Input: byte 0 picks the queue size (a power of two up to 256), byte 1 the options (event
//! index, read-only disk), bytes 2..8 the ring addresses (in 16-byte units); the rest is copied
//! into guest memory, which has two adjacent regions, a hole, and a third region.

use std::io::Write;
use std::sync::OnceLock;

use crate::logger::RateLimit;
use crate::devices::virtio::block::disk::Disk;
use crate::devices::virtio::block::metrics::BlockMetrics;
use crate::devices::virtio::block::queue::process_queue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const SECTORS: u64 = 64;
const REGIONS: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x8000), (0x11000, 0x1000)];

struct Disks {
    _image: tempfile::NamedTempFile,
    read_write: Disk,
    read_only: Disk,
}

fn disks() -> &'static Disks {
    static DISKS: OnceLock<Disks> = OnceLock::new();
    DISKS.get_or_init(|| {
        let mut image = tempfile::NamedTempFile::new().expect("creating the image");
        image
            .write_all(&vec![0x5a; (SECTORS * 512) as usize])
            .expect("writing the image");
        let read_write = Disk::open(image.path(), false, "fuzz").expect("opening the image");
        let read_only = Disk::open(image.path(), true, "fuzz-ro").expect("opening the image");
        Disks {
            _image: image,
            read_write,
            read_only,
        }
    })
}

fn address(bytes: [u8; 2]) -> u32 {
    u32::from(u16::from_le_bytes(bytes)) * 16
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&[size, options, d0, d1, a0, a1, u0, u1], contents)) = data.split_first_chunk::<8>()
    else {
        return;
    };
    let regions: Vec<_> = REGIONS
        .iter()
        .map(|&(start, len)| (GuestAddress(start), len))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&regions).expect("creating guest memory");
    let first = REGIONS[0].1 + REGIONS[1].1;
    mem.write_slice(&contents[..contents.len().min(first)], GuestAddress(0))
        .expect("filling guest memory");

    let Ok(mut queue) = Queue::new(256) else {
        return;
    };
    queue.set_size(1 << (size % 9));
    queue.set_desc_table_address(Some(address([d0, d1])), Some(0));
    queue.set_avail_ring_address(Some(address([a0, a1])), Some(0));
    queue.set_used_ring_address(Some(address([u0, u1])), Some(0));
    queue.set_event_idx(options & 1 != 0);
    queue.set_ready(true);
    // The transport refuses to activate a device whose rings lie outside guest memory.
    if !queue.is_valid(&mem) {
        return;
    }
    let disk = if options & 2 != 0 {
        &disks().read_only
    } else {
        &disks().read_write
    };
    let metrics = BlockMetrics::default();
    let mut log = RateLimit::default();
    // Twice: the second pass sees the used ring and notification state the first one left.
    for _ in 0..2 {
        process_queue(&mem, &mut queue, disk, &metrics, &mut log);
    }
    let get = BlockMetrics::get;
    REACHED.add([
        get(&metrics.reads),
        get(&metrics.writes),
        get(&metrics.flushes),
        get(&metrics.invalid),
    ]);
}

/// Reads, writes, flushes and malformed requests served so far, over all inputs.
pub static REACHED: super::Reached<4> = super::Reached::new();
