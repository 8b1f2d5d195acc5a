//! The console's worker thread: one epoll set over the queue eventfds, the port listeners and
//! the connected host streams, calling the functions of `queue.rs`.
//!
//! Interest follows the state (level-triggered): a listener is watched only while its port
//! may accept; a stream is watched for input only while the guest has the port open, knows
//! the host is there and has receive buffers, and for output only while a guest write waits
//! for room. A peer that closed while the guest still reads is taken off epoll (a hang-up
//! cannot be masked) and drained as buffers come, then disconnected.

use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::control::ControlState;
use super::host::HostPort;
use super::metrics::ConsoleMetrics;
use super::queue::{self, PendingTx, RxEnd, Scratch, TxCounters};
use crate::logger::RateLimit;
use crate::devices::virtio::worker::{Waiter, STOP_TOKEN};
use crate::devices::virtio::Interrupt;

/// Queue indexes of port 0 and the control queues.
const PORT0_TX: usize = 1;
const CONTROL_RX: usize = 2;
const CONTROL_TX: usize = 3;
/// Epoll tokens: queues are their index; listeners and streams carry the port index.
const LISTENER_TOKEN: u64 = 1 << 32;
const STREAM_TOKEN: u64 = 2 << 32;

/// Where the host sockets live between activations.
pub type HostSlot = Arc<Mutex<Vec<HostPort>>>;

/// Receive and transmit queue indexes of the port at index `p` (port id `p + 1`): 4+2p, 5+2p.
fn port_queues(p: usize) -> (usize, usize) {
    (4 + 2 * p, 5 + 2 * p)
}

#[derive(Default)]
struct Link {
    pending: Option<PendingTx>,
    /// The receive queue was empty last time: wait for a kick before reading the host.
    rx_starved: bool,
    /// The host hung up while the guest still reads: drain, then disconnect.
    peer_closed: bool,
    /// The listener reported a waiting connection.
    accept_ready: bool,
    listener_reg: Option<EventSet>,
    stream_reg: Option<EventSet>,
}

/// The state of one activation.
pub struct Engine {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    control: ControlState,
    hosts: Vec<HostPort>,
    slot: HostSlot,
    links: Vec<Link>,
    metrics: Arc<ConsoleMetrics>,
    scratch: Scratch,
    signal: bool,
    complaints: RateLimit,
}

