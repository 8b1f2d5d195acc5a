//! Unit tests of the queue functions, with `MockSplitQueue` rings in real guest memory.

use std::io::{self, ErrorKind};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::console::control::{ControlMsg, DEVICE_READY, PORT_OPEN, PORT_READY};
use crate::devices::virtio::console::testutil::{guest_memory, DriverQueue, MEM_SIZE, QSIZE};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// Free guest memory for large buffers, above the test slots.
const FREE: u64 = 0x20_0000;

/// A host that takes at most `room` bytes, then would block.
struct Host {
    got: Vec<u8>,
    room: usize,
    fail: bool,
}

impl Host {
    fn new(room: usize) -> Self {
        Self { got: Vec::new(), room, fail: false }
    }
}

impl io::Write for Host {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.fail {
            return Err(ErrorKind::BrokenPipe.into());
        }
        if self.room == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.got.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A host sending `data`, then would block (or end, with `eof`).
struct Source {
    data: Vec<u8>,
    eof: bool,
    reads: usize,
}

impl io::Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.data.is_empty() {
            return if self.eof { Ok(0) } else { Err(ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data.drain(..n);
        Ok(n)
    }
}

fn metrics() -> ConsoleMetrics {
    ConsoleMetrics::new(2)
}

fn tx(m: &ConsoleMetrics) -> TxCounters<'_> {
    TxCounters { sent: &m.ports[0].bytes_to_host, dropped: &m.ports[0].dropped_bytes }
}

#[test]
fn transmit_passes_a_two_buffer_chain_in_order() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    mem.write_slice(b"hello ", GuestAddress(FREE)).unwrap();
    mem.write_slice(b"world", GuestAddress(FREE + 0x100)).unwrap();
    let head = d.add_raw(&[(FREE, 6, false), (FREE + 0x100, 5, false)]);
    let m = metrics();
    let mut host = Host::new(usize::MAX);
    let out = transmit(&mem, &mut q, &mut None, Some(&mut host), &tx(&m), &m, &mut Scratch::default());
    assert!(out.served.signal && !out.blocked && out.error.is_none());
    assert_eq!(host.got, b"hello world");
    assert_eq!(d.used(), [(head, 0)]);
    assert_eq!(m.ports[0].bytes_to_host.get(), 11);
}

#[test]
fn transmit_waits_for_a_full_host_and_resumes_where_it_stopped() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    let a = d.add_out(b"0123456789");
    let b = d.add_out(b"abc");
    let m = metrics();
    let mut pending = None;
    let mut host = Host::new(4);
    let mut scratch = Scratch::default();
    let out = transmit(&mem, &mut q, &mut pending, Some(&mut host), &tx(&m), &m, &mut scratch);
    assert!(out.blocked && pending.is_some());
    assert_eq!(d.used(), [], "the chain is not complete until the host took all of it");
    host.room = 100;
    let out = transmit(&mem, &mut q, &mut pending, Some(&mut host), &tx(&m), &m, &mut scratch);
    assert!(!out.blocked && pending.is_none());
    assert_eq!(host.got, b"0123456789abc");
    assert_eq!(d.used(), [(a, 0), (b, 0)]);
}

#[test]
fn transmit_without_a_host_drops_and_counts() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    let head = d.add_out(b"nobody listens");
    let m = metrics();
    let out = transmit::<Host>(&mem, &mut q, &mut None, None, &tx(&m), &m, &mut Scratch::default());
    assert!(out.served.signal);
    assert_eq!(d.used(), [(head, 0)]);
    assert_eq!(m.ports[0].dropped_bytes.get(), 14);
}

#[test]
fn transmit_reports_a_broken_host_and_the_rest_is_dropped_after() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    let head = d.add_out(b"0123456789");
    let m = metrics();
    let mut pending = None;
    let mut host = Host::new(3);
    let mut scratch = Scratch::default();
    transmit(&mem, &mut q, &mut pending, Some(&mut host), &tx(&m), &m, &mut scratch);
    host.fail = true;
    let out = transmit(&mem, &mut q, &mut pending, Some(&mut host), &tx(&m), &m, &mut scratch);
    assert!(out.error.is_some());
    transmit::<Host>(&mem, &mut q, &mut pending, None, &tx(&m), &m, &mut scratch);
    assert_eq!(d.used(), [(head, 0)]);
    assert_eq!((m.ports[0].bytes_to_host.get(), m.ports[0].dropped_bytes.get()), (3, 7));
}

#[test]
fn a_huge_chain_streams_through_the_bounded_scratch_buffer() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    // Three descriptors covering 3 MiB of guest memory, one of them repeated.
    let len = 1 << 20;
    mem.write_slice(&[7u8; 16], GuestAddress(FREE)).unwrap();
    let head = d.add_raw(&[(FREE, len, false), (FREE, len, false), (0, len, false)]);
    let m = metrics();
    let (mut pending, mut host, mut scratch) = (None, Host::new(usize::MAX), Scratch::default());
    let mut calls = 0;
    loop {
        calls += 1;
        let out = transmit(&mem, &mut q, &mut pending, Some(&mut host), &tx(&m), &m, &mut scratch);
        if !out.served.more {
            break;
        }
        assert!(calls < 10);
    }
    assert_eq!(calls, 3, "1 MiB per call");
    assert_eq!(host.got.len(), 3 << 20);
    assert_eq!(&host.got[..16], &[7u8; 16]);
    assert_eq!(&host.got[1 << 20..(1 << 20) + 16], &[7u8; 16]);
    assert_eq!(d.used(), [(head, 0)]);
}

