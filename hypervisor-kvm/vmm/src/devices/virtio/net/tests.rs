//! The device model: config space and features without a tap, and a real tap end to end
//! (through the mmio transport) in a private network namespace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::queue::tests::{eth_frame, memory, with_header, Driver, BUF, QSIZE};
use super::queue::RX_HEADER;
use super::tap::testutil::{in_private_netns, link_up, PacketSocket};
use super::*;
use crate::devices::virtio::mmio::{MmioTransport, QUEUE_NOTIFY};
use crate::devices::virtio::Interrupt;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const ETHERTYPE: u16 = 0x88b5;

#[test]
fn config_space_has_mac_link_up_and_mtu() {
    let space = config_space(MAC);
    let mut mac = [0u8; 6];
    read_space(&space, 0, &mut mac);
    assert_eq!(mac, MAC);
    let mut status = [0u8; 2];
    read_space(&space, 6, &mut status);
    assert_eq!(u16::from_le_bytes(status), 1, "VIRTIO_NET_S_LINK_UP");
    let mut mtu = [0u8; 2];
    read_space(&space, 10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1500);
    // Straddling the end, past it, and at offsets that would overflow.
    let mut tail = [0xffu8; 4];
    read_space(&space, 10, &mut tail);
    assert_eq!(tail, [0xdc, 0x05, 0, 0]);
    let mut far = [0xffu8; 4];
    read_space(&space, u64::MAX - 1, &mut far);
    assert_eq!(far, [0; 4]);
}

#[test]
fn features_are_the_promised_ones() {
    let bits: Vec<u32> = (0..64).filter(|b| FEATURES & (1 << b) != 0).collect();
    // MTU, MAC, STATUS, RING_EVENT_IDX, VERSION_1: no offloads, no mergeable buffers.
    assert_eq!(bits, vec![3, 5, 16, 29, 32]);
}

#[test]
fn macs_are_checked_or_made_up() {
    assert_eq!(choose_mac(Some(MAC)).unwrap(), MAC);
    for bad in [[0u8; 6], [0x01, 0, 0x5e, 0, 0, 1], [0xff; 6]] {
        let err = choose_mac(Some(bad)).unwrap_err();
        assert!(err.to_string().starts_with(&format!("MAC {}", format_mac(&bad))), "{err}");
    }
    let a = choose_mac(None).unwrap();
    let b = choose_mac(None).unwrap();
    assert_eq!(a[0] & 0x03, 0x02, "unicast, locally administered: {}", format_mac(&a));
    assert_ne!(a, b, "random");
}

fn write_reg(t: &mut MmioTransport, offset: u64, value: u64) {
    t.write(offset, &(value as u32).to_le_bytes());
}

/// Does what the Linux driver does up to DRIVER_OK, with queues `drivers` (rx, tx).
fn bring_up(t: &mut MmioTransport, drivers: &[&Driver<'_>]) {
    write_reg(t, 0x70, 1); // ACKNOWLEDGE
    write_reg(t, 0x70, 3); // DRIVER
    write_reg(t, 0x24, 0);
    write_reg(t, 0x20, FEATURES & 0xffff_ffff);
    write_reg(t, 0x24, 1);
    write_reg(t, 0x20, FEATURES >> 32);
    write_reg(t, 0x70, 11); // FEATURES_OK
    let mut status = [0u8; 4];
    t.read(0x70, &mut status);
    assert_eq!(u32::from_le_bytes(status), 11, "the transport accepted the features");
    for (i, drv) in drivers.iter().enumerate() {
        write_reg(t, 0x30, i as u64);
        write_reg(t, 0x38, u64::from(QSIZE));
        for (reg, addr) in [0x80, 0x90, 0xa0].into_iter().zip(drv.addrs()) {
            write_reg(t, reg, addr);
            write_reg(t, reg + 4, addr >> 32);
        }
        write_reg(t, 0x44, 1);
    }
    write_reg(t, 0x70, 15); // DRIVER_OK
}

/// Best effort: keeps the kernel's IPv6 chatter off the interface.
fn quiet_ipv6(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
}

#[test]
fn real_tap_carries_frames_both_ways() {
    in_private_netns(|| {
        let net = Net::new("vnt%d", Some(MAC)).expect("creating the tap");
        let name = net.tap_name().to_owned();
        let metrics = net.metrics();
        quiet_ipv6(&name);
        let sock = PacketSocket::bind(link_up(&name), ETHERTYPE);

        let mem = memory();
        let mut rx = Driver::at(&mem, 0);
        let mut tx = Driver::at(&mem, 0x1_0000);
        // Buffers posted before DRIVER_OK, as Linux does; room for some IPv6 chatter too.
        for i in 0..8u64 {
            rx.add(&[(BUF + 0x1_0000 + i * 0x1000, 1526, true)]);
        }
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let mut t = MmioTransport::new(Box::new(net), mem.clone(), interrupt).unwrap();
        bring_up(&mut t, &[&rx, &tx]);
        assert!(t.is_active(), "DRIVER_OK activated the device");

        // Guest to host.
        let mut frame = eth_frame(60);
        frame[6..12].copy_from_slice(&MAC);
        mem.write_slice(&with_header([0; 12], &frame), GuestAddress(BUF)).unwrap();
        tx.add(&[(BUF, 72, false)]);
        t.write(QUEUE_NOTIFY, &1u32.to_le_bytes());
        let got = sock.recv(Duration::from_secs(5)).expect("the guest's frame came out of the tap");
        assert_eq!(got, frame);

        // Host to guest.
        let mut reply = eth_frame(80);
        reply[..6].copy_from_slice(&MAC);
        sock.send(&reply);
        let expected = with_header(RX_HEADER, &reply);
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = loop {
            let hit = rx.used().into_iter().find(|&(id, len)| {
                let mut buf = vec![0u8; len as usize];
                mem.read_slice(&mut buf, GuestAddress(BUF + 0x1_0000 + u64::from(id) * 0x1000)).unwrap();
                buf == expected
            });
            if hit.is_some() || Instant::now() > deadline {
                break hit;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(found.is_some(), "the host's frame reached a guest buffer; used: {:?}", rx.used());
        let deadline = Instant::now() + Duration::from_secs(5);
        while irq.read().is_err() {
            assert!(Instant::now() < deadline, "the guest was never interrupted");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(NetMetrics::get(&metrics.tx_frames), 1);
        assert!(NetMetrics::get(&metrics.rx_frames) >= 1);

        write_reg(&mut t, 0x70, 0); // reset: the worker stops
        assert!(!t.is_active());
    });
}

#[test]
fn activation_needs_both_queues_ready() {
    in_private_netns(|| {
        let mut net = Net::new("vnt%d", None).expect("creating the tap");
        let mem = memory();
        let rx = Driver::at(&mem, 0);
        let mut not_ready = rx.queue(false);
        not_ready.set_ready(false);
        let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
        let activation = |queues: Vec<Queue>, evts: Vec<EventFd>| Activation {
            mem: mem.clone(),
            queues,
            queue_evts: evts,
            interrupt: Arc::new(Interrupt::new(evt())),
            acked_features: FEATURES,
        };
        let err = net.activate(activation(vec![rx.queue(false)], vec![evt()])).unwrap_err();
        assert!(err.to_string().contains("1 queues, expected 2"), "{err}");
        let err = net.activate(activation(vec![rx.queue(false), not_ready], vec![evt(), evt()])).unwrap_err();
        assert!(err.to_string().contains("ready"), "{err}");
        net.activate(activation(vec![rx.queue(false), rx.queue(false)], vec![evt(), evt()])).expect("activates");
        net.reset();
    });
}
