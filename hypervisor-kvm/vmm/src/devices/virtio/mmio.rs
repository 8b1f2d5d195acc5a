//! The virtio-mmio transport, version 2 (virtio 1.x "modern" register layout).
//!
//! Register accesses come from vCPU threads through [`MmioTransport::read`] and
//! [`MmioTransport::write`]. Every value the driver writes is checked: unknown offsets,
//! wrong access widths, a queue index out of range, a queue size that is not a power of two
//! or exceeds the maximum, feature bits the device does not offer and queue changes while
//! the device runs are ignored with a (rate-limited) log line, as a real device would.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::save::{QueueRegs, SaveError};
use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::logger::RateLimit;

/// Size of one device's register window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// Offset of the `QueueNotify` register (for KVM ioeventfds).
pub const QUEUE_NOTIFY: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4b52_5456; // "VTRK"
const CONFIG_SPACE: u64 = 0x100;

const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

/// A transport's registers, its device's queues and the device's own state, in a state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportState {
    /// The virtio device type.
    pub device_type: u32,
    /// The device model's name.
    pub name: String,
    /// The Status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Whether the device was active (DRIVER_OK).
    pub active: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Every queue, in order.
    pub queues: Vec<QueueRegs>,
    /// The device model's own state.
    pub device: serde_json::Value,
}

/// One virtio device behind its mmio registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
    complaints: RateLimit,
}

fn new_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&max| {
            Queue::new(max).unwrap_or_else(|_| Queue::new(256).expect("256 is a valid queue size"))
        })
        .collect()
}

