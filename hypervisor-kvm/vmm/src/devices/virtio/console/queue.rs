//! Queue processing of the console, without threads or epoll: each function takes guest
//! memory, the queue(s) and the backend (any `Read`/`Write`: the host's Unix stream in the
//! device, a byte vector in tests and the fuzz target), serves what the driver made available
//! and says whether the interrupt must be raised.
//!
//! Every chain is validated before use ([`Chain::parse`]): all of its descriptors go the
//! expected way, lie inside guest memory, its `next` links end (no loop, no index beyond the
//! queue), and it has at most [`MAX_DESCRIPTORS`] descriptors. A bad chain is completed with
//! length 0 and counted. Data moves through one scratch buffer of [`MAX_CHAIN_IO`] bytes, so
//! no chain makes the VMM allocate more than that, whatever lengths its descriptors claim.

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions};

use super::control::{ControlState, HEADER_LEN};
use super::metrics::{ConsoleMetrics, Counter};
use crate::logger::RateLimit;
use crate::devices::virtio::drain::{drain, signal};

/// The most bytes moved for one chain at a time: one read from the host per receive chain,
/// one guest-memory copy per write to the host.
pub const MAX_CHAIN_IO: usize = 64 * 1024;
/// The most descriptors in one chain (more than any queue size the device offers).
pub const MAX_DESCRIPTORS: usize = 256;
/// The most chains served per call, so one busy queue cannot starve the others.
pub const CHAIN_BUDGET: usize = 256;
/// The most bytes written to the host per call.
pub const BYTE_BUDGET: u64 = 1 << 20;

/// Why a chain was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A descriptor the device may write in a chain it must only read, or the reverse.
    #[error("descriptor {index} goes the wrong way")]
    WrongDirection {
        /// Its position in the chain.
        index: usize,
    },
    /// A descriptor's buffer is not entirely in guest memory.
    #[error("buffer at {addr:#x} of {len} bytes is outside guest memory")]
    OutOfMemory {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The chain's links are broken: a loop, a `next` or head index beyond the queue, an
    /// unreadable descriptor or a bad indirect table.
    #[error("the chain's next links are broken")]
    Broken,
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    #[error("more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    /// Copying from or to guest memory failed.
    #[error("guest memory access")]
    Memory(#[source] GuestMemoryError),
}

/// Which way a chain's buffers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The device reads them (transmit queues).
    DeviceReads,
    /// The device writes them (receive queues).
    DeviceWrites,
}

/// A validated descriptor chain: its head index and its buffers.
#[derive(Debug)]
pub struct Chain {
    head: u16,
    segments: Vec<(GuestAddress, u32)>,
    len: u64,
}

impl Chain {
    /// Validates `chain`, whose buffers must all go `dir`. On error, also returns the head
    /// index so the chain can be completed.
    pub fn parse(
        mem: &GuestMemoryMmap,
        mut chain: DescriptorChain<&GuestMemoryMmap>,
        dir: Direction,
    ) -> Result<Chain, (u16, ChainError)> {
        let head = chain.head_index();
        let fail = |e| Err((head, e));
        let mut segments = Vec::new();
        let mut len = 0u64;
        let mut index = 0;
        let access = match dir {
            Direction::DeviceReads => Permissions::Read,
            Direction::DeviceWrites => Permissions::Write,
        };
        loop {
            // The iterator stops after as many descriptors as the queue has, so a loop ends
            // with a descriptor that still claims a successor.
            let Some(desc) = chain.next() else { return fail(ChainError::Broken) };
            if index >= MAX_DESCRIPTORS {
                return fail(ChainError::TooManyDescriptors);
            }
            if desc.is_write_only() != (dir == Direction::DeviceWrites) {
                return fail(ChainError::WrongDirection { index });
            }
            if desc.len() > 0 {
                if !usize::try_from(desc.len()).is_ok_and(|n| GuestMemory::check_range(mem, desc.addr(), n, access)) {
                    return fail(ChainError::OutOfMemory { addr: desc.addr().0, len: desc.len() });
                }
                segments.push((desc.addr(), desc.len()));
                len += u64::from(desc.len());
            }
            index += 1;
            if !desc.has_next() {
                return Ok(Chain { head, segments, len });
            }
        }
    }

