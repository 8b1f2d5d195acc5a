use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::*;
use crate::devices::virtio::vsock::connection::BUF_ALLOC;
use crate::devices::virtio::vsock::packet::{
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM,
};

const CID: u64 = 3;

struct Setup {
    dir: tempfile::TempDir,
    muxer: Muxer,
    metrics: Arc<VsockMetrics>,
}

impl Setup {
    fn new(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = Muxer::new(CID, &path, listener, limits, metrics.clone());
        Self { dir, muxer, metrics }
    }

    fn uds(&self) -> PathBuf {
        self.dir.path().join("vsock.sock")
    }

    fn port_listener(&self, port: u32) -> UnixListener {
        UnixListener::bind(self.dir.path().join(format!("vsock.sock_{port}"))).unwrap()
    }

    fn next(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut buf = vec![0u8; 4096];
        let (h, n) = self.muxer.recv_pkt(&mut buf)?;
        buf.truncate(n);
        Some((h, buf))
    }

    fn token(&self, key: ConnKey) -> u64 {
        self.muxer.conns[&key].token
    }
}

fn from_guest(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

fn send(m: &mut Muxer, op: u16, src_port: u32, dst_port: u32, payload: &[u8]) {
    let hdr = Header { len: payload.len() as u32, ..from_guest(op, src_port, dst_port) };
    let op = hdr.validate(CID, payload.len()).expect("valid test packet");
    m.send_pkt(&hdr, op, payload);
}

#[test]
fn guest_request_to_a_closed_port_is_reset() {
    let mut s = Setup::new(Limits::default());
    send(&mut s.muxer, OP_REQUEST, 1000, 99, &[]);
    let (h, _) = s.next().unwrap();
    assert_eq!((h.op, h.src_cid, h.src_port, h.dst_cid, h.dst_port), (OP_RST, HOST_CID, 99, CID, 1000));
    assert!(s.next().is_none());
    assert_eq!(VsockMetrics::get(&s.metrics.guest_connects_refused), 1);
    // Data for a connection that does not exist: RST; an RST for one: nothing.
    send(&mut s.muxer, OP_RW, 1000, 99, b"x");
    assert_eq!(s.next().unwrap().0.op, OP_RST);
    send(&mut s.muxer, OP_RST, 1000, 99, &[]);
    assert!(s.next().is_none());
}

#[test]
fn guest_connection_to_a_port_socket_relays_both_ways() {
    let mut s = Setup::new(Limits::default());
    let l = s.port_listener(52);
    send(&mut s.muxer, OP_REQUEST, 1000, 52, &[]);
    let (h, _) = s.next().unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port, h.buf_alloc), (OP_RESPONSE, 52, 1000, BUF_ALLOC));
    let (mut host, _) = l.accept().unwrap();
    send(&mut s.muxer, OP_RW, 1000, 52, b"ping");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");

    host.write_all(b"pong").unwrap();
    let key = ConnKey { local_port: 52, peer_port: 1000 };
    s.muxer.handle_event(s.token(key), EventSet::IN);
    let (h, data) = s.next().unwrap();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"pong"[..]));

    // The host closes: the guest is told, then closes too and gets the final RST.
    drop(host);
    s.muxer.handle_event(s.token(key), EventSet::IN);
    let (h, _) = s.next().unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    let shut = Header { flags: SHUTDOWN_BOTH, ..from_guest(OP_SHUTDOWN, 1000, 52) };
    s.muxer.send_pkt(&shut, Op::Shutdown, &[]);
    assert_eq!(s.next().unwrap().0.op, OP_RST);
    assert_eq!(s.muxer.connection_count(), 0);
}

