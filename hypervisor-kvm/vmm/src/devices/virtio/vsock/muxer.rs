//! The hybrid-vsock backend: connections keyed by (local port, peer port), the listening
//! Unix socket with its pending `CONNECT <port>\n` handshakes, guest-initiated connections
//! to `<uds_path>_<port>`, and the RSTs that belong to no connection.
//!
//! The muxer owns every host file descriptor but never waits: the worker reports epoll
//! events to it ([`Muxer::handle_event`], [`Muxer::accept`]) and lets it bring the epoll set
//! up to date through a [`Registry`] ([`Muxer::sync`]).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::connection::{ConnError, Connection, Interest};
use super::metrics::VsockMetrics;
use super::packet::{Header, Op, PacketError, HOST_CID, OP_RST};
use super::queue::VsockBackend;
use super::uds::{connect_nonblocking, parse_connect};
use crate::logger::RateLimit;

/// The epoll token under which [`Muxer::sync`] registers the listener.
pub const LISTENER_TOKEN: u64 = 3;
/// The first epoll token of a host stream; the worker keeps those below.
pub const FIRST_TOKEN: u64 = 16;
/// Local ports of host-initiated connections count up from here.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
pub use super::uds::MAX_CONNECT_LINE;
/// RSTs for no connection that may wait for rx buffers; more are dropped.
pub const MAX_PENDING_RST: usize = 1024;
const ACCEPTS_PER_EVENT: usize = 64;
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Bounds of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once (either side's); more are refused.
    pub max_connections: usize,
    /// How long the guest has to answer a host-initiated REQUEST.
    pub request_timeout: Duration,
    /// How long a host client has to send its `CONNECT` line.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            request_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Identifies a connection: our port (the host side) and the guest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host-side port (a guest's destination port, or one we allocated).
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
}

/// Why a host client or a host socket could not be connected (logged, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The client's first line is not `CONNECT <port>`.
    #[error("malformed CONNECT line {0:?}")]
    Malformed(String),
    /// No newline within [`MAX_CONNECT_LINE`] bytes.
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    /// The client closed before finishing its line.
    #[error("client closed during the handshake")]
    Eof,
    /// The client took too long.
    #[error("no CONNECT line in time")]
    Timeout,
    /// The connection limit is reached.
    #[error("{0} connections open already")]
    Limit(usize),
    /// A socket call failed.
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
}

