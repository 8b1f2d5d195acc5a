//! One vsock stream connection between a guest socket and a host Unix stream: its state
//! machine and both directions of credit-based flow control.
//!
//! Nothing here touches epoll or guest memory: the stream is any [`ConnStream`] (a
//! `UnixStream`, or an in-memory fake in tests), packets from the guest arrive already
//! validated through [`Connection::on_guest_pkt`], and packets for the guest are produced
//! one at a time by [`Connection::recv_pkt`].
//!
//! Credit, guest to host: we advertise [`BUF_ALLOC`] bytes; bytes the host stream cannot take
//! at once wait in `out`, which can never exceed that (a guest that sends beyond its credit
//! is reset). `fwd_cnt` counts bytes handed to the stream. Host to guest: we never send more
//! than `peer_buf_alloc - (sent_cnt - peer_fwd_cnt)`.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{
    Header, Op, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// The receive buffer we advertise for each connection, and the most we ever hold for it.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Forwarded bytes not yet announced to the guest that trigger a CREDIT_UPDATE.
pub const CREDIT_THRESHOLD: u32 = 64 * 1024;

/// The host side of a connection.
pub trait ConnStream: Read + Write {
    /// Half-closes the stream: the host reads end-of-file.
    fn shutdown_write(&mut self) -> std::io::Result<()>;
}

impl ConnStream for UnixStream {
    fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Why a connection was reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than the credit we gave it.
    #[error("guest sent {len} bytes with {free} bytes of credit")]
    CreditViolation {
        /// Payload length.
        len: usize,
        /// Credit left.
        free: u32,
    },
    /// A packet that makes no sense in the connection's state.
    #[error("op {op:?} in state {state:?}")]
    Protocol {
        /// The op.
        op: Op,
        /// The state.
        state: State,
    },
    /// Reading or writing the host stream failed.
    #[error("host stream")]
    Stream(#[source] std::io::Error),
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: the REQUEST is queued or sent, the guest has not answered.
    Connecting,
    /// Data flows (subject to shutdowns).
    Established,
    /// Reset: an RST may still be queued for the guest; removed once [`Connection::is_done`].
    Closed,
}

const P_REQUEST: u8 = 1;
const P_RESPONSE: u8 = 2;
const P_RST: u8 = 4;
const P_CREDIT_UPDATE: u8 = 8;
const P_SHUTDOWN_BOTH: u8 = 16;

/// What to watch the host stream for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
}

/// One connection; `S` is the host stream.
pub struct Connection<S> {
    stream: S,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: State,
    pending: u8,
    request_sent: bool,
    done: bool,
    /// The stream reported readable and we have not read it dry since.
    data_ready: bool,
    /// The stream reported end-of-file; the guest was sent SHUTDOWN(SEND).
    host_eof: bool,
    /// The stream hung up (epoll HUP); it is only watched again when there is work.
    hup: bool,
    /// Shutdown flags the guest has sent.
    peer_shutdown: u32,
    write_shut: bool,
    credit_requested: bool,
    /// Guest data not yet written to the stream (at most `BUF_ALLOC` bytes).
    out: VecDeque<u8>,
    /// The `OK <port>\n` reply of the hybrid-vsock handshake, written before any data.
    ctl_out: Vec<u8>,
    recv_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    sent_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    deadline: Option<Instant>,
}

