//! The virtio-net worker thread: waits on the two queue eventfds, the tap and the stop
//! eventfd, and runs [`Tx`] and [`Rx`] over them. The tap is watched for input only while
//! the guest has receive buffers: when it runs out, the frame read last is kept and the tap
//! left alone until the driver notifies the receive queue.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::NetMetrics;
use super::queue::{Frames, Rx, RxStop, Tx};
use crate::logger::RateLimit;
use crate::devices::virtio::worker::{Waiter, Worker, STOP_TOKEN};
use crate::devices::virtio::Interrupt;

const RX_QUEUE: u64 = 0;
const TX_QUEUE: u64 = 1;
const TAP: u64 = 2;

/// What the worker owns.
pub struct Context<T> {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Queue 0.
    pub rx_queue: Queue,
    /// Queue 1.
    pub tx_queue: Queue,
    /// Notifications of queue 0.
    pub rx_evt: EventFd,
    /// Notifications of queue 1.
    pub tx_evt: EventFd,
    /// The backend (the tap; a socket in tests).
    pub tap: T,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The device's counters.
    pub metrics: Arc<NetMetrics>,
}

/// The running worker: it hands its context back when it stops (for a save).
pub type NetWorkerThread<T> = Worker<Option<Context<T>>>;

/// Starts the worker thread `name`; returns once it watches its file descriptors.
pub fn spawn<T>(name: &str, ctx: Context<T>) -> io::Result<NetWorkerThread<T>>
where
    T: Frames + AsRawFd + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel();
    let worker = Worker::spawn(name, move |mut waiter| {
        let setup = register(&mut waiter, &ctx);
        let ok = setup.is_ok();
        // The receiver waits below; it is gone only if `spawn` itself is gone.
        let _ = ready_tx.send(setup);
        ok.then(|| NetWorker::new(ctx).run(waiter))
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(worker),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the worker ended before it was ready")),
    }
}

fn register<T: AsRawFd>(waiter: &mut Waiter, ctx: &Context<T>) -> io::Result<()> {
    waiter.add(ctx.rx_evt.as_raw_fd(), RX_QUEUE, EventSet::IN)?;
    waiter.add(ctx.tx_evt.as_raw_fd(), TX_QUEUE, EventSet::IN)?;
    waiter.add(ctx.tap.as_raw_fd(), TAP, EventSet::IN)
}

struct NetWorker<T> {
    ctx: Context<T>,
    rx: Rx,
    tx: Tx,
    tap_watched: bool,
    tap_failed: bool,
    complaints: RateLimit,
}

impl<T: Frames + AsRawFd> NetWorker<T> {
    fn new(ctx: Context<T>) -> Self {
        Self {
            ctx,
            rx: Rx::new(),
            tx: Tx::new(),
            tap_watched: true,
            tap_failed: false,
            complaints: RateLimit::default(),
        }
    }

    /// Serves until stopped; hands the context back (a frame the guest had no room for yet
    /// is dropped, as a full NIC would).
    fn run(mut self, mut waiter: Waiter) -> Context<T> {
        let (mut tx_more, mut rx_more) = (false, false);
        loop {
            let timeout = if tx_more || rx_more { 0 } else { -1 };
            let events = match waiter.wait(timeout) {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(device = "virtio-net", error = %e, "waiting for events; the device stops");
                    return self.ctx;
                }
            };
            let (mut tx_kick, mut rx_kick) = (tx_more, rx_more);
            for (token, _) in events {
                match token {
                    STOP_TOKEN => return self.ctx,
                    RX_QUEUE => {
                        // A non-blocking eventfd already read to zero is fine.
                        let _ = self.ctx.rx_evt.read();
                        rx_kick = true;
                    }
                    TX_QUEUE => {
                        let _ = self.ctx.tx_evt.read();
                        tx_kick = true;
                    }
                    TAP => rx_kick = true,
                    _ => {}
                }
            }
            let mut signal = false;
            if tx_kick {
                let ctx = &mut self.ctx;
                let progress = self.tx.process(&ctx.mem, &mut ctx.tx_queue, &mut ctx.tap, &ctx.metrics);
                signal |= progress.signal;
                tx_more = progress.more;
            }
            rx_more = false;
            if rx_kick && !self.tap_failed {
                let ctx = &mut self.ctx;
                let progress = self.rx.process(&ctx.mem, &mut ctx.rx_queue, &mut ctx.tap, &ctx.metrics);
                signal |= progress.signal;
                rx_more = self.after_rx(progress.stop, &mut waiter);
            }
            if signal {
                self.ctx.interrupt.signal_used();
            }
        }
    }

    /// Watches the tap or not after an rx pass; true when the pass must be repeated.
    fn after_rx(&mut self, stop: RxStop, waiter: &mut Waiter) -> bool {
        match stop {
            RxStop::TapDrained => self.watch_tap(waiter, true),
            RxStop::Budget => {
                self.watch_tap(waiter, true);
                return true;
            }
            RxStop::NoBuffers => self.watch_tap(waiter, false),
            RxStop::TapFailed => {
                tracing::error!(device = "virtio-net", "the tap keeps failing; no more frames go to the guest");
                self.tap_failed = true;
                self.watch_tap(waiter, false);
            }
        }
        false
    }

    fn watch_tap(&mut self, waiter: &mut Waiter, on: bool) {
        if on == self.tap_watched {
            return;
        }
        let fd = self.ctx.tap.as_raw_fd();
        let result = if on { waiter.add(fd, TAP, EventSet::IN) } else { waiter.remove(fd) };
        match result {
            Ok(()) => self.tap_watched = on,
            Err(e) => {
                if self.complaints.hit() {
                    tracing::error!(device = "virtio-net", error = %e, on, "changing the tap's epoll interest");
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
