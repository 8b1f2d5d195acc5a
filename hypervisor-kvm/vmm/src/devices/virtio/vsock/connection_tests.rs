use std::cell::RefCell;
use std::io::{self, ErrorKind, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;
use crate::devices::virtio::vsock::packet::HOST_CID;

#[derive(Default)]
struct Inner {
    input: VecDeque<u8>,
    eof: bool,
    output: Vec<u8>,
    /// Bytes the stream still accepts before it would block.
    room: usize,
    write_error: Option<ErrorKind>,
    shut: bool,
}

/// A non-blocking in-memory stream; the test keeps a handle to the same state.
#[derive(Clone, Default)]
struct Fake(Rc<RefCell<Inner>>);

impl Fake {
    fn with_room(room: usize) -> Self {
        let f = Fake::default();
        f.0.borrow_mut().room = room;
        f
    }
    fn feed(&self, data: &[u8]) {
        self.0.borrow_mut().input.extend(data);
    }
    fn written(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.borrow_mut().output)
    }
}

impl Read for Fake {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if s.input.is_empty() {
            return if s.eof { Ok(0) } else { Err(ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(s.input.len());
        for (d, b) in buf.iter_mut().zip(s.input.drain(..n)) {
            *d = b;
        }
        Ok(n)
    }
}

impl Write for Fake {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if let Some(kind) = s.write_error {
            return Err(kind.into());
        }
        assert!(!s.shut, "write after shutdown");
        if s.room == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(s.room);
        s.room -= n;
        s.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConnStream for Fake {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.0.borrow_mut().shut = true;
        Ok(())
    }
}

const CID: u64 = 3;

fn from_guest(op: u16, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: 1024,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

fn next(c: &mut Connection<Fake>, buf: &mut [u8]) -> Option<(Header, usize)> {
    c.recv_pkt(buf).expect("recv_pkt")
}

fn established(stream: Fake, buf_alloc: u32) -> Connection<Fake> {
    let mut c = Connection::guest_initiated(stream, CID, &from_guest(OP_REQUEST, buf_alloc, 0));
    let (h, _) = next(&mut c, &mut [0; 64]).expect("response");
    assert_eq!(h.op, OP_RESPONSE);
    c
}

#[test]
fn guest_initiated_answers_response_then_forwards_data() {
    let s = Fake::with_room(1 << 20);
    let mut c = Connection::guest_initiated(s.clone(), CID, &from_guest(OP_REQUEST, 4096, 0));
    assert!(c.has_pending_rx());
    let (h, n) = next(&mut c, &mut [0; 64]).unwrap();
    assert_eq!(n, 0);
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.buf_alloc, h.fwd_cnt),
        (OP_RESPONSE, HOST_CID, CID, 1024, 5000, BUF_ALLOC, 0)
    );
    assert!(!c.has_pending_rx());

