//! Rx and tx queue processing: functions over guest memory, one queue and a
//! [`VsockBackend`], with no threads and no epoll, so the worker, the unit tests and the fuzz
//! target all drive the same code.
//!
//! Tx chains (guest to host) hold a header and, for RW, the payload, split across any
//! number of readable descriptors; every header is validated before the backend sees it,
//! and the payload is never longer than the chain or [`MAX_PAYLOAD`]. Rx chains (host to
//! guest) are filled with one packet each, never beyond their writable length.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::metrics::VsockMetrics;
use super::packet::{Header, Op, PacketError, HDR_LEN, MAX_PAYLOAD, OP_RST, OP_RW};
use crate::logger::RateLimit;
use crate::devices::virtio::drain::{drain, signal};

/// What the queues exchange packets with (the [`Muxer`](super::muxer::Muxer), or a fake).
pub trait VsockBackend {
    /// The guest's CID, which every packet from the guest must carry as its source.
    fn guest_cid(&self) -> u64;
    /// A validated packet from the guest (`payload` is empty unless `op` is RW).
    fn send_pkt(&mut self, hdr: &Header, op: Op, payload: &[u8]);
    /// A packet from the guest that failed validation.
    fn reject_pkt(&mut self, hdr: &Header, err: &PacketError);
    /// Whether [`VsockBackend::recv_pkt`] may have a packet for the guest.
    fn has_pending_rx(&self) -> bool;
    /// The next packet for the guest, its payload written to `buf` (whose length bounds it);
    /// returns the header and the payload length, or `None` when there is nothing after all.
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)>;
}