    /// The head index, for the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The total length of the buffers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the buffers hold no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f(address, range in the caller's buffer)` for the chain's bytes from `offset`
    /// on, at most `count` of them; returns how many were covered.
    fn walk<F>(&self, offset: u64, count: usize, mut f: F) -> Result<usize, ChainError>
    where
        F: FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), GuestMemoryError>,
    {
        let mut skip = offset;
        let mut done = 0usize;
        for &(addr, len) in &self.segments {
            if done == count {
                break;
            }
            let len = u64::from(len);
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = usize::try_from(len - skip).unwrap_or(usize::MAX).min(count - done);
            let at = addr.checked_add(skip).ok_or(ChainError::OutOfMemory { addr: addr.0, len: 0 })?;
            f(at, done..done + n).map_err(ChainError::Memory)?;
            done += n;
            skip = 0;
        }
        Ok(done)
    }

    /// Copies the chain's bytes from `offset` into `buf`; returns how many were copied.
    pub fn read_at(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> Result<usize, ChainError> {
        let count = buf.len();
        self.walk(offset, count, |addr, range| mem.read_slice(&mut buf[range], addr))
    }

    /// Copies `data` into the chain's buffers from the start; returns how many bytes fit.
    pub fn write(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<usize, ChainError> {
        self.walk(0, data.len(), |addr, range| mem.write_slice(&data[range], addr))
    }
}

/// A guest write not yet fully passed to the host (the host stream was full).
#[derive(Debug)]
pub struct PendingTx {
    chain: Chain,
    done: u64,
}

/// What the queue functions share: the scratch buffer and the log limiter.
pub struct Scratch {
    buf: Vec<u8>,
    complaints: RateLimit,
}

impl Default for Scratch {
    fn default() -> Self {
        Self { buf: vec![0; MAX_CHAIN_IO], complaints: RateLimit::default() }
    }
}

impl Scratch {
    fn complain(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self.complaints.hit() {
            tracing::warn!(device = "virtio-console", error = %error, "{what}");
        }
    }
}

/// Puts `head` in the used ring; true if it went there.
fn complete(mem: &GuestMemoryMmap, queue: &mut Queue, head: u16, len: u32, scratch: &mut Scratch) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            scratch.complain("returning a chain to the used ring", &e);
            false
        }
    }
}


fn bad_chain(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    head: u16,
    e: &ChainError,
    m: &ConsoleMetrics,
    s: &mut Scratch,
) -> bool {
    m.bad_chains.inc();
    s.complain("rejected a descriptor chain", e);
    complete(mem, queue, head, 0, s)
}

/// Sends the control messages the driver has to hear, as long as the control receive queue
/// has buffers. A buffer too small for its message is returned with length 0 and the message
/// waits for the next one.
pub fn send_control(
    mem: &GuestMemoryMmap,
    rxq: &mut Queue,
    state: &mut ControlState,
    metrics: &ConsoleMetrics,
    scratch: &mut Scratch,
) -> bool {
    let mut added = false;
    for _ in 0..CHAIN_BUDGET {
        let Some(msg) = state.next_outgoing() else { break };
        let Some(chain) = rxq.pop_descriptor_chain(mem) else { break };
        let chain = match Chain::parse(mem, chain, Direction::DeviceWrites) {
            Ok(c) => c,
            Err((head, e)) => {
                added |= bad_chain(mem, rxq, head, &e, metrics, scratch);
                continue;
            }
        };
        let bytes = state.encode(msg);
        let written = if chain.len() < bytes.len() as u64 {
            metrics.control_buffer_too_small.inc();
            scratch.complain("control receive buffer too small", &chain.len());
            0
        } else {
            match chain.write(mem, &bytes) {
                Ok(n) => n,
                Err(e) => {
                    added |= bad_chain(mem, rxq, chain.head(), &e, metrics, scratch);
                    continue;
                }
            }
        };
        // `written` is at most a header and a 64-byte name.
        added |= complete(mem, rxq, chain.head(), u32::try_from(written).unwrap_or(0), scratch);
        if written > 0 {
            state.mark_sent(msg);
            metrics.control_to_guest.inc();
        }
    }
    signal(mem, rxq, added)
}