#[test]
fn malicious_transmit_chains_are_completed_empty_and_counted() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    let mut expected = vec![
        // A device-writable buffer in a transmit chain.
        d.add_raw(&[(FREE, 4, false), (FREE, 4, true)]),
        // Outside guest memory, at its end and where the address overflows.
        d.add_raw(&[(MEM_SIZE as u64 - 2, 4, false)]),
        d.add_raw(&[(u64::MAX - 1, 16, false)]),
        d.add_raw(&[(0, u32::MAX, false)]),
    ];
    // A loop: descriptor 8 -> 9 -> 8.
    d.store(8, FREE, 4, NEXT, 9);
    d.store(9, FREE, 4, NEXT, 8);
    d.publish(8);
    expected.push(8);
    // A next index beyond the queue.
    d.store(10, FREE, 4, NEXT, QSIZE + 3);
    d.publish(10);
    expected.push(10);
    // An indirect table of 300 descriptors: more than the device takes.
    let table = FREE + 0x10000;
    for i in 0..300u16 {
        let desc = virtio_queue::desc::split::Descriptor::new(FREE, 1, if i < 299 { NEXT } else { 0 }, i + 1);
        mem.write_obj(virtio_queue::desc::RawDescriptor::from(desc), GuestAddress(table + 16 * u64::from(i))).unwrap();
    }
    d.store(11, table, 300 * 16, VRING_DESC_F_INDIRECT as u16, 0);
    d.publish(11);
    expected.push(11);
    // A good one after all of them still goes through.
    mem.write_slice(b"ok", GuestAddress(FREE)).unwrap();
    d.store(12, FREE, 2, 0, 0);
    d.publish(12);
    let m = metrics();
    let mut host = Host::new(usize::MAX);
    transmit(&mem, &mut q, &mut None, Some(&mut host), &tx(&m), &m, &mut Scratch::default());
    expected.push(12);
    let used: Vec<u16> = d.used().into_iter().map(|(h, len)| { assert_eq!(len, 0); h }).collect();
    assert_eq!(used, expected);
    assert_eq!(m.bad_chains.get(), 7);
    assert_eq!(host.got, b"ok");
}

#[test]
fn a_head_index_beyond_the_queue_is_rejected_without_a_panic() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    d.publish(QSIZE + 5);
    let m = metrics();
    let out = transmit::<Host>(&mem, &mut q, &mut None, None, &tx(&m), &m, &mut Scratch::default());
    assert!(!out.served.signal, "such a head cannot go to the used ring");
    assert_eq!(m.bad_chains.get(), 1);
    assert_eq!(d.used(), []);
}

#[test]
fn receive_fills_buffers_and_stops_reading_without_them() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    let m = metrics();
    let mut scratch = Scratch::default();
    let mut host = Source { data: b"0123456789".to_vec(), eof: false, reads: 0 };
    let (signal, end) = receive(&mem, &mut q, &mut host, &m.ports[0].bytes_to_guest, &m, &mut scratch);
    assert!(!signal && matches!(end, RxEnd::NoBuffers));
    assert_eq!(host.reads, 0, "no buffer, no read: the host is held back");
    // A chain of two buffers of 4 and 2 bytes, then one of 16.
    let a = d.add_raw(&[(FREE, 4, true), (FREE + 0x100, 2, true)]);
    let b = d.add_in(16);
    let (signal, end) = receive(&mem, &mut q, &mut host, &m.ports[0].bytes_to_guest, &m, &mut scratch);
    assert!(signal && matches!(end, RxEnd::NoBuffers));
    assert_eq!(d.used(), [(a, 6), (b, 4)]);
    let mut first = [0u8; 6];
    mem.read_slice(&mut first[..4], GuestAddress(FREE)).unwrap();
    mem.read_slice(&mut first[4..], GuestAddress(FREE + 0x100)).unwrap();
    assert_eq!(&first, b"012345");
    assert_eq!(d.read_slot(b, 4), b"6789");
    assert_eq!(m.ports[0].bytes_to_guest.get(), 10);
}

#[test]
fn receive_gives_back_the_buffer_when_the_host_has_nothing_or_ends() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    let m = metrics();
    let mut scratch = Scratch::default();
    let head = d.add_in(16);
    let mut host = Source { data: Vec::new(), eof: false, reads: 0 };
    let (_, end) = receive(&mem, &mut q, &mut host, &m.ports[0].bytes_to_guest, &m, &mut scratch);
    assert!(matches!(end, RxEnd::Drained));
    host.eof = true;
    let (_, end) = receive(&mem, &mut q, &mut host, &m.ports[0].bytes_to_guest, &m, &mut scratch);
    assert!(matches!(end, RxEnd::Eof));
    assert_eq!(d.used(), [], "the buffer stays with the device");
    let mut next = Source { data: b"x".to_vec(), eof: false, reads: 0 };
    receive(&mem, &mut q, &mut next, &m.ports[0].bytes_to_guest, &m, &mut scratch);
    assert_eq!(d.used(), [(head, 1)], "the same buffer serves the next host");
}