impl MmioTransport {
    /// Wraps `device`; `interrupt` raises its GSI.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Self> {
        let queues = new_queues(device.as_ref());
        let queue_evts = (0..queues.len())
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
            complaints: RateLimit::default(),
        })
    }

    /// The device model.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The queue eventfds, for registering as KVM ioeventfds on `QueueNotify` with the
    /// queue index as datamatch.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// Whether the driver has set `DRIVER_OK` and the device runs.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The registers, queues and device state of a paused VM, for a save: an active device's
    /// worker hands its queues over and goes on ([`VirtioDevice::save`]).
    pub fn save(&mut self) -> Result<TransportState, SaveError> {
        let saved = self.device.save()?;
        let queues: Vec<QueueState> = if self.active { saved.queues } else { self.queues.iter().map(Queue::state).collect() };
        Ok(TransportState {
            device_type: self.device.device_type(),
            name: self.device.name().to_owned(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            active: self.active,
            interrupt_status: self.interrupt.status(),
            queues: queues.into_iter().map(QueueRegs::from).collect(),
            device: saved.state,
        })
    }

    /// Takes a saved state into this new transport (slot `index`, built for the same device),
    /// before any vCPU runs: registers, queues (each checked against the device and guest
    /// memory), the device's own state, and the device's activation if it was active.
    pub fn restore(&mut self, index: usize, state: &TransportState) -> Result<(), SaveError> {
        let device = self.device.name();
        let here = format!("{device} (type {})", self.device.device_type());
        let saved = format!("{} (type {})", state.name, state.device_type);
        if here != saved {
            return Err(SaveError::Mismatch { index, saved, here });
        }
        let max = self.device.queue_max_sizes().to_vec();
        if state.queues.len() != max.len() {
            return Err(SaveError::State { device, what: format!("the state has {} queues, the device {}", state.queues.len(), max.len()) });
        }
        let offered = self.device.features() | VIRTIO_F_VERSION_1;
        if state.driver_features & !offered != 0 {
            return Err(SaveError::State { device, what: format!("saved driver features {:#x} are not all offered ({offered:#x})", state.driver_features) });
        }
        let mut queues = Vec::with_capacity(max.len());
        for (i, (regs, max)) in state.queues.iter().zip(max).enumerate() {
            let bad = |why: String| SaveError::Queue { device, index: i, why };
            if regs.max_size != max {
                return Err(bad(format!("its maximum size is {}, the device's {max}", regs.max_size)));
            }
            let q = Queue::try_from(QueueState::from(*regs)).map_err(|e| bad(format!("{e:?}")))?;
            if q.ready() && !q.is_valid(&self.mem) {
                return Err(bad("its rings lie outside guest memory".into()));
            }
            queues.push(q);
        }
        self.device.restore(&state.device)?;
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.config_generation = state.config_generation;
        self.interrupt.ack(u32::MAX);
        self.interrupt.restore(state.interrupt_status);
        if !state.active {
            self.queues = queues;
            return Ok(());
        }
        let queue_evts = self.queue_evts.iter().map(EventFd::try_clone).collect::<std::io::Result<Vec<_>>>().map_err(|source| SaveError::Restart { device, source })?;
        let activation = Activation { mem: self.mem.clone(), queues, queue_evts, interrupt: self.interrupt.clone(), acked_features: self.driver_features };
        self.device.activate(activation).map_err(|e| SaveError::State { device, what: format!("activating it: {e}") })?;
        self.active = true;
        Ok(())
    }

    fn complain(&mut self, what: &str, offset: u64, value: u64) {
        if self.complaints.hit() {
            tracing::warn!(
                device = self.device.name(),
                offset,
                value,
                "ignored guest access: {what}"
            );
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A register read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            self.complain(
                "register read that is not 32-bit",
                offset,
                data.len() as u64,
            );
            return;
        }
        let value = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => {
                let features = self.device.features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x44 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            // SHMLen and SHMBase: no shared memory region (all ones), whatever SHMSel says.
            0xb0 | 0xb4 | 0xb8 | 0xbc => u32::MAX,
            _ => {
                self.complain("read of an unknown register", offset, 0);
                0
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A register write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.active || self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
            } else {
                self.complain("config write before DRIVER", offset, 0);
            }
            return;
        }
        let Ok(raw) = <[u8; 4]>::try_from(data) else {
            self.complain(
                "register write that is not 32-bit",
                offset,
                data.len() as u64,
            );
            return;
        };
        let value = u32::from_le_bytes(raw);
        let queue_setup = self.status & STATUS_FEATURES_OK != 0 && !self.active;
        match offset {
            0x14 => self.device_features_sel = value,
            0x20 => self.set_driver_features(value),
            0x24 => self.driver_features_sel = value,
            0x30 => self.queue_sel = value,
            0x50 => self.notify(value),
            // SHMSel: any region selects "none" (see the SHMLen read).
            0xac => {}
            // Clearing QueueReady is how a driver tears a queue down (Linux does it after a
            // failed probe, then reads it back as 0): allowed in any state.
            0x44 if value == 0 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(false);
                }
            }
            0x64 => self.interrupt.ack(value),
            0x70 => self.set_status(value),
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if !queue_setup => self.complain(
                "queue setup outside FEATURES_OK..DRIVER_OK",
                offset,
                u64::from(value),
            ),
            0x38 => self.set_queue_size(value),
            0x44 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                } else {
                    self.complain(
                        "QueueReady for a queue that does not exist",
                        offset,
                        u64::from(value),
                    );
                }
            }
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => self.set_queue_address(offset, value),
            _ => self.complain(
                "write to an unknown or read-only register",
                offset,
                u64::from(value),
            ),
        }
    }

    fn set_driver_features(&mut self, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 || self.status & STATUS_DRIVER == 0 {
            self.complain(
                "DriverFeatures outside DRIVER..FEATURES_OK",
                0x20,
                u64::from(value),
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return self.complain("DriverFeaturesSel beyond 1", 0x24, u64::from(value)),
        };
        let mask = 0xffff_ffffu64 << shift;
        self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
    }

    fn set_queue_size(&mut self, value: u32) {
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return self.complain(
                "QueueNum for a queue that does not exist",
                0x38,
                u64::from(value),
            );
        };
        let max = q.max_size();
        match u16::try_from(value) {
            Ok(size) if size != 0 && size <= max && size.is_power_of_two() => q.set_size(size),
            _ => self.complain(
                "QueueNum not a power of two up to QueueNumMax",
                0x38,
                u64::from(value),
            ),
        }
    }

    fn set_queue_address(&mut self, offset: u64, value: u32) {
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return self.complain(
                "queue address for a queue that does not exist",
                offset,
                u64::from(value),
            );
        };
        let (low, high) = if offset & 4 == 0 {
            (Some(value), None)
        } else {
            (None, Some(value))
        };
        match offset & !4 {
            0x80 => q.set_desc_table_address(low, high),
            0x90 => q.set_avail_ring_address(low, high),
            _ => q.set_used_ring_address(low, high),
        }
    }

    fn notify(&mut self, index: u32) {
        match self.queue_evts.get(index as usize) {
            // Reached only when no ioeventfd is registered (tests, or KVM refused it).
            Some(evt) if self.active => {
                if let Err(e) = evt.write(1) {
                    tracing::warn!(error = %e, "queue notify");
                }
            }
            _ => self.complain(
                "QueueNotify for an inactive device or unknown queue",
                0x50,
                u64::from(index),
            ),
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in order.
        if value & self.status != self.status {
            return self.complain("Status clears bits without a reset", 0x70, u64::from(value));
        }
        let added = value & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features() | VIRTIO_F_VERSION_1;
            let unknown = self.driver_features & !offered;
            if unknown != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                self.complain(
                    "driver features not offered, or no VERSION_1",
                    0x20,
                    self.driver_features,
                );
                // FEATURES_OK is not set: the driver sees that and fails the device.
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        if added & STATUS_DRIVER_OK != 0 && value & STATUS_FEATURES_OK == 0 {
            return self.complain("DRIVER_OK without FEATURES_OK", 0x70, u64::from(value));
        }
        self.status = value;
        if added & STATUS_DRIVER_OK != 0 && value & STATUS_FAILED == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        for (i, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.mem) {
                self.complain(
                    "a ready queue's rings lie outside guest memory",
                    0x44,
                    i as u64,
                );
                self.status |= STATUS_FAILED;
                return;
            }
        }
        let queue_evts = match self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(evts) => evts,
            Err(e) => {
                tracing::error!(device = self.device.name(), error = %e, "cloning queue eventfds");
                self.status |= STATUS_FAILED;
                return;
            }
        };
        let event_idx = self.driver_features
            & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0;
        // The device owns the configured queues from now on; the transport keeps fresh ones
        // (not ready) until the next reset.
        let fresh = new_queues(self.device.as_ref());
        let mut queues = std::mem::replace(&mut self.queues, fresh);
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => {
                self.active = true;
                tracing::debug!(
                    device = self.device.name(),
                    features = self.driver_features,
                    "activated"
                );
            }
            Err(e) => {
                tracing::error!(device = self.device.name(), error = %e, "activation failed");
                self.status |= STATUS_FAILED;
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, Activation};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A test double: one queue of 16, feature bit 0, counts activations, keeps the queues it
    /// was activated with and saves them (with its count as its own state).
    struct FakeDevice(Arc<AtomicUsize>, Vec<Queue>);

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn name(&self) -> &'static str {
            "fake"
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0xab);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1 = activation.queues;
            Ok(())
        }
        fn reset(&mut self) {}
        fn save(&mut self) -> Result<crate::devices::virtio::save::DeviceSave, SaveError> {
            let state = serde_json::json!({ "activations": self.0.load(Ordering::SeqCst) });
            Ok(crate::devices::virtio::save::DeviceSave { queues: self.1.iter().map(Queue::state).collect(), state })
        }
        fn restore(&mut self, state: &serde_json::Value) -> Result<(), SaveError> {
            let n = state["activations"].as_u64().ok_or(SaveError::State { device: "fake", what: format!("no activations in {state}") })?;
            self.0.store(n as usize, Ordering::SeqCst);
            Ok(())
        }
    }

    fn transport() -> (MmioTransport, Arc<AtomicUsize>) {
        let mem = crate::vstate::memory::create_guest_memory(32).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        (MmioTransport::new(Box::new(FakeDevice(count.clone(), Vec::new())), mem, irq).unwrap(), count)
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, high_features: u32) {
        write(t, 0x70, 1 | STATUS_DRIVER);
        write(t, 0x24, 1);
        write(t, 0x20, high_features);
        write(t, 0x70, 1 | STATUS_DRIVER | STATUS_FEATURES_OK);
    }

    #[test]
    fn identity_and_no_shared_memory() {
        let (mut t, _) = transport();
        assert_eq!((read(&mut t, 0), read(&mut t, 4), read(&mut t, 8)), (MAGIC, 2, 42));
        write(&mut t, 0xac, 0);
        assert_eq!((read(&mut t, 0xb0), read(&mut t, 0xb4)), (u32::MAX, u32::MAX), "SHMLen: no region");
        let mut config = [0u8; 2];
        t.read(0x100, &mut config);
        assert_eq!(config, [0xab, 0xab]);
        // A 16-bit register read is refused (reads 0).
        let mut short = [0xffu8; 2];
        t.read(0x00, &mut short);
        assert_eq!(short, [0, 0]);
    }

    #[test]
    fn features_the_device_does_not_offer_fail_negotiation() {
        let (mut t, count) = transport();
        negotiate(&mut t, 1 | 2); // VERSION_1 plus an unknown bit 33
        assert_eq!(read(&mut t, 0x70) & STATUS_FEATURES_OK, 0, "FEATURES_OK refused");
        write(&mut t, 0x70, 1 | STATUS_DRIVER | STATUS_DRIVER_OK);
        assert_eq!(count.load(Ordering::SeqCst), 0, "no activation without FEATURES_OK");
    }

    #[test]
    fn queue_setup_is_checked_and_activation_happens_once() {
        let (mut t, count) = transport();
        write(&mut t, 0x38, 8); // before FEATURES_OK: ignored
        negotiate(&mut t, 1);
        assert_ne!(read(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        assert_eq!(read(&mut t, 0x34), 16);
        for bad in [0, 3, 32] {
            write(&mut t, 0x38, bad); // not a power of two, or above the maximum: ignored
        }
        write(&mut t, 0x38, 8);
        for (offset, value) in [(0x80, 0x1000), (0x90, 0x2000), (0xa0, 0x3000)] {
            write(&mut t, offset, value);
        }
        write(&mut t, 0x44, 1);
        assert_eq!(read(&mut t, 0x44), 1);
        write(&mut t, 0x30, 7); // a queue that does not exist
        assert_eq!(read(&mut t, 0x34), 0);
        write(&mut t, 0x30, 0);
        write(&mut t, 0x70, 1 | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(t.is_active());
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Queue changes while active are ignored, except clearing QueueReady (a teardown).
        write(&mut t, 0x38, 4);
        write(&mut t, 0x44, 0);
        assert_eq!(read(&mut t, 0x44), 0);
        // Status may only gain bits; 0 resets.
        write(&mut t, 0x70, 1);
        assert!(t.is_active());
        write(&mut t, 0x70, 0);
        assert!(!t.is_active());
        assert_eq!(read(&mut t, 0x70), 0);
    }

    fn activate_one_queue(t: &mut MmioTransport) {
        negotiate(t, 1);
        write(t, 0x38, 8);
        for (offset, value) in [(0x80, 0x1000), (0x90, 0x2000), (0xa0, 0x3000)] {
            write(t, offset, value);
        }
        write(t, 0x44, 1);
        write(t, 0x70, 1 | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    #[test]
    fn a_saved_transport_is_restored_active_with_its_queues() {
        let (mut t, _) = transport();
        activate_one_queue(&mut t);
        t.interrupt().signal_used();
        let saved = t.save().unwrap();
        assert!(saved.active && saved.queues[0].ready && saved.queues[0].size == 8 && saved.interrupt_status == 1);
        let json = serde_json::to_string(&saved).unwrap();

        let (mut fresh, count) = transport();
        fresh.restore(0, &serde_json::from_str(&json).unwrap()).unwrap();
        assert!(fresh.is_active());
        assert_eq!(count.load(Ordering::SeqCst), 2, "the saved count, plus the restore's activation");
        assert_eq!(read(&mut fresh, 0x70), saved.status);
        assert_eq!(read(&mut fresh, 0x60), 1, "the unacknowledged interrupt");
        let mut again = fresh.save().unwrap();
        again.device = saved.device.clone();
        assert_eq!(again, saved);
    }

    #[test]
    fn a_state_for_another_device_or_bad_queues_is_refused() {
        let (mut t, _) = transport();
        activate_one_queue(&mut t);
        let saved = t.save().unwrap();
        let refused = |state: &TransportState| {
            let (mut fresh, count) = transport();
            let e = fresh.restore(3, state).unwrap_err().to_string();
            assert!(!fresh.is_active() && count.load(Ordering::SeqCst) == 0, "nothing restored: {e}");
            e
        };
        let e = refused(&TransportState { device_type: 2, name: "virtio-blk".into(), ..saved.clone() });
        assert!(e.contains("device 3 of the state is virtio-blk (type 2); this VM's is fake (type 42)"), "{e}");
        let mut bad = saved.clone();
        bad.queues[0].size = 7;
        assert!(refused(&bad).contains("saved queue 0"));
        let mut bad = saved.clone();
        bad.queues[0].used_ring = 1 << 40;
        assert!(refused(&bad).contains("outside guest memory"));
        let mut bad = saved.clone();
        bad.queues.push(bad.queues[0]);
        assert!(refused(&bad).contains("2 queues, the device 1"));
        let mut bad = saved.clone();
        bad.driver_features |= 1 << 20;
        assert!(refused(&bad).contains("not all offered"));
    }

    #[test]
    fn rings_outside_guest_memory_fail_the_device() {
        let (mut t, count) = transport();
        negotiate(&mut t, 1);
        write(&mut t, 0x38, 8);
        write(&mut t, 0x80, 0xffff_f000);
        write(&mut t, 0x84, 0xffff);
        write(&mut t, 0x44, 1);
        write(&mut t, 0x70, 1 | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert_ne!(read(&mut t, 0x70) & STATUS_FAILED, 0);
    }
}