/// What [`receive_control`] and [`transmit`] did.
#[derive(Debug, Default)]
pub struct Served {
    /// Raise the interrupt.
    pub signal: bool,
    /// The budget ran out with work left: call again.
    pub more: bool,
}

/// Handles the driver's control messages, answering each at once on the control receive
/// queue when it has buffers (so `PORT_READY` can follow `DEVICE_ADD` in one pass).
pub fn receive_control(
    mem: &GuestMemoryMmap,
    txq: &mut Queue,
    rxq: &mut Queue,
    state: &mut ControlState,
    metrics: &ConsoleMetrics,
    scratch: &mut Scratch,
) -> Served {
    // The chain handler and the ring-error report share the log limiter; `drain` never
    // calls both at once.
    let scratch = RefCell::new(scratch);
    let mut answered = false;
    let done = drain(
        mem,
        txq,
        CHAIN_BUDGET,
        |chain| {
            let mut scratch = scratch.borrow_mut();
            control_message(mem, chain, state, metrics, &mut scratch);
            answered |= send_control(mem, rxq, state, metrics, &mut scratch);
            0
        },
        |what, e| scratch.borrow_mut().complain(what, e),
    );
    Served { signal: done.signal || answered, more: done.more }
}

/// Handles one control message from the driver. Only its header is read: trailing bytes are
/// ignored and never copied.
fn control_message(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    state: &mut ControlState,
    metrics: &ConsoleMetrics,
    scratch: &mut Scratch,
) {
    let mut header = [0u8; HEADER_LEN];
    let read = Chain::parse(mem, chain, Direction::DeviceReads)
        .map_err(|(_, e)| e)
        .and_then(|chain| chain.read_at(mem, 0, &mut header));
    let n = match read {
        Ok(n) => n,
        Err(e) => {
            metrics.bad_chains.inc();
            scratch.complain("rejected a descriptor chain", &e);
            return;
        }
    };
    match state.handle(&header[..n]) {
        Ok(event) => {
            metrics.control_from_guest.inc();
            if let super::control::DriverEvent::GuestOpen(id, open) = event {
                if let Some(p) = metrics.port(id) {
                    if open { p.guest_opens.inc() } else { p.guest_closes.inc() }
                }
            }
        }
        Err(e) => {
            metrics.control_invalid.inc();
            scratch.complain("invalid control message", &e);
        }
    }
}

/// Counters of one transmit queue.
pub struct TxCounters<'a> {
    /// Bytes passed to the host.
    pub sent: &'a Counter,
    /// Bytes dropped for want of a host.
    pub dropped: &'a Counter,
}

/// What [`transmit`] did.
#[derive(Debug, Default)]
pub struct TxServed {
    /// Raise the interrupt, call again.
    pub served: Served,
    /// The host stream is full: `pending` holds the rest, call again once it is writable.
    pub blocked: bool,
    /// Writing to the host failed: disconnect it, then call again without a host so the rest
    /// is dropped.
    pub error: Option<std::io::Error>,
}