    let hdr = Header { len: 5, ..from_guest(OP_RW, 4096, 0) };
    c.on_guest_pkt(Op::Rw, &hdr, b"hello").unwrap();
    assert_eq!(s.written(), b"hello");
    assert_eq!(c.fwd_cnt.0, 5);
    // Small writes do not trigger a credit update of their own.
    assert!(!c.has_pending_rx());
    c.on_guest_pkt(Op::CreditRequest, &from_guest(OP_CREDIT_REQUEST, 4096, 0), &[]).unwrap();
    let (h, _) = next(&mut c, &mut []).unwrap();
    assert_eq!((h.op, h.fwd_cnt), (OP_CREDIT_UPDATE, 5));
}

#[test]
fn never_sends_the_guest_more_than_its_credit() {
    let s = Fake::with_room(0);
    let mut c = established(s.clone(), 10);
    s.feed(&[7; 25]);
    c.on_readable();
    let mut buf = [0u8; 100];
    let (h, n) = next(&mut c, &mut buf).unwrap();
    assert_eq!((h.op, h.len, n), (OP_RW, 10, 10));
    assert_eq!(c.peer_credit(), 0);
    // Out of credit: one CREDIT_REQUEST, then nothing until the guest frees space.
    let (h, _) = next(&mut c, &mut buf).unwrap();
    assert_eq!(h.op, OP_CREDIT_REQUEST);
    assert!(!c.has_pending_rx());
    assert!(next(&mut c, &mut buf).is_none());
    assert_eq!(c.interest(), Some(Interest { read: false, write: false }), "not read while blocked");

    c.on_guest_pkt(Op::CreditUpdate, &from_guest(OP_CREDIT_UPDATE, 10, 4), &[]).unwrap();
    assert!(c.has_pending_rx());
    let (h, n) = next(&mut c, &mut buf).unwrap();
    assert_eq!((h.op, n), (OP_RW, 4));
    // A chain with less room than the credit bounds the read too.
    c.on_guest_pkt(Op::CreditUpdate, &from_guest(OP_CREDIT_UPDATE, 100, 14), &[]).unwrap();
    let (_, n) = next(&mut c, &mut buf[..3]).unwrap();
    assert_eq!(n, 3);
    let (_, n) = next(&mut c, &mut buf).unwrap();
    assert_eq!(n, 8, "the rest of the 25 bytes");
    assert!(next(&mut c, &mut buf).is_none(), "short read: wait for the stream");
    assert_eq!(c.interest(), Some(Interest { read: true, write: false }));
}

#[test]
fn credit_arithmetic_wraps() {
    let s = Fake::with_room(0);
    let mut c = established(s.clone(), 100);
    c.sent_cnt = Wrapping(u32::MAX - 5);
    c.on_guest_pkt(Op::CreditUpdate, &from_guest(OP_CREDIT_UPDATE, 100, u32::MAX - 50), &[]).unwrap();
    assert_eq!(c.peer_credit(), 55);
    c.on_guest_pkt(Op::CreditUpdate, &from_guest(OP_CREDIT_UPDATE, 100, 10), &[]).unwrap();
    // sent_cnt - peer_fwd_cnt wraps to a huge number: a lying guest gets no credit.
    assert_eq!(c.peer_credit(), 0);
}

#[test]
fn guest_beyond_its_credit_is_reset_and_buffering_is_bounded() {
    let s = Fake::with_room(0);
    let mut c = established(s.clone(), 4096);
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..4 {
        let hdr = Header { len: chunk.len() as u32, ..from_guest(OP_RW, 4096, 0) };
        c.on_guest_pkt(Op::Rw, &hdr, &chunk).unwrap();
    }
    assert_eq!(c.buffered(), BUF_ALLOC as usize);
    assert_eq!(c.interest(), Some(Interest { read: true, write: true }));
    let err = c.on_guest_pkt(Op::Rw, &Header { len: 1, ..from_guest(OP_RW, 4096, 0) }, &[1]);
    assert!(matches!(err, Err(ConnError::CreditViolation { len: 1, free: 0 })), "{err:?}");
    assert_eq!(c.state(), State::Closed);
    assert_eq!(c.buffered(), 0, "the buffer is dropped");
    let (h, _) = next(&mut c, &mut []).unwrap();
    assert_eq!(h.op, OP_RST);
    assert!(c.is_done());
}

#[test]
fn flushing_a_full_buffer_returns_credit() {
    let s = Fake::with_room(0);
    let mut c = established(s.clone(), 4096);
    let chunk = vec![2u8; 64 * 1024];
    for _ in 0..4 {
        let hdr = Header { len: chunk.len() as u32, ..from_guest(OP_RW, 4096, 0) };
        c.on_guest_pkt(Op::Rw, &hdr, &chunk).unwrap();
    }
    assert!(!c.has_pending_rx());
    s.0.borrow_mut().room = 70 * 1024;
    c.flush().unwrap();
    assert_eq!(s.written().len(), 70 * 1024);
    let (h, _) = next(&mut c, &mut []).unwrap();
    assert_eq!((h.op, h.fwd_cnt, h.buf_alloc), (OP_CREDIT_UPDATE, 70 * 1024, BUF_ALLOC));
    assert!(!c.has_pending_rx());
    s.0.borrow_mut().room = usize::MAX;
    c.flush().unwrap();
    assert_eq!(c.buffered(), 0);
    let (h, _) = next(&mut c, &mut []).unwrap();
    assert_eq!(h.fwd_cnt, BUF_ALLOC);
}

#[test]
fn host_initiated_handshake() {
    let s = Fake::with_room(1024);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut c = Connection::host_initiated(s.clone(), CID, 1 << 30, 52, deadline);
    assert_eq!(c.state(), State::Connecting);
    assert_eq!(c.interest(), Some(Interest { read: false, write: false }));
    let (h, _) = next(&mut c, &mut [0; 8]).unwrap();
    assert_eq!((h.op, h.src_port, h.dst_port, h.dst_cid), (OP_REQUEST, 1 << 30, 52, CID));
    let resp = Header { src_port: 52, dst_port: 1 << 30, ..from_guest(OP_RESPONSE, 8192, 0) };
    c.on_guest_pkt(Op::Response, &resp, &[]).unwrap();
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.deadline(), None);
    assert_eq!(s.written(), format!("OK {}\n", 1u32 << 30).as_bytes());
    assert_eq!(c.peer_credit(), 8192);
}

