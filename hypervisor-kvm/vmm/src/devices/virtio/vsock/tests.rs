//! End to end, in process: the device with its worker thread, a guest driver on guest
//! memory on one side, real Unix sockets on the other.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::connection::BUF_ALLOC;
use super::metrics::VsockMetrics;
use super::muxer::{Limits, FIRST_LOCAL_PORT};
use super::packet::*;
use super::test_guest::{Guest, MEM_SIZE, WAIT};
use super::*;

const CID: u64 = 3;

struct Rig {
    dir: tempfile::TempDir,
    dev: Vsock,
    guest: Guest,
}

impl Rig {
    fn new(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut dev = Vsock::new(CID, &dir.path().join("v.sock")).unwrap().with_limits(limits);
        let (mut guest, activation) = Guest::new(CID);
        dev.activate(activation).unwrap();
        guest.fill_rx();
        Self { dir, dev, guest }
    }

    fn host_connect(&self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(self.dev.uds_path()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        s
    }

    fn port_listener(&self, port: u32) -> UnixListener {
        UnixListener::bind(self.dir.path().join(format!("v.sock_{port}"))).unwrap()
    }

    fn metric(&self, f: impl Fn(&VsockMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        VsockMetrics::get(f(&self.dev.metrics()))
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8];
    while s.read(&mut b).expect("a line") == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// The stream ends without more data (EOF, or a reset because we left data unread).
fn assert_closed(s: &mut UnixStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "unexpected data {rest:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
    }
}

/// Host CONNECT to guest port 1234, guest accepts; returns the host stream and local port.
fn establish(rig: &mut Rig, port: u32, guest_buf: u32) -> (UnixStream, u32) {
    let mut host = rig.host_connect(port);
    let (req, _) = rig.guest.recv();
    assert_eq!((req.op, req.src_cid, req.dst_cid, req.dst_port, req.type_), (OP_REQUEST, HOST_CID, CID, port, TYPE_STREAM));
    assert!(req.src_port >= FIRST_LOCAL_PORT);
    let resp = rig.guest.hdr(OP_RESPONSE, port, req.src_port, guest_buf, 0);
    rig.guest.send(resp, &[]);
    assert_eq!(read_line(&mut host), format!("OK {}", req.src_port));
    (host, req.src_port)
}

#[test]
fn config_space_and_constructor_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    for bad in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        assert!(matches!(Vsock::new(bad, &path), Err(VsockError::InvalidCid(_))), "{bad}");
    }
    let dev = Vsock::new(0x1_0203, &path).unwrap();
    assert_eq!((dev.device_type(), dev.queue_max_sizes()), (19, &[256u16, 256, 256][..]));
    let mut b = [0xffu8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 0x1_0203);
    let mut b = [0xffu8; 4];
    dev.read_config(6, &mut b);
    assert_eq!(b, [0, 0, 0, 0], "out of range reads as 0");
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
    drop(dev);
    assert!(!path.exists(), "the socket is removed with the device");
    // A stale socket is replaced; a regular file is not touched.
    let stale = UnixListener::bind(&path).unwrap();
    let dev = Vsock::new(3, &path).unwrap();
    drop((dev, stale));
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(matches!(Vsock::new(3, &path), Err(VsockError::NotASocket(_))));
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
}

#[test]
fn host_initiated_connection_end_to_end() {
    let mut rig = Rig::new(Limits::default());
    let (mut host, local) = establish(&mut rig, 1234, 64 * 1024);

    host.write_all(b"hello guest").unwrap();
    let (h, data) = rig.guest.recv();
    assert_eq!((h.op, h.src_port, h.dst_port, h.buf_alloc), (OP_RW, local, 1234, BUF_ALLOC));
    assert_eq!(data, b"hello guest");

    let rw = rig.guest.hdr(OP_RW, 1234, local, 64 * 1024, data.len() as u32);
    rig.guest.send(rw, b"hello host");
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");
    assert!(rig.guest.interrupt.status() & crate::devices::virtio::INT_USED_RING != 0);

    // Host half-close: the guest sees SHUTDOWN(SEND) and can still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (h, _) = rig.guest.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    rig.guest.send(rig.guest.hdr(OP_RW, 1234, local, 64 * 1024, 11), b"still here");
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    // The guest closes: the host reads EOF and the guest gets the final RST.
    let mut shut = rig.guest.hdr(OP_SHUTDOWN, 1234, local, 64 * 1024, 11);
    shut.flags = SHUTDOWN_BOTH;
    rig.guest.send(shut, &[]);
    assert_closed(&mut host);
    assert_eq!(rig.guest.recv().0.op, OP_RST);
    rig.guest.expect_quiet();
}