impl Engine {
    /// Takes the host sockets out of `slot` (they go back when the engine is dropped).
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        evts: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
        names: &[String],
        slot: HostSlot,
        metrics: Arc<ConsoleMetrics>,
    ) -> Self {
        let hosts = std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
        let mut control = ControlState::new(names);
        for (id, host) in (1..).zip(&hosts) {
            control.set_host_connected(id, host.stream.is_some());
        }
        let links = hosts.iter().map(|_| Link::default()).collect();
        Self {
            mem,
            queues,
            evts,
            interrupt,
            control,
            hosts,
            slot,
            links,
            metrics,
            scratch: Scratch::default(),
            signal: false,
            complaints: RateLimit::default(),
        }
    }

    fn complain(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self.complaints.hit() {
            tracing::warn!(device = "virtio-console", error = %error, "{what}");
        }
    }

    /// Handles one epoll event.
    fn handle(&mut self, token: u64, events: EventSet) {
        if let Ok(q) = usize::try_from(token) {
            if q < self.evts.len() {
                // A failed read only means the counter was already 0.
                let _ = self.evts[q].read();
                return self.queue_event(q);
            }
        }
        let p = usize::try_from(token & 0xffff_ffff).unwrap_or(usize::MAX);
        if p >= self.hosts.len() {
            return;
        }
        match token & !0xffff_ffff {
            LISTENER_TOKEN => self.links[p].accept_ready = true,
            STREAM_TOKEN => self.stream_event(p, events),
            _ => {}
        }
    }

    /// The driver notified queue `q`.
    pub fn queue_event(&mut self, q: usize) {
        match q {
            PORT0_TX => {
                let dropped = &self.metrics.port0_dropped_bytes;
                let counters = TxCounters { sent: dropped, dropped };
                let out = queue::transmit::<std::io::Sink>(
                    &self.mem,
                    &mut self.queues[q],
                    &mut None,
                    None,
                    &counters,
                    &self.metrics,
                    &mut self.scratch,
                );
                self.signal |= out.served.signal;
                if out.served.more {
                    self.kick(q);
                }
            }
            CONTROL_RX => self.flush_control(),
            CONTROL_TX => {
                let (rx, tx) = match self.queues.get_mut(CONTROL_RX..=CONTROL_TX) {
                    Some([rx, tx]) => (rx, tx),
                    _ => return,
                };
                let (mem, metrics) = (&self.mem, &self.metrics);
                let out = queue::receive_control(mem, tx, rx, &mut self.control, metrics, &mut self.scratch);
                self.signal |= out.signal;
                if out.more {
                    self.kick(q);
                }
            }
            q if q >= 4 => {
                let p = (q - 4) / 2;
                if p >= self.hosts.len() {
                    return;
                }
                if q % 2 == 0 {
                    self.links[p].rx_starved = false;
                    self.rx(p);
                } else {
                    self.tx(p);
                }
            }
            // Port 0's receive queue: port 0 has no host, nothing is ever sent on it.
            _ => {}
        }
    }

    /// Makes the worker come back to queue `q` after serving the others.
    fn kick(&mut self, q: usize) {
        if let Err(e) = self.evts[q].write(1) {
            self.complain("re-arming a queue", &e);
        }
    }

    fn flush_control(&mut self) {
        let rx = &mut self.queues[CONTROL_RX];
        self.signal |= queue::send_control(&self.mem, rx, &mut self.control, &self.metrics, &mut self.scratch);
    }

    fn tx(&mut self, p: usize) {
        let (_, q) = port_queues(p);
        let m = &self.metrics.ports[p];
        let counters = TxCounters { sent: &m.bytes_to_host, dropped: &m.dropped_bytes };
        let host = self.hosts[p].stream.as_mut();
        let link = &mut self.links[p];
        let txq = &mut self.queues[q];
        let out = queue::transmit(&self.mem, txq, &mut link.pending, host, &counters, &self.metrics, &mut self.scratch);
        self.signal |= out.served.signal;
        if let Some(e) = out.error {
            tracing::info!(device = "virtio-console", port = p + 1, error = %e, "writing to the host failed");
            self.disconnect(p);
        } else if out.served.more {
            self.kick(q);
        }
    }

    fn rx(&mut self, p: usize) {
        let id = p as u32 + 1;
        if !self.control.rx_allowed(id) {
            return;
        }
        let (q, _) = port_queues(p);
        let Some(host) = self.hosts[p].stream.as_mut() else { return };
        let counter = &self.metrics.ports[p].bytes_to_guest;
        let rxq = &mut self.queues[q];
        let (signal, end) = queue::receive(&self.mem, rxq, host, counter, &self.metrics, &mut self.scratch);
        self.signal |= signal;
        match end {
            RxEnd::NoBuffers => self.links[p].rx_starved = true,
            RxEnd::Drained => {}
            RxEnd::Eof => self.disconnect(p),
            RxEnd::Error(e) => {
                tracing::info!(device = "virtio-console", port = id, error = %e, "reading from the host failed");
                self.disconnect(p);
            }
            // Level-triggered input brings us back, unless the stream is off epoll.
            RxEnd::Budget if self.links[p].peer_closed => self.kick(q),
            RxEnd::Budget => {}
        }
    }

    fn stream_event(&mut self, p: usize, events: EventSet) {
        if events.contains(EventSet::IN) {
            self.rx(p);
        }
        if events.contains(EventSet::OUT) && self.hosts[p].stream.is_some() {
            self.tx(p);
        }
        if self.hosts[p].stream.is_none() || !events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            return;
        }
        if events.contains(EventSet::ERROR) {
            return self.disconnect(p);
        }
        // The peer is gone: a waiting write fails (and disconnects); what it sent before
        // still goes to the guest if the guest is reading.
        self.links[p].peer_closed = true;
        self.tx(p);
        if self.hosts[p].stream.is_some() {
            if self.control.rx_allowed(p as u32 + 1) {
                self.rx(p);
            } else {
                self.disconnect(p);
            }
        }
    }

    fn disconnect(&mut self, p: usize) {
        if self.hosts[p].stream.take().is_none() {
            return;
        }
        // Closing the stream removed it from the epoll set.
        let link = &mut self.links[p];
        link.stream_reg = None;
        link.peer_closed = false;
        link.rx_starved = false;
        self.control.set_host_connected(p as u32 + 1, false);
        self.metrics.ports[p].host_disconnects.inc();
        tracing::info!(device = "virtio-console", port = p + 1, "host disconnected");
        if self.links[p].pending.is_some() {
            // No host now: the rest of the waiting write is dropped.
            self.tx(p);
        }
    }

    fn accept(&mut self, p: usize) {
        self.links[p].accept_ready = false;
        match self.hosts[p].accept() {
            Ok(Some(stream)) => {
                self.hosts[p].stream = Some(stream);
                self.control.set_host_connected(p as u32 + 1, true);
                self.metrics.ports[p].host_connects.inc();
                tracing::info!(device = "virtio-console", port = p + 1, "host connected");
            }
            Ok(None) => {}
            Err(e) => self.complain("accepting a host connection", &e),
        }
    }

    /// After a batch of events: ends drained streams, accepts waiting hosts and sends what
    /// the driver has to hear.
    pub fn settle(&mut self) {
        for p in 0..self.hosts.len() {
            if self.links[p].peer_closed && !self.control.rx_allowed(p as u32 + 1) {
                self.disconnect(p);
            }
        }
        // PORT_OPEN 0 must reach the driver before the next host is accepted.
        self.flush_control();
        for p in 0..self.hosts.len() {
            if self.links[p].accept_ready && self.hosts[p].stream.is_none() && self.control.can_accept(p as u32 + 1) {
                self.accept(p);
            }
        }
        self.flush_control();
    }

    /// Brings the epoll interests in line with the state.
    fn sync_interest(&mut self, waiter: &mut Waiter) {
        for p in 0..self.hosts.len() {
            let id = p as u32 + 1;
            let host = &self.hosts[p];
            let link = &self.links[p];
            let accept = host.stream.is_none() && self.control.can_accept(id);
            let listen = if accept { EventSet::IN } else { EventSet::empty() };
            let stream = host.stream.as_ref().filter(|_| !link.peer_closed).map(|_| {
                let mut set = EventSet::empty();
                if self.control.rx_allowed(id) && !link.rx_starved {
                    set |= EventSet::IN;
                }
                if link.pending.is_some() {
                    set |= EventSet::OUT;
                }
                set
            });
            let listener_fd = host.listener_fd();
            let stream_fd = host.stream.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
            let link = &mut self.links[p];
            let mut failures = [None, None];
            if link.listener_reg != Some(listen) {
                let r = if link.listener_reg.is_some() {
                    waiter.modify(listener_fd, LISTENER_TOKEN | p as u64, listen)
                } else {
                    waiter.add(listener_fd, LISTENER_TOKEN | p as u64, listen)
                };
                match r {
                    Ok(()) => link.listener_reg = Some(listen),
                    Err(e) => failures[0] = Some(e),
                }
            }
            if let (Some(fd), true) = (stream_fd, link.stream_reg != stream) {
                let token = STREAM_TOKEN | p as u64;
                let r = match (link.stream_reg, stream) {
                    (None, Some(set)) => waiter.add(fd, token, set),
                    (Some(_), Some(set)) => waiter.modify(fd, token, set),
                    (_, None) => waiter.remove(fd),
                };
                match r {
                    Ok(()) => link.stream_reg = stream,
                    Err(e) => failures[1] = Some(e),
                }
            }
            for e in failures.into_iter().flatten() {
                self.complain("updating the epoll set", &e);
            }
        }
    }

    fn raise_interrupt(&mut self) {
        if std::mem::take(&mut self.signal) {
            self.interrupt.signal_used();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The sockets and any connected host outlive the activation.
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = std::mem::take(&mut self.hosts);
    }
}

