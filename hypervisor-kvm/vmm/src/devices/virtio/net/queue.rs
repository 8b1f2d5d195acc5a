//! virtio-net queue processing, free of threads and file descriptors: [`Tx`] moves the
//! guest's transmit chains to a [`Frames`] backend, [`Rx`] moves the backend's frames into
//! the guest's receive buffers. The worker calls them with the tap; tests and the fuzz
//! target call them with [`FakeFrames`].
//!
//! Both directions carry a 12-byte `virtio_net_hdr_v1` in front of each Ethernet frame. No
//! offloads are negotiated, so the header the tap sees is all zeroes and the header the
//! guest sees says only `num_buffers = 1`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::metrics::NetMetrics;
use crate::devices::virtio::drain::{drain, signal_or};
use crate::logger::RateLimit;

/// Size of `virtio_net_hdr_v1` (with `num_buffers`), in front of every frame.
pub const VNET_HDR_LEN: usize = 12;
/// An Ethernet header: the shortest frame worth sending.
pub const ETH_HLEN: usize = 14;
/// The largest header plus frame either direction handles (a 64 KiB IP packet in an
/// Ethernet frame with a VLAN tag, and the header).
pub const MAX_BUFFER_LEN: usize = 65562;
/// Chains or frames handled per call before returning to the worker's loop, so that one
/// busy direction cannot starve the other or delay a stop.
pub const BUDGET: usize = 256;
/// Consecutive failed tap reads after which [`Rx::process`] gives up on the tap.
pub const MAX_TAP_ERRORS: usize = 16;

/// The header given to the guest with every received frame: no flags, no GSO,
/// `num_buffers = 1` (little-endian, at offset 10).
pub(crate) const RX_HEADER: [u8; VNET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// A source and sink of frames, each with its 12-byte vnet header in front: the tap, or
/// [`FakeFrames`].
pub trait Frames {
    /// Reads one frame (header included) into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (header included); returns the bytes written.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
}

/// An in-memory fake of the tap, for tests and the fuzz target.
#[derive(Debug, Default)]
pub struct FakeFrames {
    /// Frames (with header) the host side sends to the guest, read in order.
    pub to_guest: VecDeque<Vec<u8>>,
    /// Frames (with header) the guest sent.
    pub from_guest: Vec<Vec<u8>>,
    /// When set, every read fails with this error.
    pub read_error: Option<io::ErrorKind>,
    /// When set, every write fails with this error.
    pub write_error: Option<io::ErrorKind>,
}

impl Frames for FakeFrames {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(kind) = self.read_error {
            return Err(kind.into());
        }
        let frame = self.to_guest.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        // A tap truncates a frame larger than the read buffer the same way.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        if let Some(kind) = self.write_error {
            return Err(kind.into());
        }
        self.from_guest.push(frame.to_vec());
        Ok(frame.len())
    }
}

type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// The next available chain, or an error of the queue itself (an available index that
/// runs more than a queue size ahead, a ring outside memory).
fn pop<'m>(queue: &mut Queue, mem: &'m GuestMemoryMmap) -> Result<Option<Chain<'m>>, virtio_queue::Error> {
    Ok(queue.iter(mem)?.next())
}

/// What one [`Tx::process`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxProgress {
    /// The guest must be interrupted.
    pub signal: bool,
    /// The budget ran out with chains still waiting: call again.
    pub more: bool,
}

/// The transmit queue's state: a bounded buffer a chain is gathered into.
pub struct Tx {
    buf: Vec<u8>,
    complaints: RateLimit,
}

impl Default for Tx {
    fn default() -> Self {
        Self::new()
    }
}

impl Tx {
    /// A transmit side with its buffer of [`MAX_BUFFER_LEN`] bytes.
    pub fn new() -> Self {
        Self { buf: vec![0; MAX_BUFFER_LEN], complaints: RateLimit::default() }
    }

    /// Sends the available chains of `queue` (at most [`BUDGET`]) to `frames`.
    pub fn process<F: Frames>(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        frames: &mut F,
        metrics: &NetMetrics,
    ) -> TxProgress {
        // `transmit` and `queue_error` share the log limiter; `drain` never calls both at once.
        let this = std::cell::RefCell::new(self);
        let done = drain(
            mem,
            queue,
            BUDGET,
            |chain| {
                this.borrow_mut().transmit(mem, chain, frames, metrics);
                0
            },
            |what, e| this.borrow_mut().queue_error(metrics, what, e),
        );
        TxProgress { signal: done.signal, more: done.more }
    }

