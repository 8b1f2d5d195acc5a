//! End to end: the device activated with its worker thread, `MockSplitQueue` rings in real
//! guest memory playing the Linux driver, and real Unix sockets as hosts.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::control::{ControlMsg, BAD_ID, DEVICE_ADD, DEVICE_READY, PORT_NAME, PORT_OPEN, PORT_READY};
use super::testutil::{guest_memory, DriverQueue};
use super::*;
use crate::devices::virtio::{Interrupt, INT_USED_RING};

const WAIT: Duration = Duration::from_secs(5);

fn ctrl(id: u32, event: u16, value: u16) -> Vec<u8> {
    ControlMsg { id, event, value }.to_bytes().to_vec()
}

fn name_msg(id: u32, name: &str) -> Vec<u8> {
    [ctrl(id, PORT_NAME, 1), name.as_bytes().to_vec(), vec![0]].concat()
}

/// The guest: one driver queue per device queue, and the notifications.
struct Guest<'a> {
    queues: Vec<DriverQueue<'a>>,
    /// Control messages received and not yet looked at.
    inbox: VecDeque<Vec<u8>>,
    kicks: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
}

impl<'a> Guest<'a> {
    fn activate(console: &mut Console, mem: &'a GuestMemoryMmap) -> Self {
        let n = console.queue_max_sizes().len();
        let queues: Vec<_> = (0..n).map(|q| DriverQueue::new(mem, q as u16)).collect();
        let evts: Vec<_> = (0..n).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
        let kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let activation = Activation {
            mem: mem.clone(),
            queues: queues.iter().map(DriverQueue::queue).collect(),
            queue_evts: evts,
            interrupt: interrupt.clone(),
            acked_features: VIRTIO_F_VERSION_1 | F_MULTIPORT,
        };
        console.activate(activation).expect("activate");
        let mut guest = Self { queues, inbox: VecDeque::new(), kicks, interrupt };
        // Like Linux: the control receive queue is filled before DEVICE_READY.
        for _ in 0..8 {
            guest.queues[2].add_in(4096);
        }
        guest.kick(2);
        guest
    }

    fn kick(&self, q: usize) {
        self.kicks[q].write(1).unwrap();
    }

    /// Waits for `n` used entries of queue `q`.
    fn wait_used(&mut self, q: usize, n: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            got.extend(self.queues[q].used());
            assert!(Instant::now() < deadline, "queue {q}: {} of {n} used buffers after {WAIT:?}", got.len());
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    /// Checks that queue `q` returns nothing for a while.
    fn assert_quiet(&mut self, q: usize) {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(self.queues[q].used(), [], "queue {q} should be quiet");
        if q == 2 {
            assert_eq!(self.inbox, VecDeque::<Vec<u8>>::new(), "no control message waiting");
        }
    }

    fn send_control(&mut self, msg: &[u8]) {
        self.queues[3].add_out(msg);
        self.kick(3);
        self.wait_used(3, 1);
    }

    /// The next message on the control receive queue; its buffer goes back, as Linux does.
    fn recv_control(&mut self) -> Vec<u8> {
        if self.inbox.is_empty() {
            for (head, len) in self.wait_used(2, 1) {
                let msg = self.queues[2].read_slot(head, len);
                self.inbox.push_back(msg);
                self.queues[2].add_in(4096);
            }
            self.kick(2);
        }
        self.inbox.pop_front().expect("a control message")
    }

    /// DEVICE_READY, the adds, and PORT_READY for each port with its name back.
    fn handshake(&mut self, names: &[&str]) {
        self.send_control(&ctrl(BAD_ID, DEVICE_READY, 1));
        for id in 1..=names.len() as u32 {
            assert_eq!(self.recv_control(), ctrl(id, DEVICE_ADD, 1));
        }
        for (id, name) in (1..).zip(names) {
            self.send_control(&ctrl(id, PORT_READY, 1));
            assert_eq!(self.recv_control(), name_msg(id, name));
        }
    }

    /// Guest receive buffers for port id `id`.
    fn post_rx(&mut self, id: usize, count: usize) {
        let q = 4 + 2 * (id - 1);
        for _ in 0..count {
            self.queues[q].add_in(4096);
        }
        self.kick(q);
    }

    /// The next bytes the guest receives on port `id`.
    fn recv(&mut self, id: usize) -> Vec<u8> {
        let q = 4 + 2 * (id - 1);
        let used = self.wait_used(q, 1);
        let bytes = used.iter().flat_map(|&(head, len)| self.queues[q].read_slot(head, len)).collect();
        self.post_rx(id, used.len());
        bytes
    }

    /// A guest write on port `id`.
    fn send(&mut self, id: usize, data: &[u8]) {
        let q = 5 + 2 * (id - 1);
        let head = self.queues[q].add_out(data);
        self.kick(q);
        assert_eq!(self.wait_used(q, 1), [(head, 0)]);
    }
}

fn console(names: &[&str]) -> (Console, tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<_> = names.iter().map(|n| (n.to_string(), dir.path().join(format!("{n}.sock")))).collect();
    let paths = ports.iter().map(|(_, p)| p.clone()).collect();
    (Console::new(&ports).expect("console"), dir, paths)
}

fn host(path: &PathBuf) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("host read");
    buf
}