#[test]
fn ok_line_waits_for_a_writable_stream_and_precedes_data() {
    let s = Fake::with_room(2);
    let mut c = Connection::host_initiated(s.clone(), CID, 77, 52, Instant::now() + Duration::from_secs(5));
    next(&mut c, &mut []).unwrap();
    c.on_guest_pkt(Op::Response, &from_guest(OP_RESPONSE, 100, 0), &[]).unwrap();
    assert_eq!(c.interest(), Some(Interest { read: true, write: true }));
    c.on_guest_pkt(Op::Rw, &Header { len: 2, ..from_guest(OP_RW, 100, 0) }, b"hi").unwrap();
    s.0.borrow_mut().room = 100;
    c.flush().unwrap();
    assert_eq!(s.written(), b"OK 77\nhi");
    assert_eq!(c.fwd_cnt.0, 2, "the OK line is not guest data");
}

#[test]
fn guest_refusal_timeout_and_protocol_errors() {
    let far = Instant::now() + Duration::from_secs(60);
    // RST answers the REQUEST: the host stream is closed, nothing is sent back.
    let mut c = Connection::host_initiated(Fake::with_room(0), CID, 9, 52, far);
    next(&mut c, &mut []).unwrap();
    c.on_guest_pkt(Op::Rst, &from_guest(OP_RST, 0, 0), &[]).unwrap();
    assert!(c.is_done());
    assert!(next(&mut c, &mut []).is_none());

    // Timeout before the REQUEST left: nothing to reset in the guest.
    let now = Instant::now();
    let mut c = Connection::host_initiated(Fake::with_room(0), CID, 9, 52, now);
    assert!(!c.expire(now - Duration::from_millis(1)));
    assert!(c.expire(now));
    assert!(c.is_done());

    // Timeout after the REQUEST: RST.
    let mut c = Connection::host_initiated(Fake::with_room(0), CID, 9, 52, now);
    next(&mut c, &mut []).unwrap();
    assert!(c.expire(now + Duration::from_secs(1)));
    assert_eq!(next(&mut c, &mut []).unwrap().0.op, OP_RST);
    assert!(c.is_done());

    // Data before the RESPONSE, or a second REQUEST or RESPONSE: reset.
    let mut c = Connection::host_initiated(Fake::with_room(0), CID, 9, 52, far);
    next(&mut c, &mut []).unwrap();
    let err = c.on_guest_pkt(Op::Rw, &from_guest(OP_RW, 0, 0), &[]);
    assert!(matches!(err, Err(ConnError::Protocol { op: Op::Rw, state: State::Connecting })));
    assert_eq!(next(&mut c, &mut []).unwrap().0.op, OP_RST);
    let mut c = established(Fake::with_room(0), 10);
    assert!(c.on_guest_pkt(Op::Response, &from_guest(OP_RESPONSE, 0, 0), &[]).is_err());
    assert_eq!(next(&mut c, &mut []).unwrap().0.op, OP_RST);
    // Packets after our reset are ignored; the guest's RST ends it without a second one.
    let mut c = established(Fake::with_room(0), 10);
    c.kill();
    c.on_guest_pkt(Op::Rw, &from_guest(OP_RW, 0, 0), &[]).unwrap();
    c.on_guest_pkt(Op::Rst, &from_guest(OP_RST, 0, 0), &[]).unwrap();
    assert!(c.is_done());
    assert!(next(&mut c, &mut []).is_none());
}