    fn transmit<F: Frames>(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>, frames: &mut F, metrics: &NetMetrics) {
        let len = match self.gather(mem, chain) {
            Ok(len) => len,
            Err(why) => {
                NetMetrics::inc(&metrics.tx_bad_chains);
                if self.complaints.hit() {
                    tracing::warn!(device = "virtio-net", "dropped a tx chain: {why}");
                }
                return;
            }
        };
        let frame = &mut self.buf[..len];
        // Only VIRTIO_NET_HDR_F_NEEDS_CSUM and GSO would mean anything, and neither was
        // negotiated: the tap gets a header of zeroes whatever the guest wrote.
        if frame[0] != 0 || frame[1] != VIRTIO_NET_HDR_GSO_NONE as u8 {
            NetMetrics::inc(&metrics.tx_bad_headers);
        }
        frame[..VNET_HDR_LEN].fill(0);
        match frames.write_frame(frame) {
            Ok(n) if n == len => {
                NetMetrics::inc(&metrics.tx_frames);
                NetMetrics::add(&metrics.tx_bytes, (len - VNET_HDR_LEN) as u64);
            }
            Ok(n) => self.tap_error(metrics, &io::Error::other(format!("short write of {n} of {len} bytes"))),
            Err(e) => self.tap_error(metrics, &e),
        }
    }

    /// Copies a valid chain (device-readable only, header and Ethernet header at least,
    /// [`MAX_BUFFER_LEN`] at most, inside guest memory) into the buffer.
    fn gather(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> Result<usize, &'static str> {
        let mut total = 0usize;
        for desc in chain.clone() {
            if desc.is_write_only() {
                return Err("device-writable descriptor in a tx chain");
            }
            total = total.saturating_add(desc.len() as usize);
            if total > MAX_BUFFER_LEN {
                return Err("longer than 65562 bytes");
            }
        }
        if total < VNET_HDR_LEN + ETH_HLEN {
            return Err("shorter than a header and an Ethernet header");
        }
        let mut reader = Reader::new(mem, chain).map_err(|_| "buffer outside guest memory")?;
        if reader.available_bytes() != total {
            return Err("chain changed while it was read");
        }
        reader.read_exact(&mut self.buf[..total]).map_err(|_| "reading the chain failed")?;
        Ok(total)
    }

    fn tap_error(&mut self, metrics: &NetMetrics, e: &io::Error) {
        NetMetrics::inc(&metrics.tx_tap_errors);
        if self.complaints.hit() {
            tracing::warn!(device = "virtio-net", error = %e, "the tap refused a frame; dropped");
        }
    }

    fn queue_error(&mut self, metrics: &NetMetrics, what: &str, e: &virtio_queue::Error) {
        NetMetrics::inc(&metrics.queue_errors);
        if self.complaints.hit() {
            tracing::warn!(device = "virtio-net", error = %e, "{what}");
        }
    }
}

/// Why [`Rx::process`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxStop {
    /// The tap has no more frames: wait for it to be readable.
    TapDrained,
    /// A frame is waiting and the guest has no buffer: stop reading the tap until the guest
    /// adds buffers (notifications are enabled).
    NoBuffers,
    /// The budget ran out: call again.
    Budget,
    /// The tap keeps failing: stop reading it.
    TapFailed,
}

/// What one [`Rx::process`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxProgress {
    /// The guest must be interrupted.
    pub signal: bool,
    /// Why it stopped.
    pub stop: RxStop,
}

/// Why a frame could not go into a chain.
enum Deliver {
    /// The chain is malformed: complete it empty.
    BadChain(&'static str),
    /// The chain is fine but smaller than the frame: drop the frame, keep the chain.
    TooSmall,
}

/// The receive queue's state: a buffer holding at most one frame the guest has no room
/// for yet.
pub struct Rx {
    buf: Vec<u8>,
    pending: Option<usize>,
    complaints: RateLimit,
}

impl Default for Rx {
    fn default() -> Self {
        Self::new()
    }
}

impl Rx {
    /// A receive side with its buffer of [`MAX_BUFFER_LEN`] bytes.
    pub fn new() -> Self {
        Self { buf: vec![0; MAX_BUFFER_LEN], pending: None, complaints: RateLimit::default() }
    }