#[test]
fn handshake_names_the_ports_and_reports_hosts() {
    let (mut dev, _dir, paths) = console(&["agent.0", "agent.1"]);
    // A host that connected before the guest booted waits in the listen backlog.
    let _early = host(&paths[1]);
    let mem = guest_memory();
    let mut g = Guest::activate(&mut dev, &mem);
    g.send_control(&ctrl(BAD_ID, DEVICE_READY, 1));
    assert_eq!(g.recv_control(), ctrl(1, DEVICE_ADD, 1));
    assert_eq!(g.recv_control(), ctrl(2, DEVICE_ADD, 1));
    g.send_control(&ctrl(1, PORT_READY, 1));
    assert_eq!(g.recv_control(), name_msg(1, "agent.0"));
    g.assert_quiet(2);
    g.send_control(&ctrl(2, PORT_READY, 1));
    assert_eq!(g.recv_control(), name_msg(2, "agent.1"));
    assert_eq!(g.recv_control(), ctrl(2, PORT_OPEN, 1), "the early host");
    let _late = host(&paths[0]);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
    assert_ne!(g.interrupt.status() & INT_USED_RING, 0);
    let m = dev.metrics();
    assert_eq!((m.ports[0].host_connects.get(), m.ports[1].host_connects.get()), (1, 1));
    assert_eq!((m.control_from_guest.get(), m.control_to_guest.get(), m.control_invalid.get()), (3, 6, 0));
}

#[test]
fn data_flows_both_ways_and_a_host_disconnect_sends_port_open_0() {
    let (mut dev, _dir, paths) = console(&["agent.0"]);
    let mem = guest_memory();
    let mut g = Guest::activate(&mut dev, &mem);
    g.handshake(&["agent.0"]);
    let mut h = host(&paths[0]);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
    // Host bytes wait (in the socket) until a guest process opens the port.
    h.write_all(b"early").unwrap();
    g.post_rx(1, 4);
    g.assert_quiet(4);
    g.send_control(&ctrl(1, PORT_OPEN, 1));
    assert_eq!(g.recv(1), b"early");
    h.write_all(b"ping").unwrap();
    assert_eq!(g.recv(1), b"ping");
    g.send(1, b"pong");
    assert_eq!(read_n(&mut h, 4), b"pong");
    // What the host sent before leaving still arrives, then the driver hears it left.
    h.write_all(b"bye").unwrap();
    drop(h);
    assert_eq!(g.recv(1), b"bye");
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 0));
    let m = dev.metrics();
    let p = &m.ports[0];
    assert_eq!((p.bytes_to_guest.get(), p.bytes_to_host.get(), p.host_disconnects.get()), (12, 4, 1));
    assert_eq!(p.guest_opens.get(), 1);
    // The next host is a new connection for the guest.
    let mut h2 = host(&paths[0]);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
    g.send(1, b"again");
    assert_eq!(read_n(&mut h2, 5), b"again");
}

