//! The virtio-fs worker thread: sets the backend up (under the device seccomp filter, which
//! allows `sendmsg`/`recvmsg`), forwards the backend's used-buffer notifications as
//! interrupts, notices the backend hanging up, and takes the queues back when it stops.

use std::os::fd::AsRawFd;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::Backend;
use super::metrics::FsMetrics;
use super::{FsError, NAME};
use crate::devices::virtio::worker::{Waiter, STOP_TOKEN};
use crate::devices::virtio::Interrupt;

/// The token of the backend's socket (the call eventfds use their queue index).
const SOCKET_TOKEN: u64 = 1 << 32;

/// Everything the worker owns while the device is active.
pub(super) struct FsWorker {
    pub backend: Backend,
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    /// The transport's queue eventfds (KVM ioeventfds), handed to the backend as kicks.
    pub kicks: Vec<EventFd>,
    /// The eventfds the backend signals used buffers on.
    pub calls: Vec<EventFd>,
    pub interrupt: Arc<Interrupt>,
    pub acked_features: u64,
    pub metrics: Arc<FsMetrics>,
    /// Receives the outcome of the setup.
    pub ready: Sender<Result<(), FsError>>,
}

impl FsWorker {
    fn watch(&self, waiter: &mut Waiter) -> std::io::Result<()> {
        for (i, call) in self.calls.iter().enumerate() {
            waiter.add(call.as_raw_fd(), i as u64, EventSet::IN)?;
        }
        // Not IN: the replies on the socket are read by the requests themselves.
        waiter.add(self.backend.raw_fd(), SOCKET_TOKEN, EventSet::READ_HANG_UP)
    }

    /// The thread body: returns when the stop eventfd fires (or the setup or epoll fails).
    pub fn run(mut self, mut waiter: Waiter) {
        let mut started = Vec::new();
        let setup = self
            .backend
            .start(&self.mem, &self.queues, &self.kicks, &self.calls, self.acked_features, &mut started)
            .and_then(|()| {
                self.watch(&mut waiter).map_err(|e| FsError::Unsuitable {
                    socket: self.backend.socket().to_owned(),
                    reason: format!("watching its eventfds: {e}"),
                })
            });
        let ok = setup.is_ok();
        if !ok {
            self.backend.stop(&started);
        }
        // Nobody waits any more when the activation timed out.
        let _ = self.ready.send(setup);
        if ok {
            self.serve(&mut waiter);
            self.backend.stop(&started);
        }
    }

    fn serve(&mut self, waiter: &mut Waiter) {
        loop {
            let events = match waiter.wait(-1) {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(device = NAME, error = %e, "waiting for events; the device is dead");
                    return;
                }
            };
            for (token, _) in events {
                match token {
                    STOP_TOKEN => return,
                    SOCKET_TOKEN => {
                        tracing::error!(device = NAME, socket = self.backend.socket(), "the vhost-user backend hung up; the device is dead");
                        FsMetrics::inc(&self.metrics.backend_errors);
                        // Level-triggered: stop watching, or it fires for ever.
                        if let Err(e) = waiter.remove(self.backend.raw_fd()) {
                            tracing::error!(device = NAME, error = %e, "unwatching the backend socket; the device is dead");
                            return;
                        }
                    }
                    i => {
                        let Some(call) = usize::try_from(i).ok().and_then(|i| self.calls.get(i)) else { continue };
                        // EAGAIN (already read) is harmless: interrupting once more is too.
                        let _ = call.read();
                        FsMetrics::inc(&self.metrics.interrupts);
                        self.interrupt.signal_used();
                    }
                }
            }
        }
    }
}