    /// Whether a frame read from the tap waits for a guest buffer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Moves frames from `frames` into the buffers of `queue` (at most [`BUDGET`] reads)
    /// until the tap is drained or the guest has no buffer left.
    pub fn process<F: Frames>(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        frames: &mut F,
        metrics: &NetMetrics,
    ) -> RxProgress {
        let mut used = false;
        let mut budget = BUDGET;
        let mut errors = 0;
        let mut empty_pops = 0;
        let stop = loop {
            let len = match self.pending {
                Some(len) => len,
                None => {
                    if budget == 0 {
                        break RxStop::Budget;
                    }
                    budget -= 1;
                    match frames.read_frame(&mut self.buf) {
                        Ok(n) => {
                            errors = 0;
                            match self.check_frame(n) {
                                Ok(()) => self.pending = Some(n),
                                Err(why) => self.bad_frame(metrics, why),
                            }
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break RxStop::TapDrained,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            NetMetrics::inc(&metrics.rx_tap_errors);
                            if self.complaints.hit() {
                                tracing::warn!(device = "virtio-net", error = %e, "reading the tap");
                            }
                            errors += 1;
                            if errors >= MAX_TAP_ERRORS {
                                break RxStop::TapFailed;
                            }
                            continue;
                        }
                    }
                }
            };
            let chain = match pop(queue, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    // Out of buffers: ask to be notified, then look once more in case the
                    // driver added some meanwhile. A second empty look after "more
                    // available" means the ring is lying: wait for a notification.
                    empty_pops += 1;
                    match queue.enable_notification(mem) {
                        Ok(true) if empty_pops < 2 => continue,
                        Ok(_) => {}
                        Err(e) => self.queue_error(metrics, "enabling rx notifications", &e),
                    }
                    NetMetrics::inc(&metrics.rx_no_buffers);
                    break RxStop::NoBuffers;
                }
                Err(e) => {
                    self.queue_error(metrics, "reading the rx available ring", &e);
                    break RxStop::NoBuffers;
                }
            };
            empty_pops = 0;
            let head = chain.head_index();
            match self.deliver(mem, chain, len) {
                Ok(()) => {
                    self.pending = None;
                    NetMetrics::inc(&metrics.rx_frames);
                    NetMetrics::add(&metrics.rx_bytes, (len - VNET_HDR_LEN) as u64);
                    // `len` <= MAX_BUFFER_LEN fits in a u32.
                    self.complete(mem, queue, head, len as u32, metrics, &mut used);
                }
                Err(Deliver::TooSmall) => {
                    self.pending = None;
                    NetMetrics::inc(&metrics.rx_frames_too_big);
                    if self.complaints.hit() {
                        tracing::warn!(device = "virtio-net", len, "dropped a frame larger than the guest's rx buffer");
                    }
                    // The chain goes back to the ring for the next frame.
                    queue.go_to_previous_position();
                }
                Err(Deliver::BadChain(why)) => {
                    NetMetrics::inc(&metrics.rx_bad_chains);
                    if self.complaints.hit() {
                        tracing::warn!(device = "virtio-net", "completed a bad rx chain empty: {why}");
                    }
                    self.complete(mem, queue, head, 0, metrics, &mut used);
                }
            }
        };
        RxProgress { signal: signal_or(mem, queue, used, |_| NetMetrics::inc(&metrics.queue_errors)), stop }
    }

    fn check_frame(&self, n: usize) -> Result<(), &'static str> {
        if n < VNET_HDR_LEN + ETH_HLEN {
            return Err("shorter than a header and an Ethernet header");
        }
        if self.buf[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0 || self.buf[1] != VIRTIO_NET_HDR_GSO_NONE as u8 {
            return Err("asks for checksum or GSO offloads that were not negotiated");
        }
        Ok(())
    }

    fn bad_frame(&mut self, metrics: &NetMetrics, why: &str) {
        NetMetrics::inc(&metrics.rx_bad_frames);
        if self.complaints.hit() {
            tracing::warn!(device = "virtio-net", "dropped a frame from the tap: {why}");
        }
    }

    /// Writes the pending frame (`len` bytes with the header) into `chain`.
    fn deliver(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>, len: usize) -> Result<(), Deliver> {
        if chain.clone().any(|desc| !desc.is_write_only()) {
            return Err(Deliver::BadChain("device-readable descriptor in an rx chain"));
        }
        let mut writer = Writer::new(mem, chain).map_err(|_| Deliver::BadChain("buffer outside guest memory"))?;
        let room = writer.available_bytes();
        if room < VNET_HDR_LEN {
            return Err(Deliver::BadChain("smaller than the header"));
        }
        if room < len {
            return Err(Deliver::TooSmall);
        }
        writer
            .write_all(&RX_HEADER)
            .and_then(|()| writer.write_all(&self.buf[VNET_HDR_LEN..len]))
            .map_err(|_| Deliver::BadChain("writing the chain failed"))
    }

    fn complete(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        head: u16,
        len: u32,
        metrics: &NetMetrics,
        used: &mut bool,
    ) {
        match queue.add_used(mem, head, len) {
            Ok(()) => *used = true,
            Err(e) => self.queue_error(metrics, "completing an rx chain", &e),
        }
    }

    fn queue_error(&mut self, metrics: &NetMetrics, what: &str, e: &virtio_queue::Error) {
        NetMetrics::inc(&metrics.queue_errors);
        if self.complaints.hit() {
            tracing::warn!(device = "virtio-net", error = %e, "{what}");
        }
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
pub(crate) mod tests;