#[test]
fn a_host_that_leaves_while_the_guest_has_no_buffers_is_drained_first() {
    let (mut dev, _dir, paths) = console(&["agent.0"]);
    let mem = guest_memory();
    let mut g = Guest::activate(&mut dev, &mem);
    g.handshake(&["agent.0"]);
    g.send_control(&ctrl(1, PORT_OPEN, 1));
    let mut h = host(&paths[0]);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
    h.write_all(b"last words").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(h);
    g.assert_quiet(2);
    g.post_rx(1, 1);
    assert_eq!(g.recv(1), b"last words");
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 0));
}

#[test]
fn a_host_that_leaves_a_closed_port_is_dropped_at_once() {
    let (mut dev, _dir, paths) = console(&["agent.0"]);
    let mem = guest_memory();
    let mut g = Guest::activate(&mut dev, &mem);
    g.handshake(&["agent.0"]);
    let mut h = host(&paths[0]);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
    h.write_all(b"unread").unwrap();
    drop(h);
    // As QEMU: nobody in the guest reads the port, so the connection ends now.
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 0));
    g.post_rx(1, 1);
    g.send_control(&ctrl(1, PORT_OPEN, 1));
    g.assert_quiet(4);
}

#[test]
fn a_second_host_waits_until_the_first_leaves() {
    let (mut dev, _dir, paths) = console(&["agent.0"]);
    let mem = guest_memory();
    let mut g = Guest::activate(&mut dev, &mem);
    g.handshake(&["agent.0"]);
    g.send_control(&ctrl(1, PORT_OPEN, 1));
    g.post_rx(1, 4);
    let mut a = host(&paths[0]);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
    let mut b = host(&paths[0]);
    b.write_all(b"from b").unwrap();
    a.write_all(b"from a").unwrap();
    assert_eq!(g.recv(1), b"from a");
    g.assert_quiet(4);
    g.assert_quiet(2);
    drop(a);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 0));
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
    assert_eq!(g.recv(1), b"from b");
    g.send(1, b"to b");
    assert_eq!(read_n(&mut b, 4), b"to b");
}

#[test]
fn guest_writes_without_a_host_are_dropped_and_counted() {
    let (mut dev, _dir, _paths) = console(&["agent.0"]);
    let mem = guest_memory();
    let mut g = Guest::activate(&mut dev, &mem);
    g.handshake(&["agent.0"]);
    g.send(1, b"lost");
    // Port 0 has no backend either.
    let head = g.queues[1].add_out(b"console");
    g.kick(1);
    assert_eq!(g.wait_used(1, 1), [(head, 0)]);
    let m = dev.metrics();
    assert_eq!((m.ports[0].dropped_bytes.get(), m.port0_dropped_bytes.get()), (4, 7));
}

#[test]
fn malicious_control_messages_do_not_stop_the_device() {
    let (mut dev, _dir, paths) = console(&["agent.0"]);
    let mem = guest_memory();
    let mut g = Guest::activate(&mut dev, &mem);
    g.send_control(&[1, 0, 0]);
    g.send_control(&ctrl(1, PORT_READY, 1));
    g.handshake(&["agent.0"]);
    // A device-only event, an unknown one, port 0, a port beyond the last, a bad value.
    let bad = [ctrl(1, DEVICE_ADD, 1), ctrl(1, 77, 1), ctrl(0, PORT_OPEN, 1), ctrl(2, PORT_OPEN, 1)];
    for msg in bad.into_iter().chain([ctrl(1, PORT_OPEN, 9)]) {
        g.send_control(&msg);
    }
    // A device-writable buffer on the control transmit queue, and a loop.
    g.queues[3].add_raw(&[(0x20_0000, 8, true)]);
    g.queues[3].store(12, 0x20_0000, 8, virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16, 13);
    g.queues[3].store(13, 0x20_0000, 8, virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16, 12);
    g.queues[3].publish(12);
    g.kick(3);
    g.wait_used(3, 2);
    g.assert_quiet(2);
    let m = dev.metrics();
    assert_eq!((m.control_invalid.get(), m.bad_chains.get()), (7, 2));
    // Still serving.
    let _h = host(&paths[0]);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
}

