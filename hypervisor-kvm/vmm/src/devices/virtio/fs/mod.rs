//! virtio-fs (device ID 26) served by an external vhost-user backend (virtiofsd).
//!
//! The vmm only runs the virtio-mmio transport and the vhost-user frontend ([`backend`]):
//! [`Fs::new`] connects to the backend's Unix socket and negotiates features; on `DRIVER_OK`
//! the device's worker thread hands the backend the guest memory (the memfd behind guest RAM)
//! and the rings of the hiprio queue (0) and the one request queue (1). The queue eventfds
//! are the transport's KVM ioeventfds, so guest notifications go straight to the backend.
//! The backend signals used buffers on eventfds of ours; the worker turns each into
//! [`Interrupt::signal_used`](super::Interrupt::signal_used), since a virtio-mmio driver reads
//! `InterruptStatus` (the backend cannot raise the interrupt itself).
//!
//! The vmm never reads the queues, so there is nothing here for a fuzz target. The backend is
//! trusted to serve the guest, but whatever it answers only fails the device: every reply is
//! checked by the `vhost` crate, errors are logged, and calls that may block on it are bounded
//! for the vCPU thread that activates or resets the device.

pub mod backend;
mod error;
pub mod metrics;
mod worker;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod virtiofsd_tests;

use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use self::error::FsError;

use self::backend::Backend;
use self::metrics::FsMetrics;
use super::worker::Worker;
use super::{ActivateError, Activation, VirtioDevice};
use crate::logger::RateLimit;

/// The device type's name in logs and errors.
pub const NAME: &str = backend::DEVICE;
/// virtio device ID of a file system device.
pub const DEVICE_TYPE: u32 = 26;
/// The hiprio queue and one request queue.
pub const NUM_QUEUES: usize = 2;
/// The maximum size of each queue (what virtiofsd supports).
pub const QUEUE_SIZE: u16 = 1024;
/// Length of the tag field (`struct virtio_fs_config.tag`).
pub const TAG_LEN: usize = 36;
/// Size of the configuration space: the tag, then `num_request_queues` (le32).
pub const CONFIG_SIZE: usize = TAG_LEN + 4;
/// How long the vCPU that activates the device waits for the backend to take the queues.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reset waits for the backend to give the queues back.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks a tag and lays out the configuration space.
pub fn config_space(tag: &str) -> Result<[u8; CONFIG_SIZE], FsError> {
    if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
        return Err(FsError::BadTag(tag.to_owned()));
    }
    let mut config = [0u8; CONFIG_SIZE];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    let request_queues = (NUM_QUEUES as u32) - 1;
    config[TAG_LEN..].copy_from_slice(&request_queues.to_le_bytes());
    Ok(config)
}

/// Reads `data.len()` bytes of configuration space `config` at `offset`: bytes out of range
/// (including offsets that overflow) read as 0.
pub fn read_space(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(bytes) = config.get(start..) {
        let n = bytes.len().min(data.len());
        data[..n].copy_from_slice(&bytes[..n]);
    }
}

/// A virtio-fs device whose queues a vhost-user backend serves.
pub struct Fs {
    backend: Backend,
    config: [u8; CONFIG_SIZE],
    metrics: Arc<FsMetrics>,
    worker: Option<Worker>,
    complaints: RateLimit,
}

impl Fs {
    /// A device with mount tag `tag` (1 to 36 bytes), served by the vhost-user backend
    /// listening on `socket` (connected to and negotiated with now).
    pub fn new(tag: &str, socket: &Path) -> Result<Self, FsError> {
        let config = config_space(tag)?;
        let backend = Backend::connect(socket, NUM_QUEUES)?;
        tracing::debug!(device = NAME, tag, socket = %socket.display(), features = backend.guest_features(), "vhost-user backend connected");
        Ok(Self { backend, config, metrics: Arc::default(), worker: None, complaints: RateLimit::default() })
    }

    /// The device's counters.
    pub fn metrics(&self) -> &Arc<FsMetrics> {
        &self.metrics
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.backend.guest_features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Both fields are read-only for the driver.
        if self.complaints.hit() {
            tracing::warn!(device = NAME, offset, len = data.len(), "ignored write to the read-only config space");
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let Activation { mem, queues, queue_evts, interrupt, acked_features } = activation;
        let bad = |reason: &str| ActivateError::BadQueues { device: NAME, reason: reason.to_owned() };
        if queues.len() != NUM_QUEUES || queue_evts.len() != NUM_QUEUES {
            return Err(bad("expected the hiprio and one request queue"));
        }
        if !queues.iter().any(virtio_queue::QueueT::ready) {
            return Err(bad("no queue is ready"));
        }
        let worker_error = |source| ActivateError::Worker { device: NAME, source };
        let calls =
            (0..NUM_QUEUES).map(|_| EventFd::new(EFD_NONBLOCK)).collect::<std::io::Result<Vec<_>>>().map_err(worker_error)?;
        let (ready_tx, ready_rx) = channel();
        let body = worker::FsWorker {
            backend: self.backend.clone(),
            mem,
            queues,
            kicks: queue_evts,
            calls,
            interrupt,
            acked_features,
            metrics: self.metrics.clone(),
            ready: ready_tx,
        };
        let mut worker = Worker::spawn(NAME, move |waiter| body.run(waiter)).map_err(worker_error)?;
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| ActivateError::Backend {
            device: NAME,
            what: "handing the queues to the vhost-user backend".into(),
            source,
        };
        match ready_rx.recv_timeout(SETUP_TIMEOUT) {
            Ok(Ok(())) => {
                self.worker = Some(worker);
                FsMetrics::inc(&self.metrics.activations);
                Ok(())
            }
            Ok(Err(e)) => {
                FsMetrics::inc(&self.metrics.backend_errors);
                worker.stop_within(STOP_TIMEOUT);
                Err(failed(Box::new(e)))
            }
            Err(RecvTimeoutError::Timeout) => {
                FsMetrics::inc(&self.metrics.backend_errors);
                worker.stop_within(Duration::ZERO);
                Err(failed(format!("no answer within {} s", SETUP_TIMEOUT.as_secs()).into()))
            }
            Err(RecvTimeoutError::Disconnected) => {
                worker.stop_within(STOP_TIMEOUT);
                Err(failed("the worker ended without setting up the backend".into()))
            }
        }
    }

    fn reset(&mut self) {
        // The worker takes the queues back from the backend (GET_VRING_BASE) as it stops.
        if let Some(mut worker) = self.worker.take() {
            if !worker.stop_within(STOP_TIMEOUT) {
                FsMetrics::inc(&self.metrics.backend_errors);
            }
        }
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        // Bounded, unlike dropping the worker.
        self.reset();
    }
}
