//! The driver's side of a split virtqueue in real guest memory, for the devices' unit tests:
//! chains of `(addr, len, device_writable)` buffers, the used ring read back.

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub(crate) const MEM_SIZE: usize = 0x20_0000;
/// Where the tests put buffers (the rings sit below).
pub(crate) const BUF: u64 = 0x10_0000;
pub(crate) const QSIZE: u16 = 16;
/// The used ring's offset from the queue's start: `MockSplitQueue` would put its own used
/// ring over the end of the available ring (it computes the ring's end in elements, not
/// bytes).
const USED: u64 = 0x8000;

pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// The driver's side of one queue: adds chains of `(addr, len, device_writable)` buffers.
pub(crate) struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    used_addr: u64,
    pub(crate) vq: MockSplitQueue<'m, GuestMemoryMmap>,
    next_desc: u16,
}

impl<'m> Driver<'m> {
    pub(crate) fn new(mem: &'m GuestMemoryMmap) -> Self {
        Self::at(mem, 0)
    }

    /// A queue whose rings start at `base` (below [`BUF`], 64 KiB apart).
    pub(crate) fn at(mem: &'m GuestMemoryMmap, base: u64) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(base), QSIZE);
        Self {
            mem,
            used_addr: base + USED,
            vq,
            next_desc: 0,
        }
    }

    pub(crate) fn queue(&self, event_idx: bool) -> Queue {
        let mut q: Queue = self.vq.create_queue().unwrap();
        q.set_used_ring_address(Some(self.used_addr as u32), Some(0));
        q.set_event_idx(event_idx);
        q
    }

    /// Adds one chain; returns its head index.
    pub(crate) fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let last = i + 1 == bufs.len();
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { head + i as u16 + 1 };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.vq.add_desc_chains(&descs, head).unwrap();
        self.next_desc += bufs.len() as u16;
        head
    }

    /// Adds raw descriptors at `index` and publishes `index` as a chain head.
    pub(crate) fn add_raw(&mut self, index: u16, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            self.vq.desc_table().store(index + i as u16, *d).unwrap();
        }
        let idx = self.vq.avail().idx().load();
        self.vq
            .avail()
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(index);
        self.vq.avail().idx().store(idx.wrapping_add(1));
        self.next_desc = self.next_desc.max(index + descs.len() as u16);
    }

    /// The descriptor table's, available ring's and used ring's addresses.
    pub(crate) fn addrs(&self) -> [u64; 3] {
        [
            self.vq.desc_table_addr().0,
            self.vq.avail_addr().0,
            self.used_addr,
        ]
    }

    /// The used ring's `(id, len)` entries so far.
    pub(crate) fn used(&self) -> Vec<(u32, u32)> {
        let (mem, used) = (self.mem, self.used_addr);
        let n: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap();
        (0..u64::from(n))
            .map(|i| {
                let id: u32 = mem.read_obj(GuestAddress(used + 4 + 8 * i)).unwrap();
                let len: u32 = mem.read_obj(GuestAddress(used + 8 + 8 * i)).unwrap();
                (id, len)
            })
            .collect()
    }

    /// Writes the driver's `used_event` (after the available ring).
    pub(crate) fn set_used_event(&self, value: u16) {
        let addr = self.vq.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
        self.mem.write_obj(value, GuestAddress(addr)).unwrap();
    }
}