impl<S: ConnStream> Connection<S> {
    fn new(stream: S, guest_cid: u64, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            pending: 0,
            request_sent: false,
            done: false,
            data_ready: false,
            host_eof: false,
            hup: false,
            peer_shutdown: 0,
            write_shut: false,
            credit_requested: false,
            out: VecDeque::new(),
            ctl_out: Vec::new(),
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            sent_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            deadline: None,
        }
    }

    /// A host-initiated connection to guest port `peer_port`: a REQUEST is queued; unless the
    /// guest answers before `deadline`, [`Connection::expire`] resets it.
    pub fn host_initiated(stream: S, guest_cid: u64, local_port: u32, peer_port: u32, deadline: Instant) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port, State::Connecting);
        c.pending = P_REQUEST;
        c.deadline = Some(deadline);
        c
    }

    /// A guest-initiated connection whose `request` reached a host socket: a RESPONSE is
    /// queued and data may flow.
    pub fn guest_initiated(stream: S, guest_cid: u64, request: &Header) -> Self {
        let mut c = Self::new(stream, guest_cid, request.dst_port, request.src_port, State::Established);
        c.pending = P_RESPONSE;
        c.update_peer_credit(request);
        c
    }

    /// The host stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the connection is over and can be dropped (its RST, if any, was produced).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// When [`Connection::expire`] will reset the connection, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Guest data waiting for the host stream.
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Credit the guest gave us: how many bytes we may send it now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.sent_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Resets the connection: only an RST (if the guest knows of the connection) remains.
    pub fn kill(&mut self) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.out = VecDeque::new();
        self.ctl_out.clear();
        self.data_ready = false;
        self.deadline = None;
        if self.request_sent || self.pending & P_REQUEST == 0 {
            self.pending = P_RST;
        } else {
            // The guest never saw the REQUEST: nothing to reset on its side.
            self.pending = 0;
            self.done = true;
        }
    }

    /// Resets the connection if its deadline has passed; true if it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.deadline {
            Some(d) if d <= now => {
                self.kill();
                true
            }
            _ => false,
        }
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        let before = self.peer_credit();
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > before {
            self.credit_requested = false;
        }
    }

    fn fail(&mut self, err: ConnError) -> Result<(), ConnError> {
        self.kill();
        Err(err)
    }

    /// Acts on a validated packet from the guest addressed to this connection. On an error the
    /// connection has been reset.
    pub fn on_guest_pkt(&mut self, op: Op, hdr: &Header, payload: &[u8]) -> Result<(), ConnError> {
        if self.state == State::Closed {
            if op == Op::Rst {
                self.done = true;
            }
            return Ok(());
        }
        self.update_peer_credit(hdr);
        match (self.state, op) {
            (_, Op::Rst) => {
                // The guest refused or tore down the connection: close the host stream.
                self.state = State::Closed;
                self.pending = 0;
                self.done = true;
                Ok(())
            }
            (State::Connecting, Op::Response) if self.request_sent => {
                self.state = State::Established;
                self.deadline = None;
                self.ctl_out = format!("OK {}\n", self.local_port).into_bytes();
                self.flush()
            }
            (State::Established, Op::Rw) => self.guest_data(payload),
            (State::Established, Op::CreditUpdate) => Ok(()),
            (State::Established, Op::CreditRequest) => {
                self.pending |= P_CREDIT_UPDATE;
                Ok(())
            }
            (State::Established, Op::Shutdown) => {
                self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                if self.peer_shutdown & SHUTDOWN_RCV != 0 {
                    self.data_ready = false;
                }
                self.flush()
            }
            (state, op) => self.fail(ConnError::Protocol { op, state }),
        }
    }

    fn guest_data(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return self.fail(ConnError::Protocol { op: Op::Rw, state: self.state });
        }
        let free = BUF_ALLOC.saturating_sub((self.recv_cnt - self.fwd_cnt).0);
        if payload.len() > free as usize {
            return self.fail(ConnError::CreditViolation { len: payload.len(), free });
        }
        // payload.len() <= BUF_ALLOC, so it fits a u32.
        self.recv_cnt += Wrapping(payload.len() as u32);
        let mut rest = payload;
        if self.out.is_empty() && self.ctl_out.is_empty() {
            while !rest.is_empty() {
                match self.stream.write(rest) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.fwd_cnt += Wrapping(n as u32);
                        rest = &rest[n..];
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return self.fail(ConnError::Stream(e)),
                }
            }
        }
        self.out.extend(rest);
        self.after_forwarding()
    }

    /// Writes what waits for the host stream (the stream became writable, or the state
    /// changed); half-closes or closes the stream once the guest's shutdown is reached.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        if self.state == State::Closed {
            return Ok(());
        }
        while !self.ctl_out.is_empty() {
            match self.stream.write(&self.ctl_out) {
                Ok(0) => break,
                Ok(n) => {
                    self.ctl_out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return self.fail(ConnError::Stream(e)),
            }
        }
        while !self.out.is_empty() {
            let (front, _) = self.out.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return self.fail(ConnError::Stream(e)),
            }
        }
        self.after_forwarding()
    }

    fn after_forwarding(&mut self) -> Result<(), ConnError> {
        let unannounced = (self.fwd_cnt - self.last_fwd_cnt_sent).0;
        let guest_view_free = BUF_ALLOC.saturating_sub((self.recv_cnt - self.last_fwd_cnt_sent).0);
        if unannounced > 0 && (unannounced >= CREDIT_THRESHOLD || guest_view_free < CREDIT_THRESHOLD) {
            self.pending |= P_CREDIT_UPDATE;
        }
        if !self.out.is_empty() || !self.ctl_out.is_empty() {
            return Ok(());
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            // Clean close by the guest: everything is forwarded, answer with the RST.
            self.kill();
        } else if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.write_shut {
            self.write_shut = true;
            if let Err(e) = self.stream.shutdown_write() {
                return self.fail(ConnError::Stream(e));
            }
            if self.host_eof {
                // Nothing can flow either way any more: tell the guest, which then resets.
                self.pending |= P_SHUTDOWN_BOTH;
            }
        }
        Ok(())
    }

    /// The host stream is readable.
    pub fn on_readable(&mut self) {
        if self.can_send_data() {
            self.data_ready = true;
        }
    }

    /// The host stream hung up: read what is left; stop watching it when idle.
    pub fn on_hangup(&mut self) {
        self.hup = true;
        self.on_readable();
    }

    fn can_send_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// What to watch the stream for; `None` to stop watching it (hung up and idle).
    pub fn interest(&self) -> Option<Interest> {
        let read = self.can_send_data() && !self.data_ready;
        let write = self.state != State::Closed && (!self.out.is_empty() || !self.ctl_out.is_empty());
        if self.hup && !read && !write {
            return None;
        }
        Some(Interest { read, write })
    }

    /// Whether [`Connection::recv_pkt`] may produce a packet.
    pub fn has_pending_rx(&self) -> bool {
        if self.done {
            return false;
        }
        self.pending != 0
            || (self.data_ready && self.can_send_data() && (self.peer_credit() > 0 || !self.credit_requested))
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        // Every header carries our credit, so it answers a pending credit update.
        self.pending &= !P_CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Produces the next packet for the guest, reading data from the host stream into `buf`
    /// (never more than the guest's credit); returns the header and the payload length. On
    /// an error the connection has been reset and the next call produces the RST.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Result<Option<(Header, usize)>, ConnError> {
        if self.done {
            return Ok(None);
        }
        if self.pending & P_RST != 0 {
            self.pending = 0;
            self.done = true;
            let mut h = self.header(OP_RST, 0, 0);
            h.buf_alloc = 0;
            h.fwd_cnt = 0;
            return Ok(Some((h, 0)));
        }
        if self.pending & P_REQUEST != 0 {
            self.pending &= !P_REQUEST;
            self.request_sent = true;
            return Ok(Some((self.header(OP_REQUEST, 0, 0), 0)));
        }
        if self.pending & P_RESPONSE != 0 {
            self.pending &= !P_RESPONSE;
            return Ok(Some((self.header(OP_RESPONSE, 0, 0), 0)));
        }
        if self.data_ready && self.can_send_data() {
            let credit = self.peer_credit() as usize;
            if credit == 0 {
                if !self.credit_requested {
                    self.credit_requested = true;
                    return Ok(Some((self.header(OP_CREDIT_REQUEST, 0, 0), 0)));
                }
            } else if !buf.is_empty() {
                let want = credit.min(buf.len());
                match self.stream.read(&mut buf[..want]) {
                    Ok(0) => {
                        self.data_ready = false;
                        self.host_eof = true;
                        // Once the guest has shut its sending side too, nothing can flow.
                        let flags = if self.write_shut { SHUTDOWN_BOTH } else { SHUTDOWN_SEND };
                        return Ok(Some((self.header(OP_SHUTDOWN, 0, flags), 0)));
                    }
                    Ok(n) => {
                        let n = n.min(want);
                        if n < want {
                            self.data_ready = false;
                        }
                        self.sent_cnt += Wrapping(n as u32);
                        return Ok(Some((self.header(OP_RW, n as u32, 0), n)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => self.data_ready = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.kill();
                        return Err(ConnError::Stream(e));
                    }
                }
            }
        }
        if self.pending & P_SHUTDOWN_BOTH != 0 {
            self.pending &= !P_SHUTDOWN_BOTH;
            return Ok(Some((self.header(OP_SHUTDOWN, 0, SHUTDOWN_BOTH), 0)));
        }
        if self.pending & P_CREDIT_UPDATE != 0 {
            return Ok(Some((self.header(OP_CREDIT_UPDATE, 0, 0), 0)));
        }
        Ok(None)
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
