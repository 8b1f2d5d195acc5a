//! virtio-net (device ID 1) on a host tap interface.
//!
//! Two queues, receive (0) and transmit (1), up to 256 entries each. Offered features:
//! `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC` (the configured MAC, or a random locally
//! administered one), `VIRTIO_NET_F_STATUS` (link always up), `VIRTIO_NET_F_MTU` (1500) and
//! `VIRTIO_RING_F_EVENT_IDX`. No checksum or segmentation offloads and no mergeable receive
//! buffers: every frame travels whole, behind a 12-byte `virtio_net_hdr_v1` of zeroes.
//!
//! [`Net::new`] opens `/dev/net/tun` itself (which needs `CAP_NET_ADMIN` to create the
//! interface, or an existing tap the process may use); [`Net::from_tap_fd`] takes a tap
//! that someone else opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.

pub mod metrics;
pub mod queue;
pub mod tap;
pub mod worker;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use self::metrics::NetMetrics;
use self::tap::{Tap, TapError};
use super::save::{DeviceSave, SaveError};
use super::{ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::logger::RateLimit;

const NAME: &str = "virtio-net";
/// The virtio device ID of a network card.
pub const DEVICE_TYPE: u32 = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// The MTU offered to the guest (the receive buffers the Linux driver posts without
/// mergeable buffers or guest offloads hold exactly one such frame).
pub const MTU: u16 = 1500;
/// Size of the configuration space: `mac`, `status`, `max_virtqueue_pairs`, `mtu`.
const CONFIG_LEN: usize = 12;

/// Errors creating a virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Opening or configuring the tap.
    #[error("virtio-net backend")]
    Tap(#[from] TapError),
    /// The MAC given cannot be a device's address.
    #[error("MAC {0} is multicast or all zeroes")]
    InvalidMac(String),
    /// No random bytes for a MAC.
    #[error("generating a random MAC")]
    RandomMac(#[source] std::io::Error),
}

/// `aa:bb:cc:dd:ee:ff` as bytes, or `None` when it is not that.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return None;
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

/// Formats a MAC as `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn random_mac() -> Result<[u8; 6], NetError> {
    let mut mac = [0u8; 6];
    // SAFETY: `mac` is valid for writes of its 6 bytes; getrandom writes at most that many.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if n != mac.len() as isize {
        return Err(NetError::RandomMac(std::io::Error::last_os_error()));
    }
    // Unicast, locally administered.
    mac[0] = (mac[0] & !0x01) | 0x02;
    Ok(mac)
}

/// The MAC given, if it can be a device's (unicast, not all zeroes), or a random one.
fn choose_mac(mac: Option<[u8; 6]>) -> Result<[u8; 6], NetError> {
    match mac {
        Some(mac) if mac[0] & 0x01 != 0 || mac == [0; 6] => Err(NetError::InvalidMac(format_mac(&mac))),
        Some(mac) => Ok(mac),
        None => random_mac(),
    }
}

/// `struct virtio_net_config` up to `mtu`: the MAC, link up, one queue pair, the MTU.
fn config_space(mac: [u8; 6]) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[..6].copy_from_slice(&mac);
    config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config[8..10].copy_from_slice(&1u16.to_le_bytes());
    config[10..12].copy_from_slice(&MTU.to_le_bytes());
    config
}

/// Reads `data.len()` bytes of `space` at `offset`; bytes out of range read as 0.
fn read_space(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| space.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// The features the device offers.
pub const FEATURES: u64 = VIRTIO_F_VERSION_1
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_MTU
    | 1 << VIRTIO_RING_F_EVENT_IDX;

/// A virtio-net device.
pub struct Net {
    tap: Tap,
    config: [u8; CONFIG_LEN],
    metrics: Arc<NetMetrics>,
    worker: Option<worker::NetWorkerThread<Tap>>,
    complaints: RateLimit,
}

/// What a save keeps of a net device: the MAC address the guest read at probe time.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NetState {
    mac: String,
}

impl Net {
    /// Attaches to (or creates) the tap interface `tap_name`; `mac` is the guest's address
    /// (a random locally administered one when `None`).
    pub fn new(tap_name: &str, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let mac = choose_mac(mac)?;
        Ok(Self::with_tap(Tap::open(tap_name)?, mac))
    }

    /// Uses a tap that someone else opened (with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
    pub fn from_tap_fd(fd: OwnedFd, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let mac = choose_mac(mac)?;
        Ok(Self::with_tap(Tap::from_fd(fd)?, mac))
    }

    fn with_tap(tap: Tap, mac: [u8; 6]) -> Self {
        tracing::debug!(tap = tap.name(), mac = %format_mac(&mac), "virtio-net device");
        Self { tap, config: config_space(mac), metrics: Arc::default(), worker: None, complaints: RateLimit::default() }
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// The tap interface's name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    fn take_two<T>(items: Vec<T>, what: &str) -> Result<[T; 2], ActivateError> {
        <[T; 2]>::try_from(items)
            .map_err(|v| ActivateError::BadQueues { device: NAME, reason: format!("{} {what}, expected 2", v.len()) })
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field is read-only for a modern driver.
        if self.complaints.hit() {
            tracing::warn!(device = NAME, offset, len = data.len(), "ignored a write to the read-only config space");
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.reset();
        let [rx_queue, tx_queue]: [Queue; 2] = Self::take_two(activation.queues, "queues")?;
        let [rx_evt, tx_evt]: [EventFd; 2] = Self::take_two(activation.queue_evts, "queue eventfds")?;
        if !rx_queue.ready() || !tx_queue.ready() {
            return Err(ActivateError::BadQueues { device: NAME, reason: "both queues must be ready".into() });
        }
        let tap = self.tap.try_clone().map_err(|source| ActivateError::Worker { device: NAME, source })?;
        let ctx = worker::Context {
            mem: activation.mem,
            rx_queue,
            tx_queue,
            rx_evt,
            tx_evt,
            tap,
            interrupt: activation.interrupt,
            metrics: self.metrics.clone(),
        };
        let worker = worker::spawn(NAME, ctx).map_err(|source| ActivateError::Worker { device: NAME, source })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.stop();
        }
    }

    fn save(&mut self) -> Result<DeviceSave, SaveError> {
        let state = serde_json::to_value(NetState { mac: format_mac(&self.mac()) }).unwrap_or_default();
        let Some(mut worker) = self.worker.take() else { return Ok(DeviceSave { queues: Vec::new(), state }) };
        let ctx = worker.stop_and_take().flatten().ok_or(SaveError::Worker(NAME))?;
        let queues = vec![ctx.rx_queue.state(), ctx.tx_queue.state()];
        let worker = worker::spawn(NAME, ctx).map_err(|source| SaveError::Restart { device: NAME, source })?;
        self.worker = Some(worker);
        Ok(DeviceSave { queues, state })
    }

    /// The guest keeps the MAC it read: the restored device takes it over, whatever
    /// `--net mac=` said.
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), SaveError> {
        let bad = |what: String| SaveError::State { device: NAME, what };
        let saved: NetState = serde_json::from_value(state.clone()).map_err(|e| bad(format!("{state} is not a net device's state: {e}")))?;
        let mac = parse_mac(&saved.mac).ok_or_else(|| bad(format!("saved MAC {:?} is not aa:bb:cc:dd:ee:ff", saved.mac)))?;
        self.config[..6].copy_from_slice(&mac);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
