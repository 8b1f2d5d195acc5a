//! The driver side of the queues, for tests: `MockSplitQueue`'s descriptor table in real guest
//! memory, with the buffer of descriptor `i` of queue `q` at a fixed slot.
//!
//! The avail and used rings are placed here rather than by `MockSplitQueue::create`: in
//! virtio-queue 0.18 it puts the used ring right after the avail ring's first `len` *bytes*
//! (`SplitQueueRing::end` adds the element count), so avail entries past the half of the ring
//! overwrite the used ring.

use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Size of every test queue.
pub const QSIZE: u16 = 16;
/// Bytes of buffer per descriptor slot.
pub const SLOT: u64 = 0x1000;
/// Guest memory size of the tests.
pub const MEM_SIZE: usize = 4 << 20;
const BUFFERS: u64 = 0x10_0000;

/// Guest memory for the tests.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("test guest memory")
}

/// One queue as the driver sees it.
pub struct DriverQueue<'a> {
    mem: &'a GuestMemoryMmap,
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    avail: GuestAddress,
    used: GuestAddress,
    index: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl<'a> DriverQueue<'a> {
    /// Queue number `index`: rings at `0x1000 * index`, buffers in their own 64 KiB.
    pub fn new(mem: &'a GuestMemoryMmap, index: u16) -> Self {
        let base = GuestAddress(0x1000 * u64::from(index));
        let mock = MockSplitQueue::create(mem, base, QSIZE);
        let (avail, used) = (base.unchecked_add(0x400), base.unchecked_add(0x800));
        for addr in [avail, used] {
            mem.write_slice(&[0; 0x100], addr).expect("rings");
        }
        Self { mem, mock, avail, used, index: u64::from(index), next_desc: 0, avail_idx: 0, used_seen: 0 }
    }

    /// The device's view of the queue (ready, addresses set).
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue size");
        q.set_size(QSIZE);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.mock.desc_table_addr());
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        assert!(q.is_valid(self.mem));
        q
    }

    /// Guest address of descriptor slot `i`'s buffer.
    pub fn slot(&self, i: u16) -> u64 {
        BUFFERS + self.index * u64::from(QSIZE) * SLOT + u64::from(i % QSIZE) * SLOT
    }

    /// Writes descriptor `i` of the table as given.
    pub fn store(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
        self.mock.desc_table().store(i, desc).expect("descriptor index");
    }

    /// Makes the chain at `head` available to the device.
    pub fn publish(&mut self, head: u16) {
        let avail = self.avail;
        let entry = avail.unchecked_add(4 + 2 * u64::from(self.avail_idx % QSIZE));
        self.mem.write_obj(head, entry).expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.store(self.avail_idx, avail.unchecked_add(2), Ordering::Release).expect("avail idx");
    }

    /// Adds a chain of `(address, length, device-writable)` buffers; returns its head.
    pub fn add_raw(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (n, &(addr, len, writable)) in descs.iter().enumerate() {
            let i = self.next_desc;
            let next = (i + 1) % QSIZE;
            let mut flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
            if n + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.store(i, addr, len, flags, next);
            self.next_desc = next;
        }
        self.publish(head);
        head
    }

    /// Adds a device-readable buffer holding `data`, in the slot of its descriptor.
    pub fn add_out(&mut self, data: &[u8]) -> u16 {
        let addr = self.slot(self.next_desc);
        self.mem.write_slice(data, GuestAddress(addr)).expect("out buffer");
        self.add_raw(&[(addr, u32::try_from(data.len()).expect("small"), false)])
    }

    /// Adds a device-writable buffer of `len` bytes in the slot of its descriptor.
    pub fn add_in(&mut self, len: u32) -> u16 {
        let addr = self.slot(self.next_desc);
        self.add_raw(&[(addr, len, true)])
    }

    /// The used entries added since the last call: `(head, length)`.
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let used = self.used;
        let idx: u16 = self.mem.load(used.unchecked_add(2), Ordering::Acquire).expect("used idx");
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = used.unchecked_add(4 + 8 * u64::from(self.used_seen % QSIZE));
            let id: u32 = self.mem.read_obj(at).expect("used id");
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).expect("used len");
            out.push((u16::try_from(id).expect("head fits u16"), len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// The first `len` bytes of the slot of descriptor `head`.
    pub fn read_slot(&self, head: u16, len: u32) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(self.slot(head))).expect("slot");
        buf
    }
}
