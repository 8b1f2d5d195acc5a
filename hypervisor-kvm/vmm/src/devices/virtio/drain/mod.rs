//! One pass over the chains a guest made available on a queue, as every device serves the
//! queues the guest fills (block requests, net and vsock transmit, console control):
//!
//! - guest notifications are suppressed while chains are taken, and re-enabled before the pass
//!   ends; with `VIRTIO_RING_F_EVENT_IDX` that publishes the avail event index, without it the
//!   `NO_NOTIFY` flag. A chain made available in between is seen by the look that follows;
//! - at most `budget` looks at the ring, so a guest that keeps the ring full, or a ring that
//!   claims chains it does not deliver, cannot hold the worker: the pass says `more`;
//! - an unusable ring (an available index more than a queue ahead, a ring outside memory)
//!   ends the pass and is reported to the device, which counts and logs it;
//! - whether to interrupt the guest is asked once at the end, of the driver's own
//!   suppression (an error reading it errs on the side of interrupting).

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// A chain of the guest's memory, as a device serves it.
pub type Chain<'m> = DescriptorChain<&'m GuestMemoryMmap>;

/// What one [`drain`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Chains returned to the used ring.
    pub used: u32,
    /// The guest must be interrupted.
    pub signal: bool,
    /// The budget ran out with chains possibly left: call again.
    pub more: bool,
}

/// Serves the available chains of `queue`: each goes to `serve`, which returns the length it
/// wrote into the chain's buffers, and then to the used ring. `ring_error` hears of each queue
/// error with what was being done (`"reading the available ring"`, ...).
pub fn drain<'m>(
    mem: &'m GuestMemoryMmap,
    queue: &mut Queue,
    budget: usize,
    mut serve: impl FnMut(Chain<'m>) -> u32,
    mut ring_error: impl FnMut(&'static str, &virtio_queue::Error),
) -> Drained {
    let mut done = Drained::default();
    let mut looks = 0;
    'pass: loop {
        if let Err(e) = queue.disable_notification(mem) {
            ring_error("disabling notifications", &e);
            break;
        }
        loop {
            if looks == budget {
                done.more = true;
                break 'pass;
            }
            looks += 1;
            // `iter` re-reads the available index, and refuses one more than a queue ahead.
            let chain = match queue.iter(mem) {
                Ok(mut avail) => avail.next(),
                Err(e) => {
                    ring_error("reading the available ring", &e);
                    break 'pass;
                }
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = serve(chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                ring_error("adding to the used ring", &e);
                break 'pass;
            }
            done.used += 1;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                ring_error("enabling notifications", &e);
                break;
            }
        }
    }
    done.signal = signal_or(mem, queue, done.used > 0, |e| {
        ring_error("reading the driver's interrupt suppression", e)
    });
    done
}

/// Whether the guest wants an interrupt, now that `used` says whether chains were returned
/// since the last interrupt. An error reading the driver's suppression errs on the side of
/// interrupting: a spurious interrupt costs the guest a look, a missing one hangs it.
pub fn signal(mem: &GuestMemoryMmap, queue: &mut Queue, used: bool) -> bool {
    signal_or(mem, queue, used, |_| {})
}

/// [`signal`], telling `ring_error` of an error reading the driver's suppression.
pub fn signal_or(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    used: bool,
    ring_error: impl FnOnce(&virtio_queue::Error),
) -> bool {
    used && queue.needs_notification(mem).unwrap_or_else(|e| {
        ring_error(&e);
        true
    })
}

#[cfg(test)]
mod tests;
