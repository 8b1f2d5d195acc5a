//! virtio-console (device ID 3) with `VIRTIO_CONSOLE_F_MULTIPORT`: named serial ports whose
//! host side is a listening Unix socket each, as QEMU's `virtserialport` on a
//! `-chardev socket,server=on,wait=off`. The guest agent finds a port by the name in
//! `/sys/class/virtio-ports/vport0pN/name` and runs its Yamux session over `/dev/vport0pN`.
//!
//! Port ids: port 0 exists (the Linux driver always sets up its two queues) but is never added,
//! so it has no device node and no backend; what the guest might write on it is dropped and
//! counted. The named ports are ids 1..=N, `max_nr_ports` is N + 1, and the queues are port 0's
//! receiveq/transmitq (0, 1), the control receiveq/transmitq (2, 3), then port id `i`'s at
//! `4 + 2(i-1)` and `5 + 2(i-1)`. See `control.rs` for the handshake and `host.rs` for the
//! one-connection-at-a-time rule.
//!
//! Data: guest writes go to the connected host (dropped and counted while none is); host bytes
//! go to the port's receive buffers while a guest process has the port open, and the host is
//! not read at all while there is no buffer, so the host feels the backpressure and the VMM
//! buffers nothing beyond one 64 KiB scratch buffer.
//!
//! Wiring (the VMM): `Console::new(&[("agent.0".into(), dir.join("agent-0.sock")), ..])` binds
//! the sockets at once (hosts may connect before the guest boots: they wait in the backlog);
//! put it behind an [`MmioTransport`](super::mmio::MmioTransport), register its queue eventfds
//! as ioeventfds and its interrupt as an irqfd, and describe it in ACPI. The guest needs the
//! `virtio_console` module. Dropping the console stops its worker and removes the sockets.

pub mod control;
pub mod host;
pub mod metrics;
pub mod queue;
pub mod worker;

#[cfg(test)]
mod testutil;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;

use self::host::{HostError, HostPort};
use self::metrics::ConsoleMetrics;
use self::worker::{Engine, HostSlot};
use super::save::{DeviceSave, SaveError};
use super::worker::Worker;
use super::{ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::logger::RateLimit;

/// The virtio device ID of a console.
pub const DEVICE_ID: u32 = 3;
/// `VIRTIO_CONSOLE_F_MULTIPORT`.
pub const F_MULTIPORT: u64 = 1 << 1;
/// The most named ports.
pub const MAX_PORTS: usize = 16;
/// The longest port name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Size of every queue (QEMU uses the same for virtio-serial).
pub const QUEUE_SIZE: u16 = 128;
/// Size of the configuration space: cols, rows, max_nr_ports, emerg_wr.
const CONFIG_LEN: usize = 12;

/// Errors creating a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No port was given.
    #[error("a console needs at least one port")]
    NoPorts,
    /// More than [`MAX_PORTS`] ports.
    #[error("{0} ports requested, at most {MAX_PORTS} are supported")]
    TooManyPorts(usize),
    /// A name the guest could not be given.
    #[error("port name {name:?} is invalid: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two ports with one name.
    #[error("port name {0:?} is used twice")]
    DuplicateName(String),
    /// Two ports with one socket path.
    #[error("socket path {0} is used by two ports")]
    DuplicatePath(PathBuf),
    /// A port's socket could not be set up.
    #[error("port {name:?}")]
    Host {
        /// The port's name.
        name: String,
        /// The cause.
        #[source]
        source: HostError,
    },
}

/// Checks a port name: 1 to 64 bytes of printable ASCII other than space (so the name reads
/// back unchanged from sysfs, where the driver adds a newline) and '/'.
fn check_name(name: &str) -> Result<(), ConsoleError> {
    let bad = |reason| Err(ConsoleError::BadName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 64 bytes");
    }
    if name.contains('/') {
        return bad("contains '/'");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("not printable ASCII (spaces and control characters are refused)");
    }
    Ok(())
}

/// A multiport virtio console.
pub struct Console {
    names: Vec<String>,
    queue_sizes: Vec<u16>,
    hosts: HostSlot,
    worker: Option<Worker<Engine>>,
    /// A restore's control state, for the next activation.
    restored: Option<control::SavedControl>,
    metrics: Arc<ConsoleMetrics>,
    complaints: RateLimit,
}