/// Where the muxer's host file descriptors go in the worker's epoll set.
pub trait Registry {
    /// Starts watching `fd`.
    fn add(&mut self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()>;
    /// Changes what `fd` is watched for.
    fn modify(&mut self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()>;
    /// Stops watching `fd`.
    fn remove(&mut self, fd: RawFd) -> std::io::Result<()>;
}

struct ConnEntry {
    conn: Connection<UnixStream>,
    token: u64,
    registered: Option<EventSet>,
    queued: bool,
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
    registered: bool,
}

enum Slot {
    Handshake,
    Conn(ConnKey),
}

/// The backend of one vsock device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_registered: bool,
    accept_backoff: Option<Instant>,
    limits: Limits,
    metrics: Arc<VsockMetrics>,
    conns: HashMap<ConnKey, ConnEntry>,
    handshakes: HashMap<u64, Handshake>,
    tokens: HashMap<u64, Slot>,
    next_token: u64,
    next_local_port: u32,
    rx_ready: VecDeque<ConnKey>,
    rst_queue: VecDeque<Header>,
    complaints: RateLimit,
}

fn events(interest: Interest) -> EventSet {
    let mut e = EventSet::empty();
    if interest.read {
        e |= EventSet::IN;
    }
    if interest.write {
        e |= EventSet::OUT;
    }
    e
}

impl Muxer {
    /// A backend for the guest `guest_cid` serving `listener` (non-blocking, bound at
    /// `uds_path`, whose `_<port>` siblings receive the guest's connections).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        listener: UnixListener,
        limits: Limits,
        metrics: Arc<VsockMetrics>,
    ) -> Self {
        Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            listener_registered: false,
            accept_backoff: None,
            limits,
            metrics,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            rx_ready: VecDeque::new(),
            rst_queue: VecDeque::new(),
            complaints: RateLimit::default(),
        }
    }

    /// The listening socket's descriptor (the worker watches it while [`Muxer::sync`] says).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn complain(&mut self, what: &str, err: &dyn std::error::Error) {
        if self.complaints.hit() {
            let cause = err.source().map(ToString::to_string).unwrap_or_default();
            tracing::warn!(error = %err, cause, "virtio-vsock: {what}");
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn enqueue_rst(&mut self, hdr: Header) {
        if self.rst_queue.len() >= MAX_PENDING_RST {
            VsockMetrics::inc(&self.metrics.resets_dropped);
        } else {
            self.rst_queue.push_back(hdr);
        }
    }

    /// Accepts waiting host clients (the listener is readable).
    pub fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, typically: stop watching for a while rather than spin.
                    self.complain("accepting a host client", &MuxerError::Io("accept", e));
                    self.accept_backoff = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            let open = self.conns.len() + self.handshakes.len();
            if open >= self.limits.max_connections {
                VsockMetrics::inc(&self.metrics.connection_limit_hits);
                self.complain("refusing a host client", &MuxerError::Limit(open));
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                self.complain("accepting a host client", &MuxerError::Io("set_nonblocking", e));
                continue;
            }
            let token = self.token();
            let deadline = Instant::now() + self.limits.handshake_timeout;
            self.handshakes.insert(
                token,
                Handshake { stream, line: Vec::with_capacity(MAX_CONNECT_LINE), deadline, registered: false },
            );
            self.tokens.insert(token, Slot::Handshake);
        }
    }

    /// Reports epoll `events` for host stream `token` (unknown tokens are ignored).
    pub fn handle_event(&mut self, token: u64, events: EventSet) {
        match self.tokens.get(&token) {
            Some(Slot::Handshake) => self.handshake_readable(token),
            Some(Slot::Conn(key)) => {
                let key = *key;
                self.conn_event(key, events);
            }
            None => {}
        }
    }

    fn conn_event(&mut self, key: ConnKey, events: EventSet) {
        let Some(entry) = self.conns.get_mut(&key) else { return };
        let conn = &mut entry.conn;
        let mut result = Ok(());
        if events.contains(EventSet::ERROR) {
            conn.kill();
            VsockMetrics::inc(&self.metrics.stream_errors);
        } else {
            if events.contains(EventSet::OUT) {
                result = conn.flush();
            }
            if events.contains(EventSet::HANG_UP) {
                conn.on_hangup();
            } else if events.contains(EventSet::IN) {
                conn.on_readable();
            }
        }
        if let Err(e) = result {
            self.conn_error(&e);
        }
        self.refresh(key);
    }

    fn conn_error(&mut self, err: &ConnError) {
        let counter = match err {
            ConnError::CreditViolation { .. } => &self.metrics.credit_violations,
            ConnError::Protocol { .. } => &self.metrics.protocol_errors,
            ConnError::Stream(_) => &self.metrics.stream_errors,
        };
        VsockMetrics::inc(counter);
        self.complain("resetting a connection", err);
    }

    /// After a connection changed: drop it when done, else queue it for rx when it has
    /// something for the guest.
    fn refresh(&mut self, key: ConnKey) {
        let Some(entry) = self.conns.get_mut(&key) else { return };
        if entry.conn.is_done() {
            let token = entry.token;
            self.conns.remove(&key);
            self.tokens.remove(&token);
        } else if !entry.queued && entry.conn.has_pending_rx() {
            entry.queued = true;
            self.rx_ready.push_back(key);
        }
    }

    fn drop_handshake(&mut self, token: u64, err: &MuxerError) {
        self.handshakes.remove(&token);
        self.tokens.remove(&token);
        VsockMetrics::inc(&self.metrics.handshake_errors);
        self.complain("host client handshake", err);
    }

    fn handshake_readable(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else { return };
        // Byte by byte: whatever follows the newline is the connection's data.
        let port = loop {
            if hs.line.len() >= MAX_CONNECT_LINE {
                return self.drop_handshake(token, &MuxerError::TooLong);
            }
            let mut byte = [0u8];
            match hs.stream.read(&mut byte) {
                Ok(0) => return self.drop_handshake(token, &MuxerError::Eof),
                Ok(_) if byte[0] == b'\n' => match parse_connect(&hs.line) {
                    Some(port) => break port,
                    None => {
                        let line = String::from_utf8_lossy(&hs.line).into_owned();
                        return self.drop_handshake(token, &MuxerError::Malformed(line));
                    }
                },
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.drop_handshake(token, &MuxerError::Io("reading the handshake", e)),
            }
        };
        if self.conns.len() >= self.limits.max_connections {
            VsockMetrics::inc(&self.metrics.connection_limit_hits);
            return self.drop_handshake(token, &MuxerError::Limit(self.conns.len()));
        }
        let Some(hs) = self.handshakes.remove(&token) else { return };
        let key = self.alloc_local_port(port);
        let deadline = Instant::now() + self.limits.request_timeout;
        let conn = Connection::host_initiated(hs.stream, self.guest_cid, key.local_port, port, deadline);
        let registered = hs.registered.then_some(EventSet::IN);
        self.conns.insert(key, ConnEntry { conn, token, registered, queued: false });
        self.tokens.insert(token, Slot::Conn(key));
        VsockMetrics::inc(&self.metrics.host_connects);
        self.refresh(key);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> ConnKey {
        loop {
            let key = ConnKey { local_port: self.next_local_port, peer_port };
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // At most `max_connections` keys are taken, so this ends quickly.
            if !self.conns.contains_key(&key) {
                return key;
            }
        }
    }

    fn guest_connect(&mut self, hdr: &Header) {
        if self.conns.len() >= self.limits.max_connections {
            VsockMetrics::inc(&self.metrics.connection_limit_hits);
            return self.enqueue_rst(hdr.reset_reply());
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                VsockMetrics::inc(&self.metrics.guest_connects_refused);
                if e.kind() != ErrorKind::NotFound && e.kind() != ErrorKind::ConnectionRefused {
                    self.complain("connecting for the guest", &MuxerError::Io("connect", e));
                }
                return self.enqueue_rst(hdr.reset_reply());
            }
        };
        let key = ConnKey { local_port: hdr.dst_port, peer_port: hdr.src_port };
        let token = self.token();
        let conn = Connection::guest_initiated(stream, self.guest_cid, hdr);
        self.conns.insert(key, ConnEntry { conn, token, registered: None, queued: false });
        self.tokens.insert(token, Slot::Conn(key));
        VsockMetrics::inc(&self.metrics.guest_connects);
        self.refresh(key);
    }

    /// Resets connections and drops handshakes whose time is up.
    pub fn sweep(&mut self, now: Instant) {
        let late: Vec<u64> = self.handshakes.iter().filter(|(_, h)| h.deadline <= now).map(|(t, _)| *t).collect();
        for token in late {
            self.drop_handshake(token, &MuxerError::Timeout);
        }
        let expired: Vec<ConnKey> =
            self.conns.iter_mut().filter_map(|(k, e)| e.conn.expire(now).then_some(*k)).collect();
        for key in expired {
            VsockMetrics::inc(&self.metrics.request_timeouts);
            self.refresh(key);
        }
        if self.accept_backoff.is_some_and(|t| t <= now) {
            self.accept_backoff = None;
        }
    }

    /// The next time [`Muxer::sweep`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|e| e.conn.deadline());
        let handshakes = self.handshakes.values().map(|h| h.deadline);
        conns.chain(handshakes).chain(self.accept_backoff).min()
    }

    /// Brings `registry` in line with what each host descriptor should be watched for.
    pub fn sync(&mut self, registry: &mut dyn Registry) {
        let listener_wanted = self.accept_backoff.is_none();
        if listener_wanted != self.listener_registered {
            let fd = self.listener.as_raw_fd();
            let r = if listener_wanted { registry.add(fd, LISTENER_TOKEN, EventSet::IN) } else { registry.remove(fd) };
            match r {
                Ok(()) => self.listener_registered = listener_wanted,
                Err(e) => self.complain("watching the listener", &MuxerError::Io("epoll", e)),
            }
        }
        let mut failed_handshakes = Vec::new();
        for (token, hs) in self.handshakes.iter_mut().filter(|(_, h)| !h.registered) {
            match registry.add(hs.stream.as_raw_fd(), *token, EventSet::IN) {
                Ok(()) => hs.registered = true,
                Err(e) => failed_handshakes.push((*token, e)),
            }
        }
        for (token, e) in failed_handshakes {
            self.drop_handshake(token, &MuxerError::Io("epoll", e));
        }
        let mut failed = Vec::new();
        for (key, entry) in self.conns.iter_mut() {
            let wanted = entry.conn.interest().map(events);
            if wanted == entry.registered {
                continue;
            }
            let fd = entry.conn.stream().as_raw_fd();
            let r = match (entry.registered, wanted) {
                (None, Some(e)) => registry.add(fd, entry.token, e),
                (Some(_), Some(e)) => registry.modify(fd, entry.token, e),
                (Some(_), None) => registry.remove(fd),
                (None, None) => Ok(()),
            };
            match r {
                Ok(()) => entry.registered = wanted,
                Err(e) => failed.push((*key, e)),
            }
        }
        for (key, e) in failed {
            if let Some(entry) = self.conns.get_mut(&key) {
                entry.conn.kill();
            }
            self.conn_error(&ConnError::Stream(e));
            self.refresh(key);
        }
    }
}

