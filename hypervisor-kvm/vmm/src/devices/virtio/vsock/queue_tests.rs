use std::collections::VecDeque;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::vsock::packet::{HOST_CID, OP_REQUEST, OP_RESPONSE, TYPE_STREAM};

const CID: u64 = 3;
const MEM_SIZE: usize = 0x10_0000;

#[derive(Default)]
struct FakeBackend {
    sent: Vec<(Header, Op, Vec<u8>)>,
    rejected: Vec<(Header, PacketError)>,
    to_guest: VecDeque<(Header, Vec<u8>)>,
    /// Claims pending rx but has nothing (a stream that turned out empty).
    phantom: bool,
}

impl VsockBackend for FakeBackend {
    fn guest_cid(&self) -> u64 {
        CID
    }
    fn send_pkt(&mut self, hdr: &Header, op: Op, payload: &[u8]) {
        self.sent.push((*hdr, op, payload.to_vec()));
    }
    fn reject_pkt(&mut self, hdr: &Header, err: &PacketError) {
        self.rejected.push((*hdr, err.clone()));
    }
    fn has_pending_rx(&self) -> bool {
        self.phantom || !self.to_guest.is_empty()
    }
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let (hdr, data) = self.to_guest.pop_front()?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Some((hdr, n))
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn handler() -> (QueueHandler, Arc<VsockMetrics>) {
    let m = Arc::new(VsockMetrics::default());
    (QueueHandler::new(m.clone()), m)
}

/// Adds one chain of (address, length, device-writable) descriptors at table index `start`.
fn add_chain(q: &MockSplitQueue<GuestMemoryMmap>, start: u16, descs: &[(u64, u32, bool)]) {
    let raw: Vec<RawDescriptor> = (0u16..)
        .zip(descs)
        .map(|(i, &(addr, len, writable))| {
            let mut flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
            if usize::from(i) + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, start + i + 1))
        })
        .collect();
    q.add_desc_chains(&raw, start).unwrap();
}

fn used(q: &MockSplitQueue<GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = q.used().idx().load();
    (0..n).map(|i| q.used().ring().ref_at(usize::from(i)).unwrap().load()).map(|e| (e.id(), e.len())).collect()
}

fn guest_hdr(op: u16, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 1000,
        dst_port: 52,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

#[test]
fn tx_header_and_payload_may_be_split_anywhere() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mq.create_queue().unwrap();
    let hdr = guest_hdr(OP_RW, 10).to_bytes();
    mem.write_slice(&hdr[..20], GuestAddress(0x1000)).unwrap();
    mem.write_slice(&hdr[20..], GuestAddress(0x2000)).unwrap();
    mem.write_slice(b"0123", GuestAddress(0x3000)).unwrap();
    mem.write_slice(b"456789", GuestAddress(0x4000)).unwrap();
    add_chain(&mq, 0, &[(0x1000, 20, false), (0x2000, 24, false), (0x3000, 4, false), (0x4000, 6, false)]);
    let (mut h, m) = handler();
    let mut be = FakeBackend::default();
    let p = h.process_tx(&mem, &mut q, &mut be);
    assert_eq!(p, Processed { used: 1, notify: true, more: false });
    assert_eq!(be.sent.len(), 1);
    assert_eq!(be.sent[0].0, guest_hdr(OP_RW, 10));
    assert_eq!((be.sent[0].1, be.sent[0].2.as_slice()), (Op::Rw, &b"0123456789"[..]));
    assert_eq!(used(&mq), vec![(0, 0)]);
    assert_eq!(VsockMetrics::get(&m.tx_bytes), 10);
    // Nothing more: nothing used, no interrupt.
    assert_eq!(h.process_tx(&mem, &mut q, &mut be), Processed::default());
}

#[test]
fn tx_malformed_chains_are_returned_and_never_trusted() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mq.create_queue().unwrap();
    // 1: shorter than a header.
    add_chain(&mq, 0, &[(0x1000, 43, false)]);
    // 2: len beyond the chain.
    mem.write_slice(&guest_hdr(OP_RW, 100).to_bytes(), GuestAddress(0x2000)).unwrap();
    add_chain(&mq, 1, &[(0x2000, 44 + 99, false)]);
    // 3: a descriptor outside guest memory.
    add_chain(&mq, 2, &[(0x2000, 44, false), (MEM_SIZE as u64 - 8, 4096, false)]);
    // 4: only device-writable descriptors (wrong direction).
    add_chain(&mq, 4, &[(0x2000, 4096, true)]);
    // 5: len over the packet limit on a chain that really is that long.
    mem.write_slice(&guest_hdr(OP_RW, 0x8_0000).to_bytes(), GuestAddress(0x8000)).unwrap();
    add_chain(&mq, 5, &[(0x8000, 0x8_0000 + 44, false)]);
    let (mut h, m) = handler();
    let mut be = FakeBackend::default();
    let p = h.process_tx(&mem, &mut q, &mut be);
    assert_eq!(p.used, 5, "every chain goes back to the guest");
    assert!(be.sent.is_empty());
    assert_eq!(
        be.rejected.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        vec![PacketError::LenBeyondChain { len: 100, avail: 99 }, PacketError::LenTooLarge(0x8_0000)]
    );
    assert_eq!(used(&mq).iter().map(|u| u.1).collect::<Vec<_>>(), vec![0; 5]);
    assert_eq!(VsockMetrics::get(&m.bad_tx_chains), 3);
    assert_eq!(VsockMetrics::get(&m.bad_packets), 2);
}

