//! The block device's worker thread: waits for queue notifications and serves the queue.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::disk::Disk;
use super::metrics::BlockMetrics;
use super::queue::process_queue;
use crate::logger::RateLimit;
use crate::devices::virtio::worker::{Waiter, STOP_TOKEN};
use crate::devices::virtio::Interrupt;

const QUEUE_TOKEN: u64 = 0;

/// Everything the worker owns while the device is active.
pub(super) struct BlockWorker {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub queue_evt: EventFd,
    pub interrupt: Arc<Interrupt>,
    pub disk: Arc<Disk>,
    pub metrics: Arc<BlockMetrics>,
}

impl BlockWorker {
    /// The thread body: returns itself (its queue, for a save) when the stop eventfd fires
    /// (or epoll fails).
    pub fn run(mut self, mut waiter: Waiter) -> Self {
        if let Err(e) = waiter.add(self.queue_evt.as_raw_fd(), QUEUE_TOKEN, EventSet::IN) {
            tracing::error!(device = super::NAME, error = %e, "watching the queue eventfd; the device is dead");
            return self;
        }
        let mut log = RateLimit::default();
        // Whatever is already available (say, after a notification that came while the
        // device was being activated) is served at once.
        let mut more = true;
        loop {
            let events = match waiter.wait(if more { 0 } else { -1 }) {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(device = super::NAME, error = %e, "waiting for events; the device is dead");
                    return self;
                }
            };
            if events.iter().any(|&(token, _)| token == STOP_TOKEN) {
                return self;
            }
            if events.iter().any(|&(token, _)| token == QUEUE_TOKEN) {
                // EAGAIN (nothing to read) is harmless: the queue is served below anyway.
                let _ = self.queue_evt.read();
                more = true;
            }
            if more {
                let done = process_queue(&self.mem, &mut self.queue, &self.disk, &self.metrics, &mut log);
                if done.notify {
                    self.interrupt.signal_used();
                }
                more = done.more;
            }
        }
    }
}