impl VsockBackend for Muxer {
    fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    fn send_pkt(&mut self, hdr: &Header, op: Op, payload: &[u8]) {
        let key = ConnKey { local_port: hdr.dst_port, peer_port: hdr.src_port };
        if let Some(entry) = self.conns.get_mut(&key) {
            if let Err(e) = entry.conn.on_guest_pkt(op, hdr, payload) {
                self.conn_error(&e);
            }
            return self.refresh(key);
        }
        match op {
            Op::Request => self.guest_connect(hdr),
            Op::Rst => {}
            _ => self.enqueue_rst(hdr.reset_reply()),
        }
    }

    fn reject_pkt(&mut self, hdr: &Header, err: &PacketError) {
        if !err.answer_with_rst() || hdr.op == OP_RST {
            return;
        }
        let key = ConnKey { local_port: hdr.dst_port, peer_port: hdr.src_port };
        match self.conns.get_mut(&key) {
            Some(entry) if hdr.dst_cid == HOST_CID => {
                entry.conn.kill();
                VsockMetrics::inc(&self.metrics.protocol_errors);
                self.refresh(key);
            }
            _ => self.enqueue_rst(hdr.reset_reply()),
        }
    }

    fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_ready.is_empty()
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(hdr) = self.rst_queue.pop_front() {
            return Some((hdr, 0));
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(entry) = self.conns.get_mut(&key) else { continue };
            entry.queued = false;
            let pkt = match entry.conn.recv_pkt(buf) {
                Ok(pkt) => pkt,
                Err(e) => {
                    // The connection is reset: its next packet is the RST.
                    let rst = entry.conn.recv_pkt(buf).ok().flatten();
                    self.conn_error(&e);
                    rst
                }
            };
            self.refresh(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