#[test]
fn bulk_data_respects_credit_both_ways() {
    let mut rig = Rig::new(Limits::default());
    // Not a multiple of the 4 KiB rx buffers, so that the last packet before the credit
    // runs out must be cut short.
    const GUEST_BUF: u32 = 10_000;
    let (host, local) = establish(&mut rig, 1234, GUEST_BUF);

    // Host to guest: 200 KiB through a 16 KiB guest buffer; the guest frees it as it goes.
    let payload: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let writer = {
        let mut h = host.try_clone().unwrap();
        let p = payload.clone();
        std::thread::spawn(move || h.write_all(&p).unwrap())
    };
    let (mut received, mut fwd_cnt) = (Vec::<u8>::new(), 0u32);
    while received.len() < payload.len() {
        let (h, data) = rig.guest.recv();
        match h.op {
            OP_RW => {
                received.extend_from_slice(&data);
                assert!(received.len() as u32 - fwd_cnt <= GUEST_BUF, "sent beyond the guest's credit");
                if received.len() as u32 - fwd_cnt < GUEST_BUF - 1024 {
                    continue;
                }
                // Nearly full: the guest application is slow, whatever comes now must still
                // fit the credit.
                while let Some((h, data)) = rig.guest.try_recv(Duration::from_millis(30)) {
                    match h.op {
                        OP_RW => received.extend_from_slice(&data),
                        OP_CREDIT_REQUEST => {}
                        op => panic!("unexpected op {op}"),
                    }
                    assert!(received.len() as u32 - fwd_cnt <= GUEST_BUF, "sent beyond the guest's credit");
                }
            }
            OP_CREDIT_REQUEST => {}
            op => panic!("unexpected op {op}"),
        }
        fwd_cnt = received.len() as u32;
        rig.guest.send(rig.guest.hdr(OP_CREDIT_UPDATE, 1234, local, GUEST_BUF, fwd_cnt), &[]);
    }
    writer.join().unwrap();
    assert!(received == payload, "host to guest data corrupted");

    // Guest to host: 1 MiB in 4 KiB packets, never beyond the device's advertised credit.
    let total = 1024 * 1024usize;
    let reader = {
        let mut h = host.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; total];
            h.read_exact(&mut buf).unwrap();
            buf
        })
    };
    let (mut sent, mut peer_fwd, mut peer_alloc) = (0usize, 0u32, BUF_ALLOC);
    let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 256) as u8).collect();
    while sent < total {
        let credit = peer_alloc - (sent as u32 - peer_fwd);
        if credit < chunk.len() as u32 {
            let (h, _) = rig.guest.recv();
            match h.op {
                OP_CREDIT_UPDATE => (peer_fwd, peer_alloc) = (h.fwd_cnt, h.buf_alloc),
                // The device used up our credit exactly in the first half and asks for more.
                OP_CREDIT_REQUEST => {
                    rig.guest.send(rig.guest.hdr(OP_CREDIT_UPDATE, 1234, local, GUEST_BUF, fwd_cnt), &[])
                }
                op => panic!("unexpected op {op}"),
            }
            continue;
        }
        rig.guest.send(rig.guest.hdr(OP_RW, 1234, local, GUEST_BUF, fwd_cnt), &chunk);
        sent += chunk.len();
    }
    let got = reader.join().unwrap();
    assert!(got.chunks(4096).all(|c| c == chunk.as_slice()), "guest to host data corrupted");
    assert_eq!(rig.metric(|m| &m.credit_violations), 0);
}

#[test]
fn guest_refusal_silence_and_bad_connect_lines() {
    let limits = Limits { request_timeout: Duration::from_millis(300), ..Limits::default() };
    let mut rig = Rig::new(limits);
    // Nobody listens in the guest: it answers RST, the host stream is closed without OK.
    let mut host = rig.host_connect(80);
    let (req, _) = rig.guest.recv();
    rig.guest.send(rig.guest.hdr(OP_RST, 80, req.src_port, 0, 0), &[]);
    assert_closed(&mut host);

    // No answer at all: closed after the timeout, and the guest is reset.
    let mut host = rig.host_connect(81);
    let (req, _) = rig.guest.recv();
    assert_eq!(req.op, OP_REQUEST);
    assert_closed(&mut host);
    let (rst, _) = rig.guest.recv();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, req.src_port, 81));
    assert_eq!(rig.metric(|m| &m.request_timeouts), 1);

    // Malformed and overlong lines: closed, the guest hears nothing.
    for line in [&b"CONNECT\n"[..], b"CONNECT abc\n", &[b'7'; 40]] {
        let mut s = UnixStream::connect(rig.dev.uds_path()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(line).unwrap();
        assert_closed(&mut s);
    }
    rig.guest.expect_quiet();
    assert_eq!(rig.metric(|m| &m.handshake_errors), 3);
}