#[test]
fn a_driver_reset_keeps_the_host_for_the_next_driver() {
    let (mut dev, _dir, paths) = console(&["agent.0"]);
    let mut h = host(&paths[0]);
    {
        let mem = guest_memory();
        let mut g = Guest::activate(&mut dev, &mem);
        g.handshake(&["agent.0"]);
        assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1));
        dev.reset();
    }
    let mem = guest_memory();
    let mut g = Guest::activate(&mut dev, &mem);
    g.handshake(&["agent.0"]);
    assert_eq!(g.recv_control(), ctrl(1, PORT_OPEN, 1), "the new driver hears of the same host");
    g.send(1, b"rebooted");
    assert_eq!(read_n(&mut h, 8), b"rebooted");
    assert_eq!(dev.metrics().activations.get(), 2);
    assert_eq!(dev.metrics().ports[0].host_connects.get(), 1);
}

#[test]
fn config_space_features_and_queues() {
    let (mut dev, _dir, _paths) = console(&["a", "b", "c"]);
    assert_eq!(dev.device_type(), 3);
    assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | F_MULTIPORT);
    assert_eq!(dev.queue_max_sizes().len(), 2 * (3 + 1) + 2);
    let mut config = [0xffu8; 16];
    dev.read_config(0, &mut config);
    assert_eq!(config, [0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "max_nr_ports = 3 named + port 0");
    let mut word = [0xffu8; 4];
    dev.read_config(4, &mut word);
    assert_eq!(u32::from_le_bytes(word), 4);
    dev.read_config(u64::MAX, &mut word);
    assert_eq!(word, [0; 4]);
    dev.write_config(4, &[9, 9, 9, 9]);
    dev.read_config(4, &mut word);
    assert_eq!(u32::from_le_bytes(word), 4, "read-only");
}

#[test]
fn activation_needs_multiport_and_the_right_queues() {
    let (mut dev, _dir, _paths) = console(&["agent.0"]);
    let mem = guest_memory();
    let queues: Vec<_> = (0..6).map(|q| DriverQueue::new(&mem, q)).collect();
    let activation = |features, n: usize| Activation {
        mem: mem.clone(),
        queues: queues.iter().take(n).map(DriverQueue::queue).collect(),
        queue_evts: (0..n).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect(),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        acked_features: features,
    };
    assert!(matches!(dev.activate(activation(VIRTIO_F_VERSION_1, 6)), Err(ActivateError::BadQueues { .. })));
    let too_few = dev.activate(activation(VIRTIO_F_VERSION_1 | F_MULTIPORT, 2));
    assert!(matches!(too_few, Err(ActivateError::BadQueues { .. })));
    dev.activate(activation(VIRTIO_F_VERSION_1 | F_MULTIPORT, 6)).expect("valid activation");
}

#[test]
fn constructor_validates_names_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let port = |name: &str, file: &str| (name.to_owned(), dir.path().join(file));
    let err = |ports: &[(String, PathBuf)]| Console::new(ports).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(&[]).contains("at least one"));
    let many: Vec<_> = (0..17).map(|i| port(&format!("p{i}"), &format!("{i}.sock"))).collect();
    assert!(err(&many).contains("17 ports"));
    assert!(Console::new(&many[..16]).is_ok(), "16 ports are fine");
    for bad in ["", "a/b", "with space", "tab\t", "caf\u{e9}", &"x".repeat(65)] {
        let msg = err(&[port(bad, "bad.sock")]);
        assert!(msg.contains(&format!("{bad:?}")), "{msg} names {bad:?}");
    }
    assert!(Console::new(&[port(&"x".repeat(64), "ok.sock")]).is_ok());
    assert!(err(&[port("a", "1.sock"), port("a", "2.sock")]).contains("\"a\" is used twice"));
    assert!(err(&[port("a", "1.sock"), port("b", "1.sock")]).contains("used by two ports"));
    std::fs::write(dir.path().join("taken"), b"").unwrap();
    let e = Console::new(&[port("a", "1.sock"), port("agent.9", "taken")]).err().expect("taken path");
    assert!(e.to_string().contains("agent.9"));
    assert!(std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("not a socket")));
    assert!(!dir.path().join("1.sock").exists(), "the first port's socket went away with the error");
}