#[test]
fn guest_half_close_then_full_close() {
    let s = Fake::with_room(0);
    let mut c = established(s.clone(), 100);
    c.on_guest_pkt(Op::Rw, &Header { len: 3, ..from_guest(OP_RW, 100, 0) }, b"abc").unwrap();
    let shut = Header { flags: SHUTDOWN_SEND, ..from_guest(OP_SHUTDOWN, 100, 0) };
    c.on_guest_pkt(Op::Shutdown, &shut, &[]).unwrap();
    assert!(!s.0.borrow().shut, "buffered data goes first");
    s.0.borrow_mut().room = 100;
    c.flush().unwrap();
    assert_eq!(s.written(), b"abc");
    assert!(s.0.borrow().shut, "the host reads EOF");
    // The other direction still works.
    s.feed(b"xy");
    c.on_readable();
    let mut buf = [0u8; 16];
    let (h, n) = next(&mut c, &mut buf).unwrap();
    assert_eq!((h.op, &buf[..n]), (OP_RW, &b"xy"[..]));
    // More data after SHUTDOWN(SEND) is a protocol error.
    assert!(c.on_guest_pkt(Op::Rw, &Header { len: 1, ..from_guest(OP_RW, 100, 0) }, b"z").is_err());
    assert_eq!(next(&mut c, &mut buf).unwrap().0.op, OP_RST);

    // SHUTDOWN with both flags: forward what is buffered, then RST.
    let s = Fake::with_room(0);
    let mut c = established(s.clone(), 100);
    c.on_guest_pkt(Op::Rw, &Header { len: 2, ..from_guest(OP_RW, 100, 0) }, b"zz").unwrap();
    let both = Header { flags: SHUTDOWN_BOTH, ..from_guest(OP_SHUTDOWN, 100, 0) };
    c.on_guest_pkt(Op::Shutdown, &both, &[]).unwrap();
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.interest(), Some(Interest { read: false, write: true }), "no reads after RCV");
    s.0.borrow_mut().room = 100;
    c.flush().unwrap();
    assert_eq!(s.written(), b"zz");
    assert_eq!(c.state(), State::Closed);
    assert_eq!(next(&mut c, &mut buf).unwrap().0.op, OP_RST);
    assert!(c.is_done());
}

#[test]
fn host_eof_is_a_send_shutdown_and_both_halves_end_it() {
    let s = Fake::with_room(100);
    let mut c = established(s.clone(), 100);
    s.feed(b"bye");
    s.0.borrow_mut().eof = true;
    c.on_hangup();
    let mut buf = [0u8; 16];
    let (h, n) = next(&mut c, &mut buf).unwrap();
    assert_eq!((h.op, n), (OP_RW, 3));
    // Short read: the stream is watched again, HUP reported once more, and read to EOF.
    assert_eq!(c.interest(), Some(Interest { read: true, write: false }));
    c.on_hangup();
    let (h, _) = next(&mut c, &mut buf).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    assert_eq!(c.interest(), None, "hung up and idle: not watched");
    // Guest still sends; then shuts its side: both halves closed, tell it so.
    c.on_guest_pkt(Op::Rw, &Header { len: 2, ..from_guest(OP_RW, 100, 0) }, b"ok").unwrap();
    assert_eq!(s.written(), b"ok");
    let shut = Header { flags: SHUTDOWN_SEND, ..from_guest(OP_SHUTDOWN, 100, 0) };
    c.on_guest_pkt(Op::Shutdown, &shut, &[]).unwrap();
    let (h, _) = next(&mut c, &mut buf).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    c.on_guest_pkt(Op::Rst, &from_guest(OP_RST, 100, 0), &[]).unwrap();
    assert!(c.is_done());
}

#[test]
fn stream_errors_reset() {
    let s = Fake::with_room(100);
    let mut c = established(s.clone(), 100);
    s.0.borrow_mut().write_error = Some(ErrorKind::BrokenPipe);
    let err = c.on_guest_pkt(Op::Rw, &Header { len: 1, ..from_guest(OP_RW, 100, 0) }, b"a");
    assert!(matches!(err, Err(ConnError::Stream(_))));
    assert_eq!(next(&mut c, &mut []).unwrap().0.op, OP_RST);
    assert!(c.is_done());
}
