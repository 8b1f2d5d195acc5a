//! virtio-vsock (device ID 19) with a hybrid-vsock backend, the Firecracker / Cloud
//! Hypervisor convention:
//!
//! - host to guest: a host process connects to the Unix socket at `uds_path` and writes
//!   `CONNECT <port>\n`; the guest is sent a REQUEST from CID 2 and a fresh local port
//!   (counting up from 2^30); when it answers RESPONSE the host reads `OK <local_port>\n` and
//!   bytes are relayed both ways; an RST or no answer within a few seconds closes the stream;
//! - guest to host: a guest connection to CID 2 port P is connected to the Unix socket
//!   `<uds_path>_<P>`, or refused with RST.
//!
//! Queues: rx (0), tx (1), event (2, accepted but never used: no transport reset events).
//! Configuration space: the guest's CID, a read-only `le64`.
//!
//! Layout: [`packet`] (header), [`connection`] (one connection's state and credit),
//! [`muxer`] (connections, listener, handshakes), [`uds`] (the Unix-socket conventions),
//! [`queue`] (rx/tx processing), `worker` (the epoll loop), [`metrics`].

pub mod connection;
pub mod metrics;
pub mod muxer;
pub mod packet;
pub mod queue;
pub mod uds;
mod worker;

#[cfg(test)]
mod test_guest;
#[cfg(test)]
mod tests;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::QueueT;

