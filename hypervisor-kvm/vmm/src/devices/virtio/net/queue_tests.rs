//! Tx and rx through `MockSplitQueue` with real guest memory and [`FakeFrames`].

use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

pub(crate) use crate::devices::virtio::test_driver::{memory, Driver, BUF, MEM_SIZE, QSIZE};

fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// An Ethernet frame of `len` bytes (broadcast, EtherType 0x88b5, payload counting up).
pub(crate) fn eth_frame(len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

pub(crate) fn with_header(header: [u8; VNET_HDR_LEN], frame: &[u8]) -> Vec<u8> {
    let mut v = header.to_vec();
    v.extend_from_slice(frame);
    v
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    NetMetrics::get(c)
}

// ---- transmit ----

#[test]
fn tx_sends_header_and_frame_as_one_write() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let frame = eth_frame(60);
    mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(BUF)).unwrap();
    mem.write_slice(&frame, GuestAddress(BUF + 0x100)).unwrap();
    mem.write_slice(&with_header([0; 12], &frame), GuestAddress(BUF + 0x1000)).unwrap();
    let h0 = drv.add(&[(BUF, 12, false), (BUF + 0x100, 60, false)]);
    let h1 = drv.add(&[(BUF + 0x1000, 72, false)]);
    let mut q = drv.queue(false);
    let mut tap = FakeFrames::default();
    let metrics = NetMetrics::default();

    let progress = Tx::new().process(&mem, &mut q, &mut tap, &metrics);

    assert_eq!(progress, TxProgress { signal: true, more: false });
    assert_eq!(tap.from_guest, vec![with_header([0; 12], &frame); 2]);
    assert_eq!(drv.used(), vec![(u32::from(h0), 0), (u32::from(h1), 0)]);
    assert_eq!(get(&metrics.tx_frames), 2);
    assert_eq!(get(&metrics.tx_bytes), 120);
    assert_eq!(get(&metrics.tx_bad_chains), 0);
}

#[test]
fn tx_zeroes_a_header_asking_for_offloads() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let frame = eth_frame(60);
    // NEEDS_CSUM, GSO TCPv4, and junk in the other fields.
    let header = [1, 1, 0x36, 0, 0xa8, 5, 34, 0, 16, 0, 7, 7];
    mem.write_slice(&with_header(header, &frame), GuestAddress(BUF)).unwrap();
    drv.add(&[(BUF, 72, false)]);
    let mut tap = FakeFrames::default();
    let metrics = NetMetrics::default();

    Tx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(tap.from_guest, vec![with_header([0; 12], &frame)]);
    assert_eq!(get(&metrics.tx_bad_headers), 1);
}

#[test]
fn tx_drops_malformed_chains_and_completes_them() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let chains: Vec<Vec<(u64, u32, bool)>> = vec![
        vec![(BUF, 12, false)],                           // header only
        vec![(BUF, 12, false), (BUF, 13, false)],         // runt Ethernet frame
        vec![(BUF, 40_000, false), (BUF, 40_000, false)], // 80000 bytes
        vec![(BUF, u32::MAX, false)],                     // huge length
        vec![(BUF, 12, false), (BUF + 0x100, 60, true)],  // device-writable part
        vec![(MEM_SIZE as u64 - 10, 72, false)],          // runs out of memory
        vec![(0xdead_0000_0000, 72, false)],              // nowhere near memory
    ];
    let heads: Vec<u16> = chains.iter().map(|c| drv.add(c)).collect();
    let mut tap = FakeFrames::default();
    let metrics = NetMetrics::default();

    let progress = Tx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert!(progress.signal);
    assert!(tap.from_guest.is_empty(), "nothing reached the tap");
    let used: Vec<(u32, u32)> = heads.iter().map(|&h| (u32::from(h), 0)).collect();
    assert_eq!(drv.used(), used, "every chain was given back");
    assert_eq!(get(&metrics.tx_bad_chains), chains.len() as u64);
    assert_eq!(get(&metrics.tx_frames), 0);
}

#[test]
fn tx_survives_loops_and_bad_indirect_tables() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let next = VRING_DESC_F_NEXT;
    // 0 -> 1 -> 0 -> ...: the chain ends after a queue's worth of descriptors.
    drv.add_raw(0, &[raw(BUF, 0x4000, next, 1), raw(BUF, 0x4000, next, 0)]);
    // A descriptor naming itself as next.
    drv.add_raw(2, &[raw(BUF, 0x8000, next, 2)]);
    // A next index beyond the table.
    drv.add_raw(3, &[raw(BUF, 12, next, 200)]);
    // Indirect tables: outside memory, of a length that is not a multiple of 16, and
    // holding a nested indirect descriptor.
    drv.add_raw(4, &[raw(0xdead_0000_0000, 64, VRING_DESC_F_INDIRECT, 0)]);
    drv.add_raw(5, &[raw(BUF + 0x2000, 17, VRING_DESC_F_INDIRECT, 0)]);
    mem.write_obj(raw(BUF + 0x3000, 64, VRING_DESC_F_INDIRECT, 0), GuestAddress(BUF + 0x2100)).unwrap();
    drv.add_raw(6, &[raw(BUF + 0x2100, 16, VRING_DESC_F_INDIRECT, 0)]);
    let mut tap = FakeFrames::default();
    let metrics = NetMetrics::default();

    let progress = Tx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert!(!progress.more);
    assert_eq!(drv.used(), [0, 2, 3, 4, 5, 6].map(|h| (h, 0)), "every chain was given back");
    assert!(tap.from_guest.is_empty());
    assert_eq!(get(&metrics.tx_bad_chains), 6);
}

