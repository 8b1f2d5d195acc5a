//! The vsock worker thread: one epoll set over the three queue eventfds, the listener and
//! every host stream. Tx is processed when the guest notifies, rx whenever the backend has
//! packets and the guest has buffers (it notifies the rx queue when it adds some).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, Registry, LISTENER_TOKEN};
use super::queue::{QueueHandler, VsockBackend};
use crate::devices::virtio::worker::{Waiter, STOP_TOKEN};
use crate::devices::virtio::Interrupt;

/// Token of the rx queue's eventfd.
pub const RX_TOKEN: u64 = 0;
/// Token of the tx queue's eventfd.
pub const TX_TOKEN: u64 = 1;
/// Token of the event queue's eventfd.
pub const EVENT_TOKEN: u64 = 2;

impl Registry for Waiter {
    fn add(&mut self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        Waiter::add(self, fd, token, events)
    }
    fn modify(&mut self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        Waiter::modify(self, fd, token, events)
    }
    fn remove(&mut self, fd: RawFd) -> std::io::Result<()> {
        Waiter::remove(self, fd)
    }
}

/// Everything the worker thread owns.
pub struct VsockWorker {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The rx queue (host to guest).
    pub rxq: Queue,
    /// The tx queue (guest to host).
    pub txq: Queue,
    /// The event queue: its buffers are kept; the only event sent is a transport reset, once,
    /// when the device was restored from a save.
    pub evq: Queue,
    /// Send `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` first (a restored VM: the connections the
    /// guest had are gone with the saved VM's host side).
    pub reset_event: bool,
    /// Queue eventfds, in queue order.
    pub evts: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The backend.
    pub muxer: Muxer,
    /// The queue processing state.
    pub handler: QueueHandler,
}

fn drain(evt: Option<&EventFd>) {
    // The eventfds are non-blocking: a spurious wakeup reads EAGAIN, which is fine.
    if let Some(evt) = evt {
        let _ = evt.read();
    }
}

fn timeout_ms(deadline: Option<Instant>, now: Instant) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let ms = d.saturating_duration_since(now).as_micros().div_ceil(1000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    }
}

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest drops its connections, keeps its
/// listeners, and reads the guest CID again.
const EVENT_TRANSPORT_RESET: u32 = 0;

impl VsockWorker {
    /// Puts a transport reset event in the guest's first event buffer.
    fn send_transport_reset(&mut self) {
        use vm_memory::Bytes;
        let Some(chain) = self.evq.pop_descriptor_chain(&self.mem) else {
            tracing::warn!("virtio-vsock: no event buffer for the transport reset of a restored VM; its connections stay until they time out");
            return;
        };
        let head = chain.head_index();
        let written = chain
            .clone()
            .find(|d| d.is_write_only() && d.len() >= 4)
            .map(|d| self.mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr()).is_ok())
            .unwrap_or(false);
        let len = if written { 4 } else { 0 };
        if !written {
            tracing::warn!("virtio-vsock: the event buffer cannot hold an event; no transport reset sent");
        }
        if let Err(e) = self.evq.add_used(&self.mem, head, len) {
            tracing::warn!(error = ?e, "virtio-vsock: returning the event buffer");
        }
        self.interrupt.signal_used();
        tracing::info!("virtio-vsock: transport reset sent to the restored guest");
    }

    /// Serves the device until `waiter` reports [`STOP_TOKEN`] (or epoll itself fails); hands
    /// itself back (its queues, for a save).
    pub fn run(mut self, mut waiter: Waiter) -> Self {
        for (token, evt) in (0u64..).zip(&self.evts) {
            if let Err(e) = waiter.add(evt.as_raw_fd(), token, EventSet::IN) {
                tracing::error!(error = %e, "virtio-vsock: watching a queue eventfd");
                return self;
            }
        }
        if std::mem::take(&mut self.reset_event) {
            self.send_transport_reset();
        }
        tracing::debug!(cid = self.muxer.guest_cid(), event_queue = self.evq.size(), "virtio-vsock worker started");
        let (mut tx_more, mut rx_more) = (false, false);
        loop {
            self.muxer.sync(&mut waiter);
            let timeout = if tx_more || rx_more { 0 } else { timeout_ms(self.muxer.next_deadline(), Instant::now()) };
            let ready = match waiter.wait(timeout) {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!(error = %e, "virtio-vsock: epoll wait failed, the device stops");
                    return self;
                }
            };
            let (mut kick_tx, mut kick_rx) = (tx_more, rx_more);
            for (token, events) in ready {
                match token {
                    STOP_TOKEN => return self,
                    RX_TOKEN => {
                        drain(self.evts.first());
                        kick_rx = true;
                    }
                    TX_TOKEN => {
                        drain(self.evts.get(1));
                        kick_tx = true;
                    }
                    EVENT_TOKEN => drain(self.evts.get(2)),
                    LISTENER_TOKEN => self.muxer.accept(),
                    token => self.muxer.handle_event(token, events),
                }
            }
            self.muxer.sweep(Instant::now());
            let mut notify = false;
            tx_more = false;
            if kick_tx {
                let p = self.handler.process_tx(&self.mem, &mut self.txq, &mut self.muxer);
                notify |= p.notify;
                tx_more = p.more;
            }
            rx_more = false;
            if kick_rx || self.muxer.has_pending_rx() {
                let p = self.handler.process_rx(&self.mem, &mut self.rxq, &mut self.muxer);
                notify |= p.notify;
                rx_more = p.more;
            }
            if notify {
                self.interrupt.signal_used();
            }
        }
    }
}