use self::metrics::VsockMetrics;
use self::muxer::{Limits, Muxer};
use self::queue::QueueHandler;
use self::worker::VsockWorker;
use super::save::{DeviceSave, SaveError};
use super::worker::Worker;
use super::{ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::logger::RateLimit;

/// The virtio device ID of vsock.
pub const DEVICE_ID: u32 = 19;
/// Maximum sizes of the rx, tx and event queues.
pub const QUEUE_SIZES: [u16; 3] = [256; 3];
/// The first CID a guest may have (0, 1 and 2 are the hypervisor, local and host).
pub const MIN_GUEST_CID: u64 = 3;
/// CIDs from here on are not usable (`VMADDR_CID_ANY` is `u32::MAX`; Linux keeps CIDs in
/// 32 bits).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or beyond 32 bits.
    #[error("guest CID {0} is outside {MIN_GUEST_CID}..={MAX_GUEST_CID}")]
    InvalidCid(u64),
    /// Something other than a socket is in the way.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The stale socket could not be removed.
    #[error("removing the stale socket {0}")]
    RemoveStale(PathBuf, #[source] std::io::Error),
    /// Binding the listening socket failed.
    #[error("binding {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// Configuring the listening socket failed.
    #[error("configuring {0}")]
    Configure(PathBuf, #[source] std::io::Error),
}

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// (device, inode) of the socket file we bound, so that drop removes only ours.
    socket_id: Option<(u64, u64)>,
    limits: Limits,
    metrics: Arc<VsockMetrics>,
    worker: Option<Worker<VsockWorker>>,
    /// Restored from a save: the next activation tells the guest its connections are gone.
    restored: bool,
    complaints: RateLimit,
}

impl Vsock {
    /// A device for guest `guest_cid` listening on `uds_path` (a stale socket file there is
    /// replaced; any other file is an error). Host clients that connect before the guest
    /// driver is up wait in the listen backlog.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let path = uds_path.to_owned();
        match std::fs::symlink_metadata(uds_path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(uds_path).map_err(|e| VsockError::RemoveStale(path.clone(), e))?;
            }
            Ok(_) => return Err(VsockError::NotASocket(path)),
            Err(_) => {}
        }
        let listener = UnixListener::bind(uds_path).map_err(|e| VsockError::Bind(path.clone(), e))?;
        listener.set_nonblocking(true).map_err(|e| VsockError::Configure(path.clone(), e))?;
        let socket_id = std::fs::symlink_metadata(uds_path).ok().map(|m| (m.dev(), m.ino()));
        Ok(Vsock {
            guest_cid,
            uds_path: path,
            listener,
            socket_id,
            limits: Limits::default(),
            metrics: Arc::new(VsockMetrics::default()),
            worker: None,
            restored: false,
            complaints: RateLimit::default(),
        })
    }

    /// Replaces the backend's bounds (applied at the next activation).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Where host clients connect.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    fn config(&self) -> [u8; 8] {
        self.guest_cid.to_le_bytes()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn name(&self) -> &'static str {
        "virtio-vsock"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (i, byte) in (0u64..).zip(data.iter_mut()) {
            let at = offset.checked_add(i).and_then(|o| usize::try_from(o).ok());
            *byte = at.and_then(|o| config.get(o)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.complaints.hit() {
            tracing::warn!(offset, len = data.len(), "virtio-vsock: ignored write to the read-only config space");
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let bad = |reason: &str| ActivateError::BadQueues { device: "virtio-vsock", reason: reason.to_owned() };
        let Activation { mem, queues, queue_evts, interrupt, .. } = activation;
        let Ok([rxq, txq, evq]) = <[_; 3]>::try_from(queues) else {
            return Err(bad("expected 3 queues"));
        };
        if queue_evts.len() != 3 {
            return Err(bad("expected 3 queue eventfds"));
        }
        if !rxq.ready() || !txq.ready() {
            return Err(bad("the rx and tx queues must be ready"));
        }
        let worker_err = |source| ActivateError::Worker { device: "virtio-vsock", source };
        let listener = self.listener.try_clone().map_err(worker_err)?;
        let muxer = Muxer::new(self.guest_cid, &self.uds_path, listener, self.limits, self.metrics.clone());
        let worker = VsockWorker {
            mem,
            rxq,
            txq,
            evq,
            evts: queue_evts,
            interrupt,
            muxer,
            handler: QueueHandler::new(self.metrics.clone()),
            reset_event: std::mem::take(&mut self.restored),
        };
        let thread = Worker::spawn("virtio-vsock", move |waiter| worker.run(waiter)).map_err(worker_err)?;
        self.worker = Some(thread);
        Ok(())
    }

    fn reset(&mut self) {
        // Stopping the worker drops the muxer: every host stream is closed.
        if let Some(mut worker) = self.worker.take() {
            worker.stop();
        }
    }

    /// The state is the guest CID the guest read. The worker goes on with its host streams.
    fn save(&mut self) -> Result<DeviceSave, SaveError> {
        let state = serde_json::json!({ "guest_cid": self.guest_cid });
        let Some(mut worker) = self.worker.take() else { return Ok(DeviceSave { queues: Vec::new(), state }) };
        let body = worker.stop_and_take().ok_or(SaveError::Worker("virtio-vsock"))?;
        let queues = vec![body.rxq.state(), body.txq.state(), body.evq.state()];
        let worker = Worker::spawn("virtio-vsock", move |waiter| body.run(waiter)).map_err(|source| SaveError::Restart { device: "virtio-vsock", source })?;
        self.worker = Some(worker);
        Ok(DeviceSave { queues, state })
    }

    /// The guest keeps the CID it read, so the clone's device must have it too; the host
    /// streams of the saved VM are gone: the activation that follows sends the guest a
    /// transport reset, and the guest's listeners (the agent's) take new connections.
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), SaveError> {
        match state.get("guest_cid").and_then(serde_json::Value::as_u64) {
            Some(cid) if cid == self.guest_cid => {
                self.restored = true;
                Ok(())
            }
            Some(cid) => Err(SaveError::State { device: "virtio-vsock", what: format!("the saved guest CID is {cid}; this device's is {} (--vsock cid=)", self.guest_cid) }),
            None => Err(SaveError::State { device: "virtio-vsock", what: format!("{state} is not a vsock device's state") }),
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
        let ours = std::fs::symlink_metadata(&self.uds_path).ok().map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}
