//! The vhost-user frontend side of a virtio-fs device: the connection to the backend, the
//! feature negotiation, and handing the queues over (and taking them back).
//!
//! All replies are parsed and checked by the `vhost` crate; a wrong or missing answer is an
//! [`FsError`] naming the socket and the request.

use std::os::fd::AsRawFd;
use std::path::Path;

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::error::FsError;

/// The device's name in logs and errors.
pub const DEVICE: &str = "virtio-fs";

/// The virtio features the guest may see, when the backend offers them: the ring layouts
/// the backend implements and VERSION_1. Not the vhost-user-only bits (`PROTOCOL_FEATURES`,
/// `LOG_ALL`), not `VIRTIO_FS_F_NOTIFICATION` (no notification queue), not packed rings or
/// `ACCESS_PLATFORM` (the transport knows split rings in guest-physical memory only).
pub const GUEST_FEATURES: u64 =
    1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_RING_F_EVENT_IDX;

/// The protocol features used when the backend has them: `MQ` (to check its queue count) and
/// `REPLY_ACK` (every request is confirmed, so a refusal is seen where it happens).
const PROTOCOL_FEATURES: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::MQ.union(VhostUserProtocolFeatures::REPLY_ACK);

/// A connection to a vhost-user backend (clones share it).
#[derive(Clone)]
pub struct Backend {
    frontend: Frontend,
    socket: String,
    features: u64,
    protocol: bool,
}

impl Backend {
    /// Connects to the backend on `socket` and negotiates: `SET_OWNER`, `GET_FEATURES`, and
    /// with `PROTOCOL_FEATURES` also `GET/SET_PROTOCOL_FEATURES` and (`MQ`) `GET_QUEUE_NUM`,
    /// which must allow `queues`.
    pub fn connect(socket: &Path, queues: usize) -> Result<Self, FsError> {
        let name = socket.display().to_string();
        let mut frontend = Frontend::connect(socket, queues as u64)
            .map_err(|source| FsError::Connect { socket: name.clone(), source })?;
        let request = |step: &str| {
            let socket = name.clone();
            let step = step.to_owned();
            move |source| FsError::Request { socket, step, source }
        };
        frontend.set_owner().map_err(request("SET_OWNER"))?;
        let features = frontend.get_features().map_err(request("GET_FEATURES"))?;
        if features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::Unsuitable { socket: name, reason: format!("features {features:#x} lack VIRTIO_F_VERSION_1") });
        }
        let protocol = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol {
            let offered = frontend.get_protocol_features().map_err(request("GET_PROTOCOL_FEATURES"))?;
            let used = offered & PROTOCOL_FEATURES;
            frontend.set_protocol_features(used).map_err(request("SET_PROTOCOL_FEATURES"))?;
            if used.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if used.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend.get_queue_num().map_err(request("GET_QUEUE_NUM"))?;
                if n < queues as u64 {
                    return Err(FsError::Unsuitable { socket: name, reason: format!("it serves {n} queues, {queues} needed") });
                }
            }
        }
        Ok(Self { frontend, socket: name, features, protocol })
    }

    /// The features to offer the guest (always including VERSION_1).
    pub fn guest_features(&self) -> u64 {
        self.features & GUEST_FEATURES
    }

    /// The backend's socket, for logs and errors.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The socket's descriptor (to watch for the backend hanging up).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }

    fn request(&self, step: String) -> impl FnOnce(vhost::Error) -> FsError + '_ {
        move |source| FsError::Request { socket: self.socket.clone(), step, source }
    }

    fn host_address(&self, mem: &GuestMemoryMmap, gpa: u64) -> Result<u64, FsError> {
        // The transport checked that the rings lie in guest memory (`Queue::is_valid`).
        mem.get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| FsError::Memory { socket: self.socket.clone(), gpa })
    }

    /// Hands the device to the backend: `SET_FEATURES` (the driver's `acked` features plus
    /// `PROTOCOL_FEATURES`), `SET_MEM_TABLE` (each memfd-backed region), then for each ready
    /// queue `SET_VRING_NUM/ADDR/BASE`, `SET_VRING_CALL` (`calls[i]`), `SET_VRING_KICK`
    /// (`kicks[i]`) and `SET_VRING_ENABLE`. The queues handed over are pushed to `started`,
    /// also when a later step fails, so that [`Backend::stop`] can take them back.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
        acked: u64,
        started: &mut Vec<usize>,
    ) -> Result<(), FsError> {
        let mut features = acked & self.features;
        if self.protocol {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend.set_features(features).map_err(self.request("SET_FEATURES".into()))?;
        let regions = mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|_| FsError::Memory { socket: self.socket.clone(), gpa: r.start_addr().0 })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend.set_mem_table(&regions).map_err(self.request("SET_MEM_TABLE".into()))?;
        for (i, ((queue, kick), call)) in queues.iter().zip(kicks).zip(calls).enumerate() {
            if !queue.ready() {
                continue;
            }
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: self.host_address(mem, queue.desc_table())?,
                used_ring_addr: self.host_address(mem, queue.used_ring())?,
                avail_ring_addr: self.host_address(mem, queue.avail_ring())?,
                log_addr: None,
            };
            let step = |what: &str| format!("{what} for queue {i}");
            self.frontend.set_vring_num(i, queue.size()).map_err(self.request(step("SET_VRING_NUM")))?;
            self.frontend.set_vring_addr(i, &config).map_err(self.request(step("SET_VRING_ADDR")))?;
            self.frontend.set_vring_base(i, queue.next_avail()).map_err(self.request(step("SET_VRING_BASE")))?;
            self.frontend.set_vring_call(i, call).map_err(self.request(step("SET_VRING_CALL")))?;
            // From here on the backend may run the queue.
            started.push(i);
            self.frontend.set_vring_kick(i, kick).map_err(self.request(step("SET_VRING_KICK")))?;
            if self.protocol {
                self.frontend.set_vring_enable(i, true).map_err(self.request(step("SET_VRING_ENABLE")))?;
            }
        }
        Ok(())
    }

    /// Takes the `started` queues back (`SET_VRING_ENABLE` off, `GET_VRING_BASE`, which
    /// stops the backend's queue), logging failures: the device is being reset anyway.
    pub fn stop(&mut self, started: &[usize]) {
        for &i in started {
            if self.protocol {
                if let Err(e) = self.frontend.set_vring_enable(i, false) {
                    tracing::warn!(device = DEVICE, socket = %self.socket, queue = i, error = %e, "SET_VRING_ENABLE off");
                }
            }
            match self.frontend.get_vring_base(i) {
                Ok(base) => tracing::debug!(device = DEVICE, queue = i, base, "queue stopped"),
                Err(e) => {
                    tracing::warn!(device = DEVICE, socket = %self.socket, queue = i, error = %e, "GET_VRING_BASE")
                }
            }
        }
    }
}