impl Engine {
    /// Replaces the control state (a restored console's).
    pub fn with_control(mut self, control: ControlState) -> Self {
        self.control = control;
        self
    }

    /// The queues and control state for a save; refused while a guest write waits for its
    /// host (its descriptor chain is the device's and cannot be handed back).
    pub fn save(&self) -> Result<(Vec<virtio_queue::QueueState>, super::control::SavedControl), String> {
        if let Some(p) = self.links.iter().position(|l| l.pending.is_some()) {
            return Err(format!("port {} has a guest write waiting for its host; save again once it drained", p + 1));
        }
        Ok((self.queues.iter().map(Queue::state).collect(), self.control.save()))
    }
}

/// The worker thread's body: serves until the stop eventfd fires, then hands the engine back
/// (for a save; dropping it puts the sockets back).
pub fn run(mut engine: Engine, mut waiter: Waiter) -> Engine {
    // A new waiter watches nothing yet (an engine that ran before, say until a save, had its
    // sockets on another one).
    for link in &mut engine.links {
        (link.listener_reg, link.stream_reg) = (None, None);
    }
    for (q, evt) in engine.evts.iter().enumerate() {
        if let Err(e) = waiter.add(std::os::fd::AsRawFd::as_raw_fd(evt), q as u64, EventSet::IN) {
            tracing::error!(device = "virtio-console", queue = q, error = %e, "watching a queue eventfd");
            return engine;
        }
    }
    // Whatever the driver queued before activation.
    for q in 0..engine.evts.len() {
        engine.queue_event(q);
    }
    loop {
        engine.settle();
        engine.sync_interest(&mut waiter);
        engine.raise_interrupt();
        let events = match waiter.wait(-1) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(device = "virtio-console", error = %e, "epoll wait failed; the device stops");
                return engine;
            }
        };
        for (token, set) in events {
            if token == STOP_TOKEN {
                return engine;
            }
            engine.handle(token, set);
        }
    }
}