#[test]
fn guest_initiated_connections() {
    let mut rig = Rig::new(Limits::default());
    let listener = rig.port_listener(52);
    rig.guest.send(rig.guest.hdr(OP_REQUEST, 5000, 52, 64 * 1024, 0), &[]);
    let (h, _) = rig.guest.recv();
    assert_eq!((h.op, h.src_cid, h.src_port, h.dst_port), (OP_RESPONSE, HOST_CID, 52, 5000));
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(WAIT)).unwrap();
    rig.guest.send(rig.guest.hdr(OP_RW, 5000, 52, 64 * 1024, 0), b"from guest");
    let mut got = [0u8; 10];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from guest");
    host.write_all(b"from host").unwrap();
    let (h, data) = rig.guest.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"from host"[..]));
    // The guest resets: the host sees the end, nothing is answered.
    rig.guest.send(rig.guest.hdr(OP_RST, 5000, 52, 0, 0), &[]);
    assert_closed(&mut host);
    rig.guest.expect_quiet();

    // No socket for port 53: RST.
    rig.guest.send(rig.guest.hdr(OP_REQUEST, 5001, 53, 64 * 1024, 0), &[]);
    let (h, _) = rig.guest.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 53, 5001));
    assert_eq!(rig.metric(|m| &m.guest_connects_refused), 1);
}

#[test]
fn malicious_guest_packets() {
    let limits = Limits { max_connections: 8, ..Limits::default() };
    let mut rig = Rig::new(limits);
    let _listener = rig.port_listener(52);
    let g = &mut rig.guest;

    // len beyond the chain: the header claims 100 bytes, the chain holds 10.
    let mut lying = g.hdr(OP_RW, 6000, 52, 0, 0);
    lying.len = 100;
    g.send_raw(lying, &[0u8; 10]);
    assert_eq!(g.recv().0.op, OP_RST);
    // Spoofed source CID: dropped silently. Wrong type: RST.
    let mut spoofed = g.hdr(OP_REQUEST, 6000, 52, 0, 0);
    spoofed.src_cid = 77;
    g.send(spoofed, &[]);
    g.expect_quiet();
    let mut dgram = g.hdr(OP_REQUEST, 6000, 52, 0, 0);
    dgram.type_ = 2;
    g.send(dgram, &[]);
    assert_eq!(g.recv().0.op, OP_RST);
    // A chain shorter than a header, and one pointing outside guest memory.
    g.send_chain(&[(0x20_0000, 20, false)]);
    g.send_chain(&[(MEM_SIZE as u64 - 4, 44, false)]);
    g.expect_quiet();

    // A flood of requests: 8 connections, every other one reset.
    for port in 0..100 {
        g.send(g.hdr(OP_REQUEST, 7000 + port, 52, 4096, 0), &[]);
    }
    let mut ops = Vec::new();
    while let Some((h, _)) = g.try_recv(Duration::from_millis(200)) {
        ops.push(h.op);
    }
    assert_eq!(ops.iter().filter(|&&op| op == OP_RESPONSE).count(), 8);
    assert_eq!(ops.iter().filter(|&&op| op == OP_RST).count(), 92);
    assert_eq!(rig.metric(|m| &m.connection_limit_hits), 92);

    // The device still works once the guest frees its connections.
    for port in 0..8 {
        rig.guest.send(rig.guest.hdr(OP_RST, 7000 + port, 52, 0, 0), &[]);
    }
    let (_host, _) = establish(&mut rig, 99, 4096);
    assert_eq!(rig.metric(|m| &m.bad_tx_chains), 2);
}

#[test]
fn reset_closes_host_streams_and_reactivation_works() {
    let mut rig = Rig::new(Limits::default());
    let (mut host, _) = establish(&mut rig, 1234, 4096);
    rig.dev.reset();
    assert_closed(&mut host);
    let (mut guest, activation) = Guest::new(CID);
    rig.dev.activate(activation).unwrap();
    guest.fill_rx();
    rig.guest = guest;
    let (_host, _) = establish(&mut rig, 1234, 4096);
}