#[test]
fn guest_request_flood_is_bounded() {
    let limits = Limits { max_connections: 4, ..Limits::default() };
    let mut s = Setup::new(limits);
    let _l = s.port_listener(52);
    for port in 0..10 {
        send(&mut s.muxer, OP_REQUEST, 2000 + port, 52, &[]);
    }
    let ops: Vec<u16> = std::iter::from_fn(|| s.next()).map(|(h, _)| h.op).collect();
    assert_eq!(ops.iter().filter(|&&op| op == OP_RESPONSE).count(), 4);
    assert_eq!(ops.iter().filter(|&&op| op == OP_RST).count(), 6);
    assert_eq!(s.muxer.connection_count(), 4);
    assert_eq!(VsockMetrics::get(&s.metrics.connection_limit_hits), 6);
}

#[test]
fn resets_for_no_connection_are_bounded() {
    let mut s = Setup::new(Limits::default());
    for port in 0..(MAX_PENDING_RST as u32 + 100) {
        send(&mut s.muxer, OP_RW, port, 7, b"junk");
    }
    assert_eq!(std::iter::from_fn(|| s.next()).count(), MAX_PENDING_RST);
    assert_eq!(VsockMetrics::get(&s.metrics.resets_dropped), 100);
}

#[test]
fn invalid_packets_reset_their_connection_or_are_dropped() {
    let mut s = Setup::new(Limits::default());
    let _l = s.port_listener(52);
    send(&mut s.muxer, OP_REQUEST, 1000, 52, &[]);
    s.next().unwrap();
    // A spoofed source is dropped without an answer.
    let spoofed = Header { src_cid: 9, ..from_guest(OP_RW, 1000, 52) };
    s.muxer.reject_pkt(&spoofed, &PacketError::BadSrcCid(9));
    assert!(s.next().is_none());
    assert_eq!(s.muxer.connection_count(), 1);
    // A bad type on the connection resets it.
    let bad = Header { type_: 2, ..from_guest(OP_RW, 1000, 52) };
    s.muxer.reject_pkt(&bad, &PacketError::BadType(2));
    assert_eq!(s.next().unwrap().0.op, OP_RST);
    assert_eq!(s.muxer.connection_count(), 0);
    // To another CID: RST as if from that CID, so the guest's connect fails at once.
    let elsewhere = Header { dst_cid: 7, ..from_guest(OP_REQUEST, 1000, 52) };
    s.muxer.reject_pkt(&elsewhere, &PacketError::BadDstCid(7));
    let (h, _) = s.next().unwrap();
    assert_eq!((h.op, h.src_cid, h.dst_cid), (OP_RST, 7, CID));
}

fn handshake(s: &mut Setup, line: &[u8]) -> (UnixStream, u64) {
    let mut client = UnixStream::connect(s.uds()).unwrap();
    client.write_all(line).unwrap();
    s.muxer.accept();
    let token = *s.muxer.handshakes.keys().max().expect("accepted");
    s.muxer.handle_event(token, EventSet::IN);
    (client, token)
}

#[test]
fn host_connect_handshake() {
    let mut s = Setup::new(Limits::default());
    let (mut client, _) = handshake(&mut s, b"CONNECT 52\nearly data");
    assert!(s.muxer.handshakes.is_empty());
    let (h, _) = s.next().unwrap();
    assert_eq!((h.op, h.src_cid, h.src_port, h.dst_cid, h.dst_port), (OP_REQUEST, HOST_CID, FIRST_LOCAL_PORT, CID, 52));
    send(&mut s.muxer, OP_RESPONSE, 52, FIRST_LOCAL_PORT, &[]);
    let mut ok = [0u8; 14];
    client.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");
    // What followed the line is connection data.
    let key = ConnKey { local_port: FIRST_LOCAL_PORT, peer_port: 52 };
    s.muxer.handle_event(s.token(key), EventSet::IN);
    let (h, data) = s.next().unwrap();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"early data"[..]));
    // A second client gets the next local port.
    let (_c2, _) = handshake(&mut s, b"CONNECT 52\n");
    assert_eq!(s.next().unwrap().0.src_port, FIRST_LOCAL_PORT + 1);
    assert_eq!(VsockMetrics::get(&s.metrics.host_connects), 2);
}