#[test]
fn receive_reads_at_most_the_cap_per_chain() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    let m = metrics();
    let head = d.add_raw(&[(FREE, 1 << 20, true)]);
    let mut host = Source { data: vec![1; 100_000], eof: false, reads: 0 };
    receive(&mem, &mut q, &mut host, &m.ports[0].bytes_to_guest, &m, &mut Scratch::default());
    assert_eq!(d.used(), [(head, MAX_CHAIN_IO as u32)]);
    assert_eq!(host.data.len(), 100_000 - MAX_CHAIN_IO);
}

#[test]
fn malicious_receive_chains_are_completed_empty() {
    let mem = guest_memory();
    let mut d = DriverQueue::new(&mem, 0);
    let mut q = d.queue();
    let m = metrics();
    let readable = d.add_raw(&[(FREE, 16, false)]);
    let outside = d.add_raw(&[(MEM_SIZE as u64, 16, true)]);
    let empty = d.add_raw(&[(FREE, 0, true)]);
    let good = d.add_in(4);
    let mut host = Source { data: b"data".to_vec(), eof: false, reads: 0 };
    receive(&mem, &mut q, &mut host, &m.ports[0].bytes_to_guest, &m, &mut Scratch::default());
    assert_eq!(d.used(), [(readable, 0), (outside, 0), (empty, 0), (good, 4)]);
    assert_eq!(m.bad_chains.get(), 2);
    assert_eq!(host.reads, 1);
}

fn ctrl(id: u32, event: u16, value: u16) -> [u8; 8] {
    ControlMsg { id, event, value }.to_bytes()
}

#[test]
fn control_handshake_through_the_queues() {
    let mem = guest_memory();
    let (mut drx, mut dtx) = (DriverQueue::new(&mem, 2), DriverQueue::new(&mem, 3));
    let (mut rxq, mut txq) = (drx.queue(), dtx.queue());
    let mut state = ControlState::new(&["agent.0".to_owned()]);
    let m = ConsoleMetrics::new(1);
    let mut scratch = Scratch::default();
    // A buffer too small for DEVICE_ADD is handed back empty; the message waits.
    let small = drx.add_in(7);
    let big = drx.add_in(64);
    let name = drx.add_in(64);
    dtx.add_out(&ctrl(u32::MAX, DEVICE_READY, 1));
    // The header split over two buffers still parses.
    let port_ready = ctrl(1, PORT_READY, 1);
    let a = dtx.slot(5);
    mem.write_slice(&port_ready[..3], GuestAddress(a)).unwrap();
    mem.write_slice(&port_ready[3..], GuestAddress(a + 0x100)).unwrap();
    dtx.add_raw(&[(a, 3, false), (a + 0x100, 5, false)]);
    let out = receive_control(&mem, &mut txq, &mut rxq, &mut state, &m, &mut scratch);
    assert!(out.signal && !out.more);
    assert_eq!(dtx.used().len(), 2);
    assert_eq!(drx.used(), [(small, 0), (big, 8), (name, 16)]);
    assert_eq!(drx.read_slot(big, 8), ctrl(1, 1, 1));
    assert_eq!(drx.read_slot(name, 16), [&ctrl(1, 7, 1)[..], b"agent.0\0"].concat());
    assert_eq!(m.control_buffer_too_small.get(), 1);
    assert_eq!((m.control_from_guest.get(), m.control_to_guest.get()), (2, 2));
}

#[test]
fn malicious_control_messages_are_counted_and_skipped() {
    let mem = guest_memory();
    let (mut drx, mut dtx) = (DriverQueue::new(&mem, 2), DriverQueue::new(&mem, 3));
    let (mut rxq, mut txq) = (drx.queue(), dtx.queue());
    let mut state = ControlState::new(&["agent.0".to_owned()]);
    let m = ConsoleMetrics::new(1);
    dtx.add_out(&[1, 2, 3]);
    dtx.add_out(&ctrl(1, PORT_OPEN, 1));
    dtx.add_out(&ctrl(9, PORT_READY, 1));
    dtx.add_out(&ctrl(1, 200, 1));
    dtx.add_raw(&[(0, 8, true)]);
    // Trailing bytes after a valid header are ignored.
    dtx.add_out(&[&ctrl(u32::MAX, DEVICE_READY, 1)[..], &[0xff; 100]].concat());
    let add = drx.add_in(4096);
    receive_control(&mem, &mut txq, &mut rxq, &mut state, &m, &mut Scratch::default());
    assert_eq!(dtx.used().len(), 6, "every chain is returned");
    assert_eq!((m.control_invalid.get(), m.bad_chains.get(), m.control_from_guest.get()), (4, 1, 1));
    assert_eq!(drx.used(), [(add, 8)]);
}