#[test]
fn tx_descriptor_loops_and_bad_heads_end() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mq.create_queue().unwrap();
    mem.write_slice(&guest_hdr(OP_REQUEST, 0).to_bytes(), GuestAddress(0x1000)).unwrap();
    // A descriptor whose next is itself.
    let looped = SplitDescriptor::new(0x1000, 44, VRING_DESC_F_NEXT as u16, 0);
    mq.add_desc_chains(&[RawDescriptor::from(looped)], 0).unwrap();
    // An avail entry naming a descriptor beyond the table.
    let avail_idx = mq.avail().idx().load();
    mq.avail().ring().ref_at(usize::from(avail_idx)).unwrap().store(200);
    mq.avail().idx().store(avail_idx + 1);
    let (mut h, m) = handler();
    let mut be = FakeBackend::default();
    let p = h.process_tx(&mem, &mut q, &mut be);
    // The loop is cut at the queue size: its first header is read, the rest ignored.
    assert_eq!(be.sent.len(), 1);
    assert_eq!(p.used, 1, "the bad head cannot be put in the used ring");
    assert_eq!(VsockMetrics::get(&m.bad_tx_chains), 1);
}

#[test]
fn tx_avail_index_far_ahead_is_refused() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mq.create_queue().unwrap();
    mq.avail().idx().store(1000);
    let (mut h, _) = handler();
    let mut be = FakeBackend::default();
    assert_eq!(h.process_tx(&mem, &mut q, &mut be), Processed::default());
}

#[test]
fn rx_fills_header_and_payload_within_the_chain() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mq.create_queue().unwrap();
    // Linux 6.1 layout: a header buffer and a data buffer.
    add_chain(&mq, 0, &[(0x1000, 44, true), (0x2000, 8, true)]);
    let mut be = FakeBackend::default();
    let to_guest = Header { src_cid: HOST_CID, dst_cid: CID, op: OP_RW, len: 12, ..Header::default() };
    be.to_guest.push_back((to_guest, b"hello, guest".to_vec()));
    let (mut h, m) = handler();
    let p = h.process_rx(&mem, &mut q, &mut be);
    assert_eq!(p, Processed { used: 1, notify: true, more: false });
    assert_eq!(used(&mq), vec![(0, 52)]);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(0x1000)).unwrap();
    let got = Header::from_bytes(&raw);
    assert_eq!(got.len, 8, "len is what fit");
    let mut data = [0u8; 8];
    mem.read_slice(&mut data, GuestAddress(0x2000)).unwrap();
    assert_eq!(&data, b"hello, g");
    assert_eq!(VsockMetrics::get(&m.rx_bytes), 8);
}

#[test]
fn rx_bad_chains_are_returned_and_the_packet_waits() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mq.create_queue().unwrap();
    add_chain(&mq, 0, &[(0x1000, 43, true)]); // too short
    add_chain(&mq, 1, &[(0x1000, 4096, false)]); // read-only: no writable bytes
    add_chain(&mq, 2, &[(MEM_SIZE as u64 - 16, 64, true)]); // outside memory
    let mut be = FakeBackend::default();
    let rst = Header { op: OP_RST, ..Header::default() };
    be.to_guest.push_back((rst, Vec::new()));
    let (mut h, m) = handler();
    let p = h.process_rx(&mem, &mut q, &mut be);
    assert_eq!(p.used, 3);
    assert_eq!(used(&mq), vec![(0, 0), (1, 0), (2, 0)]);
    assert_eq!(be.to_guest.len(), 1, "the packet was not lost");
    assert_eq!(VsockMetrics::get(&m.bad_rx_chains), 3);
    add_chain(&mq, 3, &[(0x1000, 44, true)]);
    let p = h.process_rx(&mem, &mut q, &mut be);
    assert_eq!(p.used, 1);
    assert!(be.to_guest.is_empty());
    assert_eq!(used(&mq)[3], (3, 44));
    assert_eq!(VsockMetrics::get(&m.resets_sent), 1);
}

#[test]
fn rx_keeps_the_buffer_when_nothing_comes() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mq.create_queue().unwrap();
    add_chain(&mq, 0, &[(0x1000, 4096, true)]);
    let mut be = FakeBackend { phantom: true, ..FakeBackend::default() };
    let (mut h, _) = handler();
    assert_eq!(h.process_rx(&mem, &mut q, &mut be), Processed::default());
    assert!(used(&mq).is_empty());
    be.phantom = false;
    be.to_guest.push_back((Header { op: OP_RESPONSE, ..Header::default() }, Vec::new()));
    assert_eq!(h.process_rx(&mem, &mut q, &mut be).used, 1);
    assert_eq!(used(&mq), vec![(0, 44)]);
}

#[test]
fn rx_header_only_chain_does_not_stall_data() {
    let mem = memory();
    let mq = MockSplitQueue::new(&mem, 16);
    let mut q: Queue = mq.create_queue().unwrap();
    add_chain(&mq, 0, &[(0x1000, 44, true)]);
    // Claims pending data, which needs payload room this chain lacks.
    let mut be = FakeBackend { phantom: true, ..FakeBackend::default() };
    let (mut h, m) = handler();
    assert_eq!(h.process_rx(&mem, &mut q, &mut be).used, 1);
    assert_eq!(used(&mq), vec![(0, 0)]);
    assert_eq!(VsockMetrics::get(&m.bad_rx_chains), 1);
}