#[test]
fn bad_handshakes_close_the_stream() {
    for line in [&b"CONNECT 52 53\n"[..], b"HELLO\n", b"CONNECT 99999999999999999999999999999999999\n"] {
        let mut s = Setup::new(Limits::default());
        let (mut client, _) = handshake(&mut s, line);
        assert!(s.muxer.handshakes.is_empty() && s.muxer.conns.is_empty(), "{line:?}");
        assert!(s.next().is_none());
        // EOF, or a reset when the line was cut short and bytes were left unread.
        let mut rest = Vec::new();
        match client.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty()),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
        assert_eq!(VsockMetrics::get(&s.metrics.handshake_errors), 1);
    }
    // An incomplete line waits, until its deadline.
    let mut s = Setup::new(Limits::default());
    let (_client, _) = handshake(&mut s, b"CONN");
    assert_eq!(s.muxer.handshakes.len(), 1);
    let deadline = s.muxer.next_deadline().unwrap();
    s.muxer.sweep(deadline);
    assert!(s.muxer.handshakes.is_empty());
}

#[test]
fn unanswered_request_times_out_with_rst() {
    let limits = Limits { request_timeout: Duration::from_millis(10), ..Limits::default() };
    let mut s = Setup::new(limits);
    let (mut client, _) = handshake(&mut s, b"CONNECT 52\n");
    assert_eq!(s.next().unwrap().0.op, OP_REQUEST);
    s.muxer.sweep(Instant::now() + Duration::from_millis(20));
    assert_eq!(s.next().unwrap().0.op, OP_RST);
    assert_eq!(s.muxer.connection_count(), 0);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed without OK");
    assert_eq!(VsockMetrics::get(&s.metrics.request_timeouts), 1);
}

#[derive(Default)]
struct Recorder(Vec<(&'static str, u64, EventSet)>, HashMap<RawFd, u64>);

impl Registry for Recorder {
    fn add(&mut self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        self.1.insert(fd, token);
        self.0.push(("add", token, events));
        Ok(())
    }
    fn modify(&mut self, _fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        self.0.push(("modify", token, events));
        Ok(())
    }
    fn remove(&mut self, fd: RawFd) -> std::io::Result<()> {
        let token = self.1.remove(&fd).unwrap_or(u64::MAX);
        self.0.push(("remove", token, EventSet::empty()));
        Ok(())
    }
}

#[test]
fn sync_registers_what_each_stream_waits_for() {
    let mut s = Setup::new(Limits::default());
    let mut r = Recorder::default();
    s.muxer.sync(&mut r);
    assert_eq!(r.0, vec![("add", LISTENER_TOKEN, EventSet::IN)]);
    let _client = UnixStream::connect(s.uds()).unwrap();
    s.muxer.accept();
    s.muxer.sync(&mut r);
    assert_eq!(r.0[1], ("add", FIRST_TOKEN, EventSet::IN));
    let _l = s.port_listener(52);
    send(&mut s.muxer, OP_REQUEST, 1000, 52, &[]);
    s.muxer.sync(&mut r);
    assert_eq!(r.0[2], ("add", FIRST_TOKEN + 1, EventSet::IN));
    s.muxer.sync(&mut r);
    assert_eq!(r.0.len(), 3, "nothing changed");
    let key = ConnKey { local_port: 52, peer_port: 1000 };
    s.muxer.handle_event(s.token(key), EventSet::IN);
    s.muxer.sync(&mut r);
    assert_eq!(r.0[3], ("modify", FIRST_TOKEN + 1, EventSet::empty()), "readable: wait for rx");
    send(&mut s.muxer, OP_CREDIT_UPDATE, 1000, 52, &[]);
    assert_eq!(s.muxer.connection_count(), 1);
}
