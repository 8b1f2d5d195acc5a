//! A minimal virtio-vsock guest driver for the end-to-end tests: split virtqueues laid out
//! in guest memory (MockSplitQueue's layout overlaps its rings beyond a few entries), rx
//! buffers shaped like Linux 6.1's (a header buffer and a 4 KiB data buffer), and blocking
//! helpers with deadlines so a broken device fails a test instead of hanging it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use crate::devices::virtio::{Activation, Interrupt, VIRTIO_F_VERSION_1};

pub const QSIZE: u16 = 256;
pub const RX_BUFS: u16 = 32;
pub const RX_DATA: u32 = 4096;
const RX_BASE: u64 = 0x10_0000;
const TX_BASE: u64 = 0x20_0000;
pub const MEM_SIZE: usize = 0x40_0000;
pub const WAIT: Duration = Duration::from_secs(5);

/// One split virtqueue, from the driver's side.
pub struct Driver {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Driver {
    fn new(base: u64, size: u16) -> Self {
        let avail = base + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self { size, desc: base, avail, used, next_desc: 0, avail_idx: 0, used_seen: 0 }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Makes a chain of (address, length, device-writable) available; returns its head.
    fn post(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = self.desc + 16 * u64::from(idx);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(self.next_desc, GuestAddress(at + 14)).unwrap();
        }
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(self.avail_idx, GuestAddress(self.avail + 2), Ordering::Release).unwrap();
        head
    }

    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let idx: u16 = mem.load(GuestAddress(self.used + 2), Ordering::Acquire).unwrap();
        if idx == self.used_seen {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        Some((id as u16, len))
    }
}

/// The guest: memory, the three queues and their notify eventfds.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub cid: u64,
    rx: Driver,
    tx: Driver,
    ev: Driver,
    kicks: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
    rx_heads: HashMap<u16, u64>,
}

fn rx_buf(i: u16) -> u64 {
    RX_BASE + u64::from(i) * 0x2000
}

impl Guest {
    /// A guest with `cid` and the activation that hands its queues to the device.
    pub fn new(cid: u64) -> (Self, Activation) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rx, tx, ev) = (Driver::new(0, QSIZE), Driver::new(0x4000, QSIZE), Driver::new(0x8000, QSIZE));
        let kicks: Vec<EventFd> = (0..3).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let activation = Activation {
            mem: mem.clone(),
            queues: vec![rx.queue(), tx.queue(), ev.queue()],
            queue_evts: kicks.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: interrupt.clone(),
            acked_features: VIRTIO_F_VERSION_1,
        };
        let guest = Self { mem, cid, rx, tx, ev, kicks, interrupt, rx_heads: HashMap::new() };
        (guest, activation)
    }

    /// Posts every rx buffer and a few event buffers, as the Linux driver does at probe.
    pub fn fill_rx(&mut self) {
        for i in 0..RX_BUFS {
            self.post_rx(i);
        }
        for i in 0..4u64 {
            self.ev.post(&self.mem, &[(0x30_0000 + 64 * i, 8, true)]);
        }
        self.kicks[0].write(1).unwrap();
        self.kicks[2].write(1).unwrap();
    }

    fn post_rx(&mut self, i: u16) {
        let a = rx_buf(i);
        let head = self.rx.post(&self.mem, &[(a, HDR_LEN as u32, true), (a + 64, RX_DATA, true)]);
        self.rx_heads.insert(head, a);
    }

    /// Sends a raw tx chain and waits until the device has consumed it.
    pub fn send_chain(&mut self, descs: &[(u64, u32, bool)]) {
        self.tx.post(&self.mem, descs);
        self.kicks[1].write(1).unwrap();
        let deadline = Instant::now() + WAIT;
        while self.tx.take_used(&self.mem).is_none() {
            assert!(Instant::now() < deadline, "the device did not consume a tx chain");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends `hdr` (its len set from `payload`) in a header and a payload descriptor.
    pub fn send_raw(&mut self, hdr: Header, payload: &[u8]) {
        self.mem.write_slice(&hdr.to_bytes(), GuestAddress(TX_BASE)).unwrap();
        self.mem.write_slice(payload, GuestAddress(TX_BASE + 64)).unwrap();
        if payload.is_empty() {
            self.send_chain(&[(TX_BASE, HDR_LEN as u32, false)]);
        } else {
            self.send_chain(&[(TX_BASE, HDR_LEN as u32, false), (TX_BASE + 64, payload.len() as u32, false)]);
        }
    }

    /// A header from this guest to the host.
    pub fn hdr(&self, op: u16, src_port: u32, dst_port: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    pub fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        self.send_raw(hdr, payload);
    }

    /// The next packet for the guest within `wait`, its rx buffer posted again.
    pub fn try_recv(&mut self, wait: Duration) -> Option<(Header, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        let (head, len) = loop {
            if let Some(u) = self.rx.take_used(&self.mem) {
                break u;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let a = self.rx_heads.remove(&head).expect("the device used a head we posted");
        assert!(len as usize >= HDR_LEN, "rx used length {len} shorter than a header");
        let mut raw = [0u8; HDR_LEN];
        self.mem.read_slice(&mut raw, GuestAddress(a)).unwrap();
        let hdr = Header::from_bytes(&raw);
        let n = len as usize - HDR_LEN;
        assert_eq!(hdr.len as usize, n, "header len matches the used length");
        assert!(n <= RX_DATA as usize);
        let mut data = vec![0u8; n];
        self.mem.read_slice(&mut data, GuestAddress(a + 64)).unwrap();
        self.post_rx(((a - RX_BASE) / 0x2000) as u16);
        self.kicks[0].write(1).unwrap();
        Some((hdr, data))
    }

    pub fn recv(&mut self) -> (Header, Vec<u8>) {
        self.try_recv(WAIT).expect("a packet for the guest")
    }

    /// Nothing arrives within a short while.
    pub fn expect_quiet(&mut self) {
        if let Some((h, _)) = self.try_recv(Duration::from_millis(100)) {
            panic!("unexpected packet {h:?}");
        }
    }
}