impl Console {
    /// A console with the named ports (ids 1..=N in this order), each listening on its Unix
    /// socket path from now on. A socket file already at a path is replaced; any other file
    /// there is an error. The sockets are removed when the console is dropped.
    pub fn new(ports: &[(String, PathBuf)]) -> Result<Console, ConsoleError> {
        if ports.is_empty() {
            return Err(ConsoleError::NoPorts);
        }
        if ports.len() > MAX_PORTS {
            return Err(ConsoleError::TooManyPorts(ports.len()));
        }
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for (name, path) in ports {
            check_name(name)?;
            if !names.insert(name) {
                return Err(ConsoleError::DuplicateName(name.clone()));
            }
            if !paths.insert(path) {
                return Err(ConsoleError::DuplicatePath(path.clone()));
            }
        }
        let hosts = ports
            .iter()
            .map(|(name, path)| {
                HostPort::bind(path).map_err(|source| ConsoleError::Host { name: name.clone(), source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Console {
            names: ports.iter().map(|(n, _)| n.clone()).collect(),
            // Port 0 and the control queues, then the named ports.
            queue_sizes: vec![QUEUE_SIZE; 4 + 2 * ports.len()],
            hosts: Arc::new(Mutex::new(hosts)),
            worker: None,
            restored: None,
            metrics: Arc::new(ConsoleMetrics::new(ports.len())),
            complaints: RateLimit::default(),
        })
    }

    /// The counters (shared: they keep counting while the device runs).
    pub fn metrics(&self) -> Arc<ConsoleMetrics> {
        self.metrics.clone()
    }

    /// The port names; port id `i` is `names()[i - 1]`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        // cols and rows stay 0: VIRTIO_CONSOLE_F_SIZE is not offered. emerg_wr reads as 0.
        let max_nr_ports = u32::try_from(self.names.len() + 1).unwrap_or(u32::MAX);
        config[4..8].copy_from_slice(&max_nr_ports.to_le_bytes());
        config
    }

    fn bad_queues(reason: String) -> ActivateError {
        ActivateError::BadQueues { device: "virtio-console", reason }
    }
}

impl Drop for Console {
    /// Stops the worker first, so that the sockets go back to this (unfiltered) thread and
    /// are removed here: the worker's seccomp filter does not allow unlink.
    fn drop(&mut self) {
        self.reset();
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn name(&self) -> &'static str {
        "virtio-console"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MULTIPORT
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *byte = at.and_then(|at| config.get(at)).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // cols, rows and max_nr_ports are read-only; emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE,
        // which is not offered.
        if self.complaints.hit() {
            tracing::warn!(device = "virtio-console", offset, len = data.len(), "ignored config space write");
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.acked_features & F_MULTIPORT == 0 {
            return Err(Self::bad_queues("the driver did not accept VIRTIO_CONSOLE_F_MULTIPORT".into()));
        }
        let expected = self.queue_sizes.len();
        if activation.queues.len() != expected || activation.queue_evts.len() != expected {
            return Err(Self::bad_queues(format!(
                "{} queues and {} eventfds, expected {expected}",
                activation.queues.len(),
                activation.queue_evts.len()
            )));
        }
        // Port queues that are not ready just never move data; the control queues must be.
        if !activation.queues[2].ready() || !activation.queues[3].ready() {
            return Err(Self::bad_queues("the control queues are not ready".into()));
        }
        self.reset();
        let engine = Engine::new(
            activation.mem,
            activation.queues,
            activation.queue_evts,
            activation.interrupt,
            &self.names,
            self.hosts.clone(),
            self.metrics.clone(),
        );
        let engine = match self.restored.take() {
            Some(saved) => engine.with_control(control::ControlState::restored(&saved, &self.names).map_err(Self::bad_queues)?),
            None => engine,
        };
        // If the spawn fails the engine is dropped in the closure and the sockets go back.
        let worker = Worker::spawn("virtio-console", move |waiter| worker::run(engine, waiter))
            .map_err(|source| ActivateError::Worker { device: "virtio-console", source })?;
        self.worker = Some(worker);
        self.metrics.activations.inc();
        Ok(())
    }

    fn reset(&mut self) {
        // Joining the worker drops its engine, which puts the sockets back.
        if let Some(mut worker) = self.worker.take() {
            worker.stop();
        }
    }

    /// The state is the control state: which ports the driver added, readied and opened.
    fn save(&mut self) -> Result<DeviceSave, SaveError> {
        let Some(mut worker) = self.worker.take() else {
            return Ok(DeviceSave { queues: Vec::new(), state: serde_json::Value::Null });
        };
        let engine = worker.stop_and_take().ok_or(SaveError::Worker("virtio-console"))?;
        let saved = engine.save();
        // The engine serves on whatever the save's verdict.
        let worker = Worker::spawn("virtio-console", move |waiter| worker::run(engine, waiter)).map_err(|source| SaveError::Restart { device: "virtio-console", source })?;
        self.worker = Some(worker);
        let (queues, control) = saved.map_err(|what| SaveError::State { device: "virtio-console", what })?;
        let state = serde_json::to_value(control).map_err(|e| SaveError::State { device: "virtio-console", what: e.to_string() })?;
        Ok(DeviceSave { queues, state })
    }

    /// Keeps the saved control state for the activation that follows (a console never
    /// activated saves `null`: nothing to keep).
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), SaveError> {
        if state.is_null() {
            self.restored = None;
            return Ok(());
        }
        let saved: control::SavedControl = serde_json::from_value(state.clone()).map_err(|e| SaveError::State { device: "virtio-console", what: format!("{state} is not a console's state: {e}") })?;
        control::ControlState::restored(&saved, &self.names).map_err(|what| SaveError::State { device: "virtio-console", what })?;
        self.restored = Some(saved);
        Ok(())
    }
}