/// Passes the guest's writes to `host`, or drops and counts them when there is none.
/// `pending` carries a chain the host could not take whole across calls.
pub fn transmit<W: Write>(
    mem: &GuestMemoryMmap,
    txq: &mut Queue,
    pending: &mut Option<PendingTx>,
    mut host: Option<&mut W>,
    counters: &TxCounters<'_>,
    metrics: &ConsoleMetrics,
    scratch: &mut Scratch,
) -> TxServed {
    let mut out = TxServed::default();
    let mut added = false;
    let mut bytes = 0u64;
    let mut chains = 0;
    loop {
        if pending.is_none() {
            if chains == CHAIN_BUDGET {
                out.served.more = true;
                break;
            }
            chains += 1;
            let Some(chain) = txq.pop_descriptor_chain(mem) else { break };
            match Chain::parse(mem, chain, Direction::DeviceReads) {
                Ok(chain) => *pending = Some(PendingTx { chain, done: 0 }),
                Err((head, e)) => {
                    added |= bad_chain(mem, txq, head, &e, metrics, scratch);
                    continue;
                }
            }
        }
        let Some(p) = pending.as_mut() else { break };
        let Some(host) = host.as_deref_mut() else {
            counters.dropped.add(p.chain.len() - p.done);
            added |= complete(mem, txq, p.chain.head(), 0, scratch);
            *pending = None;
            continue;
        };
        while p.done < p.chain.len() {
            if bytes >= BYTE_BUDGET {
                out.served.more = true;
                out.served.signal = signal(mem, txq, added);
                return out;
            }
            let want = usize::try_from(p.chain.len() - p.done).unwrap_or(usize::MAX).min(MAX_CHAIN_IO);
            let got = match p.chain.read_at(mem, p.done, &mut scratch.buf[..want]) {
                Ok(n) if n > 0 => n,
                Ok(_) => break,
                Err(e) => {
                    counters.dropped.add(p.chain.len() - p.done);
                    p.done = p.chain.len();
                    metrics.bad_chains.inc();
                    scratch.complain("reading a transmit buffer", &e);
                    break;
                }
            };
            match host.write(&scratch.buf[..got]) {
                Ok(0) => {
                    out.error = Some(ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => {
                    p.done += n as u64;
                    bytes += n as u64;
                    counters.sent.add(n as u64);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    out.blocked = true;
                    break;
                }
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
        if out.blocked || out.error.is_some() {
            break;
        }
        added |= complete(mem, txq, p.chain.head(), 0, scratch);
        *pending = None;
    }
    out.served.signal = signal(mem, txq, added);
    out
}

/// Why [`receive`] stopped.
#[derive(Debug)]
pub enum RxEnd {
    /// The guest has no receive buffer left.
    NoBuffers,
    /// The host has nothing more to read now.
    Drained,
    /// The host closed its end.
    Eof,
    /// Reading from the host failed.
    Error(std::io::Error),
    /// The budget ran out: call again.
    Budget,
}

/// Moves bytes from `host` into the guest's receive buffers: one read of at most
/// [`MAX_CHAIN_IO`] bytes per chain, so what the VMM holds is bounded by its scratch buffer;
/// when the guest has no buffer the host is not read at all (backpressure).
pub fn receive<R: Read>(
    mem: &GuestMemoryMmap,
    rxq: &mut Queue,
    host: &mut R,
    received: &Counter,
    metrics: &ConsoleMetrics,
    scratch: &mut Scratch,
) -> (bool, RxEnd) {
    let mut added = false;
    let mut end = RxEnd::Budget;
    for _ in 0..CHAIN_BUDGET {
        let Some(chain) = rxq.pop_descriptor_chain(mem) else {
            end = RxEnd::NoBuffers;
            break;
        };
        let chain = match Chain::parse(mem, chain, Direction::DeviceWrites) {
            Ok(c) => c,
            Err((head, e)) => {
                added |= bad_chain(mem, rxq, head, &e, metrics, scratch);
                continue;
            }
        };
        let cap = usize::try_from(chain.len()).unwrap_or(usize::MAX).min(MAX_CHAIN_IO);
        if cap == 0 {
            added |= complete(mem, rxq, chain.head(), 0, scratch);
            continue;
        }
        let result = host.read(&mut scratch.buf[..cap]);
        let n = match result {
            Ok(n) if n > 0 => n,
            other => {
                // The chain was not used: give it back for the next time.
                rxq.go_to_previous_position();
                end = match other {
                    Ok(_) => RxEnd::Eof,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => RxEnd::Drained,
                    Err(e) => RxEnd::Error(e),
                };
                break;
            }
        };
        let written = match chain.write(mem, &scratch.buf[..n]) {
            Ok(w) => w,
            Err(e) => {
                metrics.bad_chains.inc();
                scratch.complain("writing a receive buffer (host bytes lost)", &e);
                0
            }
        };
        received.add(written as u64);
        // `written` is at most MAX_CHAIN_IO.
        added |= complete(mem, rxq, chain.head(), u32::try_from(written).unwrap_or(0), scratch);
    }
    (signal(mem, rxq, added), end)
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
