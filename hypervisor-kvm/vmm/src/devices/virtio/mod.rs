//! Virtio devices on the virtio-mmio transport (described to the guest in ACPI).
//!
//! A device model implements [`VirtioDevice`]: what it offers (type, features, queue sizes,
//! config space) and what it does once the driver sets `DRIVER_OK` ([`VirtioDevice::activate`]):
//! typically it spawns a worker thread that waits on the queue eventfds (KVM ioeventfds for
//! `QueueNotify`), its backend and a stop eventfd, and serves the queues through
//! `virtio_queue::Queue`, which validates every descriptor chain against guest memory.
//!
//! Everything in guest memory is controlled by an untrusted guest: a device must never panic
//! or block forever on what it finds there. A bad chain is logged (rate-limited), returned to
//! the guest with length 0 when possible, and the device goes on.

pub mod block;
pub mod console;
pub mod drain;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod save;
pub mod vsock;
#[cfg(test)]
pub(crate) mod test_driver;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// `VIRTIO_F_VERSION_1`: every device offers it; the mmio transport is version 2 (modern).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Interrupt status bit: a used buffer was added to a queue.
pub const INT_USED_RING: u32 = 1;
/// Interrupt status bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver accepted a queue layout the device cannot use.
    #[error("{device}: {reason}")]
    BadQueues {
        /// The device type's name.
        device: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The device's external backend refused or failed the setup.
    #[error("{device}: {what}")]
    Backend {
        /// The device type's name.
        device: &'static str,
        /// The step that failed.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The device's backend or worker could not be started.
    #[error("{device}: starting its worker")]
    Worker {
        /// The device type's name.
        device: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The interrupt line of one device: a status word the driver reads and acknowledges
/// through the transport, and an irqfd that raises the device's GSI.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// An interrupt that signals `evt` (registered as an irqfd by the VMM).
    pub fn new(evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            evt,
        }
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used(&self) {
        self.signal(INT_USED_RING);
    }

    /// Tells the driver that the configuration space changed.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG);
    }

    fn signal(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!(error = %e, "raising a virtio interrupt");
        }
    }

    /// The current `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Sets the status bits of a saved interrupt (a restored VM) and raises the line if any
    /// is set, so the guest sees what it had not acknowledged.
    pub fn restore(&self, bits: u32) {
        if bits != 0 {
            self.signal(bits);
        }
    }

    /// `InterruptACK`: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd behind the interrupt (for registering it as an irqfd).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What a device receives when the driver sets `DRIVER_OK`.
pub struct Activation {
    /// Guest memory (clones share the same mapping).
    pub mem: GuestMemoryMmap,
    /// The queues as the driver configured them, in queue-index order; only ready queues
    /// are valid.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, signalled when the driver notifies that queue.
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted (a subset of [`VirtioDevice::features`]).
    pub acked_features: u64,
}

/// A virtio device model, driven by a transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 net, 2 block, 3 console, 19 vsock, 26 fs).
    fn device_type(&self) -> u32;
    /// A short name for logs and errors ("virtio-blk").
    fn name(&self) -> &'static str;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers, including [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space at `offset`; bytes out of range read
    /// as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; writes to read-only or out-of-range bytes are
    /// ignored (and logged).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops serving (driver reset): the worker ends and drops its queues. The device can be
    /// activated again afterwards.
    fn reset(&mut self);
    /// For a save of the paused VM: the queues as the worker left them (the worker stops and
    /// starts again on them, so the VM can run on) and the device's own state. A device that
    /// is not active hands no queues. By default a device cannot be saved.
    fn save(&mut self) -> Result<save::DeviceSave, save::SaveError> {
        Err(save::SaveError::Unsupported(self.name()))
    }
    /// Takes back the device's own state from a save, before the transport activates it with
    /// the saved queues (a restored VM). By default a device cannot be restored.
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), save::SaveError> {
        let _ = state;
        Err(save::SaveError::Unsupported(self.name()))
    }
}