#[test]
fn tx_counts_tap_errors_and_goes_on() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    mem.write_slice(&with_header([0; 12], &eth_frame(60)), GuestAddress(BUF)).unwrap();
    drv.add(&[(BUF, 72, false)]);
    drv.add(&[(BUF, 72, false)]);
    let mut tap = FakeFrames { write_error: Some(io::ErrorKind::WouldBlock), ..Default::default() };
    let metrics = NetMetrics::default();

    Tx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(get(&metrics.tx_tap_errors), 2);
    assert_eq!(drv.used().len(), 2);
}

#[test]
fn tx_with_an_available_index_far_ahead_is_a_queue_error() {
    let mem = memory();
    let drv = Driver::new(&mem);
    drv.vq.avail().idx().store(QSIZE + 5);
    let mut tap = FakeFrames::default();
    let metrics = NetMetrics::default();

    let progress = Tx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(progress, TxProgress { signal: false, more: false });
    assert_eq!(get(&metrics.queue_errors), 1);
    assert!(drv.used().is_empty());
}

#[test]
fn tx_out_of_range_head_index_is_not_completed() {
    let mem = memory();
    let drv = Driver::new(&mem);
    drv.vq.avail().ring().ref_at(0).unwrap().store(1000);
    drv.vq.avail().idx().store(1);
    let mut tap = FakeFrames::default();
    let metrics = NetMetrics::default();

    Tx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(get(&metrics.tx_bad_chains), 1);
    assert_eq!(get(&metrics.queue_errors), 1, "add_used refused the index");
    assert!(drv.used().is_empty());
}

#[test]
fn tx_with_event_idx_signals_only_when_the_driver_asked() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    mem.write_slice(&with_header([0; 12], &eth_frame(60)), GuestAddress(BUF)).unwrap();
    drv.add(&[(BUF, 72, false)]);
    drv.set_used_event(5);
    let mut q = drv.queue(true);
    let mut tx = Tx::new();
    let mut tap = FakeFrames::default();
    let metrics = NetMetrics::default();

    assert!(!tx.process(&mem, &mut q, &mut tap, &metrics).signal, "used_event 5 not reached");

    drv.add(&[(BUF, 72, false)]);
    drv.set_used_event(1);
    assert!(tx.process(&mem, &mut q, &mut tap, &metrics).signal, "used_event 1 passed");
    assert_eq!(tap.from_guest.len(), 2);
}

// ---- receive ----

#[test]
fn rx_delivers_a_frame_with_a_clean_header() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let frame = eth_frame(60);
    let h0 = drv.add(&[(BUF, 1526, true)]);
    let h1 = drv.add(&[(BUF + 0x1000, 12, true), (BUF + 0x2000, 1514, true)]);
    let mut tap = FakeFrames::default();
    // DATA_VALID from the tap is dropped: GUEST_CSUM was not negotiated.
    tap.to_guest.push_back(with_header([2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &frame));
    tap.to_guest.push_back(with_header([0; 12], &frame));
    let metrics = NetMetrics::default();

    let progress = Rx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(progress, RxProgress { signal: true, stop: RxStop::TapDrained });
    assert_eq!(drv.used(), vec![(u32::from(h0), 72), (u32::from(h1), 72)]);
    let mut got = vec![0u8; 72];
    mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got, with_header(RX_HEADER, &frame));
    let mut hdr = [0u8; 12];
    mem.read_slice(&mut hdr, GuestAddress(BUF + 0x1000)).unwrap();
    assert_eq!(hdr, RX_HEADER);
    let mut body = vec![0u8; 60];
    mem.read_slice(&mut body, GuestAddress(BUF + 0x2000)).unwrap();
    assert_eq!(body, frame);
    assert_eq!(get(&metrics.rx_frames), 2);
    assert_eq!(get(&metrics.rx_bytes), 120);
}

