//! virtio-net's transmit (and receive) queue processing over guest memory taken from the
//! fuzz input: the descriptor table, the available ring and every buffer are the fuzzer's.
//!
//! Input: byte 0 holds options (bit 0 event idx, bit 1 also run rx), byte 1 the queue
//! size (a power of two up to 256), bytes 2..4 the available index; the rest is copied
//! into guest memory from address 0 (descriptor table at 0, available ring at 0x1000,
//! used ring at 0x2000).

use crate::devices::virtio::net::metrics::NetMetrics;
use crate::devices::virtio::net::queue::{FakeFrames, Rx, Tx, VNET_HDR_LEN};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;

fn queue(size: u16, event_idx: bool) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.set_size(size);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    Some(q)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let (options, size_log2, avail_idx) =
        (data[0], data[1] % 9, u16::from_le_bytes([data[2], data[3]]));
    let image = &data[4..];
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let len = image.len().min(MEM_SIZE);
    if mem.write_slice(&image[..len], GuestAddress(0)).is_err()
        || mem
            .write_obj(avail_idx, GuestAddress(AVAIL_RING + 2))
            .is_err()
    {
        return;
    }
    let Some(mut q) = queue(1 << size_log2, options & 1 != 0) else {
        return;
    };
    let metrics = NetMetrics::default();
    let mut tap = FakeFrames::default();
    let mut tx = Tx::new();
    // Twice, as after a second notification: the queue's state must stay consistent.
    for _ in 0..2 {
        let _ = tx.process(&mem, &mut q, &mut tap, &metrics);
    }
    let get = NetMetrics::get;
    REACHED.add([
        get(&metrics.tx_frames),
        get(&metrics.tx_bad_chains) + get(&metrics.tx_bad_headers),
    ]);
    for frame in &tap.from_guest {
        assert!(frame.len() >= VNET_HDR_LEN && frame[..VNET_HDR_LEN].iter().all(|&b| b == 0));
    }

    if options & 2 != 0 {
        // The same rings as a receive queue, fed frames cut from the input.
        let Some(mut q) = queue(1 << size_log2, options & 1 != 0) else {
            return;
        };
        let mut tap = FakeFrames::default();
        for chunk in image.chunks(1600).take(8) {
            tap.to_guest.push_back(chunk.to_vec());
        }
        let mut rx = Rx::new();
        for _ in 0..2 {
            let _ = rx.process(&mem, &mut q, &mut tap, &metrics);
        }
    }
}

/// Frames sent and malformed transmit chains so far, over all inputs.
pub static REACHED: super::Reached<2> = super::Reached::new();