/// Why a chain could not be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The chain's descriptors do not describe usable guest memory.
    #[error("descriptor chain")]
    Chain(#[source] virtio_queue::Error),
    /// An rx chain too small for a header.
    #[error("rx chain of {0} writable bytes is shorter than a header")]
    ShortRxChain(usize),
    /// The packet failed validation.
    #[error("invalid packet")]
    Packet(#[from] PacketError),
    /// Copying from or to guest memory failed.
    #[error("guest memory access")]
    Memory(#[source] std::io::Error),
    /// The used ring could not be updated.
    #[error("adding to the used ring")]
    Used(#[source] virtio_queue::Error),
}

/// What one processing pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Chains returned to the guest.
    pub used: u32,
    /// Whether the guest should be interrupted.
    pub notify: bool,
    /// Whether the pass stopped at its budget with chains possibly left (call again).
    pub more: bool,
}

/// Processes the vsock queues; holds the payload bounce buffer and the log rate limit.
pub struct QueueHandler {
    scratch: Vec<u8>,
    metrics: Arc<VsockMetrics>,
    complaints: RateLimit,
}

impl QueueHandler {
    /// A handler counting into `metrics`.
    pub fn new(metrics: Arc<VsockMetrics>) -> Self {
        Self { scratch: vec![0; MAX_PAYLOAD as usize], metrics, complaints: RateLimit::default() }
    }

    fn complain(&mut self, queue: &str, err: &QueueError) {
        if self.complaints.hit() {
            let cause = std::error::Error::source(err).map(ToString::to_string).unwrap_or_default();
            tracing::warn!(queue, error = %err, cause, "virtio-vsock: bad chain or packet");
        }
    }

    fn finish(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue, head: u16, len: u32, p: &mut Processed) {
        match queue.add_used(mem, head, len) {
            Ok(()) => p.used += 1,
            Err(e) => self.complain("used", &QueueError::Used(e)),
        }
    }

    fn signal(mem: &GuestMemoryMmap, queue: &mut Queue, p: &mut Processed) {
        p.notify = signal(mem, queue, p.used > 0);
    }

    /// Hands the guest's packets to `backend`, at most one queue size of chains per call.
    pub fn process_tx<B: VsockBackend>(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        backend: &mut B,
    ) -> Processed {
        let budget = usize::from(queue.size().max(1));
        // The chain handler and the ring-error report share the log limiter; `drain` never
        // calls both at once.
        let this = RefCell::new(self);
        let done = drain(
            mem,
            queue,
            budget,
            |chain| {
                let mut this = this.borrow_mut();
                if let Err(e) = this.tx_one(mem, chain, backend) {
                    this.complain("tx", &e);
                }
                0
            },
            |what, e| {
                let mut this = this.borrow_mut();
                if this.complaints.hit() {
                    tracing::warn!(queue = "tx", error = %e, "virtio-vsock: {what}");
                }
            },
        );
        Processed { used: done.used, notify: done.signal, more: done.more }
    }

    fn tx_one<B: VsockBackend>(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        backend: &mut B,
    ) -> Result<(), QueueError> {
        let bad_chain = |e| {
            VsockMetrics::inc(&self.metrics.bad_tx_chains);
            e
        };
        let mut reader = chain.reader(mem).map_err(|e| bad_chain(QueueError::Chain(e)))?;
        let total = reader.available_bytes();
        if total < HDR_LEN {
            return Err(bad_chain(PacketError::ShortHeader(total).into()));
        }
        let mut raw = [0u8; HDR_LEN];
        reader.read_exact(&mut raw).map_err(|e| bad_chain(QueueError::Memory(e)))?;
        let hdr = Header::from_bytes(&raw);
        VsockMetrics::inc(&self.metrics.tx_packets);
        let op = match hdr.validate(backend.guest_cid(), reader.available_bytes()) {
            Ok(op) => op,
            Err(e) => {
                VsockMetrics::inc(&self.metrics.bad_packets);
                backend.reject_pkt(&hdr, &e);
                return Err(e.into());
            }
        };
        // validate() bounds len by MAX_PAYLOAD, the scratch size, and by the chain.
        let len = hdr.len as usize;
        let payload = &mut self.scratch[..len];
        reader.read_exact(payload).map_err(QueueError::Memory)?;
        if op == Op::Rw {
            VsockMetrics::add(&self.metrics.tx_bytes, len as u64);
        }
        backend.send_pkt(&hdr, op, payload);
        Ok(())
    }

    /// Fills the guest's rx buffers with what `backend` has for it, at most one queue size
    /// of chains per call.
    pub fn process_rx<B: VsockBackend>(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        backend: &mut B,
    ) -> Processed {
        let budget = queue.size().max(1);
        let mut p = Processed::default();
        let mut popped = 0;
        while popped < budget && backend.has_pending_rx() {
            let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
            popped += 1;
            let head = chain.head_index();
            let len = match self.rx_one(mem, chain, backend) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    // Nothing after all (a stream had no data): keep the buffer.
                    queue.go_to_previous_position();
                    break;
                }
                Err(e) => {
                    self.complain("rx", &e);
                    0
                }
            };
            self.finish(mem, queue, head, len, &mut p);
        }
        p.more = popped == budget && backend.has_pending_rx();
        Self::signal(mem, queue, &mut p);
        p
    }

    fn rx_one<B: VsockBackend>(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        backend: &mut B,
    ) -> Result<Option<u32>, QueueError> {
        let bad_chain = |e| {
            VsockMetrics::inc(&self.metrics.bad_rx_chains);
            e
        };
        let mut writer = chain.writer(mem).map_err(|e| bad_chain(QueueError::Chain(e)))?;
        let room = writer.available_bytes();
        if room < HDR_LEN {
            return Err(bad_chain(QueueError::ShortRxChain(room)));
        }
        let data_room = (room - HDR_LEN).min(MAX_PAYLOAD as usize);
        let Some((mut hdr, n)) = backend.recv_pkt(&mut self.scratch[..data_room]) else {
            if data_room == 0 {
                // Only data is waiting and it does not fit: return the buffer rather than
                // retry it for ever.
                return Err(bad_chain(QueueError::ShortRxChain(room)));
            }
            return Ok(None);
        };
        let n = n.min(data_room);
        hdr.len = n as u32;
        writer.write_all(&hdr.to_bytes()).map_err(QueueError::Memory)?;
        writer.write_all(&self.scratch[..n]).map_err(QueueError::Memory)?;
        VsockMetrics::inc(&self.metrics.rx_packets);
        match hdr.op {
            OP_RW => VsockMetrics::add(&self.metrics.rx_bytes, n as u64),
            OP_RST => VsockMetrics::inc(&self.metrics.resets_sent),
            _ => {}
        }
        Ok(Some((HDR_LEN + n) as u32))
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