#[test]
fn rx_keeps_the_frame_until_the_guest_adds_a_buffer() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let mut q = drv.queue(true);
    let mut rx = Rx::new();
    let mut tap = FakeFrames::default();
    tap.to_guest.push_back(with_header([0; 12], &eth_frame(100)));
    tap.to_guest.push_back(with_header([0; 12], &eth_frame(200)));
    let metrics = NetMetrics::default();

    let progress = rx.process(&mem, &mut q, &mut tap, &metrics);
    assert_eq!(progress, RxProgress { signal: false, stop: RxStop::NoBuffers });
    assert!(rx.has_pending());
    assert_eq!(tap.to_guest.len(), 1, "no frame read beyond the one kept");
    assert_eq!(get(&metrics.rx_no_buffers), 1);

    let head = drv.add(&[(BUF, 1526, true)]);
    let progress = rx.process(&mem, &mut q, &mut tap, &metrics);
    assert_eq!(progress.stop, RxStop::NoBuffers, "the second frame waits in turn");
    assert_eq!(drv.used(), vec![(u32::from(head), 112)]);

    drv.add(&[(BUF + 0x1000, 1526, true)]);
    let progress = rx.process(&mem, &mut q, &mut tap, &metrics);
    assert_eq!(progress.stop, RxStop::TapDrained);
    assert!(!rx.has_pending());
    assert_eq!(drv.used().len(), 2);
    assert_eq!(drv.used()[1].1, 212);
}

#[test]
fn rx_drops_a_frame_larger_than_the_buffer_and_keeps_the_buffer() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let head = drv.add(&[(BUF, 12, true), (BUF + 0x100, 100, true)]);
    let mut tap = FakeFrames::default();
    tap.to_guest.push_back(with_header([0; 12], &eth_frame(101)));
    tap.to_guest.push_back(with_header([0; 12], &eth_frame(100)));
    let metrics = NetMetrics::default();

    let progress = Rx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(progress.stop, RxStop::TapDrained);
    assert_eq!(get(&metrics.rx_frames_too_big), 1);
    assert_eq!(drv.used(), vec![(u32::from(head), 112)], "the same chain took the next frame");
}

#[test]
fn rx_completes_malformed_chains_empty_and_delivers_to_the_next() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let bad = [
        drv.add(&[(BUF, 12, false), (BUF + 0x100, 1514, true)]), // device-readable part
        drv.add(&[(BUF, 11, true)]),                             // smaller than a header
        drv.add(&[(MEM_SIZE as u64 - 100, 1526, true)]),         // runs out of memory
        drv.add(&[(0xdead_0000_0000, 1526, true)]),              // nowhere near memory
    ];
    let good = drv.add(&[(BUF + 0x1000, 1526, true)]);
    let mut tap = FakeFrames::default();
    tap.to_guest.push_back(with_header([0; 12], &eth_frame(60)));
    let metrics = NetMetrics::default();

    let progress = Rx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(progress.stop, RxStop::TapDrained);
    let mut expected: Vec<(u32, u32)> = bad.iter().map(|&h| (u32::from(h), 0)).collect();
    expected.push((u32::from(good), 72));
    assert_eq!(drv.used(), expected);
    assert_eq!(get(&metrics.rx_bad_chains), 4);
    assert_eq!(get(&metrics.rx_frames), 1);
}

#[test]
fn rx_drops_malformed_frames_from_the_tap() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.add(&[(BUF, 1526, true)]);
    let mut tap = FakeFrames::default();
    tap.to_guest.push_back(vec![0; 20]); // shorter than header + Ethernet header
    tap.to_guest.push_back(with_header([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &eth_frame(60))); // NEEDS_CSUM
    tap.to_guest.push_back(with_header([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &eth_frame(60))); // GSO
    let metrics = NetMetrics::default();

    let progress = Rx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(progress, RxProgress { signal: false, stop: RxStop::TapDrained });
    assert_eq!(get(&metrics.rx_bad_frames), 3);
    assert!(drv.used().is_empty());
}

#[test]
fn rx_gives_up_on_a_tap_that_keeps_failing() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.add(&[(BUF, 1526, true)]);
    let mut tap = FakeFrames { read_error: Some(io::ErrorKind::Other), ..Default::default() };
    let metrics = NetMetrics::default();

    let progress = Rx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(progress.stop, RxStop::TapFailed);
    assert_eq!(get(&metrics.rx_tap_errors), MAX_TAP_ERRORS as u64);
}

#[test]
fn rx_stops_after_its_budget() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.add(&[(BUF, 1526, true)]);
    let mut tap = FakeFrames::default();
    for _ in 0..BUDGET + 1 {
        tap.to_guest.push_back(vec![0; 20]);
    }
    let metrics = NetMetrics::default();

    let progress = Rx::new().process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(progress.stop, RxStop::Budget);
    assert_eq!(tap.to_guest.len(), 1);
}

#[test]
fn rx_with_a_broken_available_ring_waits_for_the_guest() {
    let mem = memory();
    let drv = Driver::new(&mem);
    drv.vq.avail().idx().store(QSIZE + 1);
    let mut tap = FakeFrames::default();
    tap.to_guest.push_back(with_header([0; 12], &eth_frame(60)));
    let metrics = NetMetrics::default();
    let mut rx = Rx::new();

    let progress = rx.process(&mem, &mut drv.queue(false), &mut tap, &metrics);

    assert_eq!(progress.stop, RxStop::NoBuffers);
    assert!(rx.has_pending());
    assert_eq!(get(&metrics.queue_errors), 1);
}
