//! The buses the vCPU threads dispatch their exits to: port I/O (COM1 and the legacy ports)
//! and MMIO (one virtio-mmio window per device).

use std::io::Write;
use std::sync::Mutex;

use crate::devices::legacy::pio::{PioAction, PioBus};
use crate::logger::RateLimit;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW};

/// One device window on the MMIO bus.
pub struct MmioSlot {
    /// Base guest physical address.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
    /// The device behind it.
    pub transport: Mutex<MmioTransport>,
}

/// The VM's buses, shared by all vCPU threads.
pub struct Bus {
    pio: Mutex<PioBus<Box<dyn Write + Send>>>,
    mmio: Vec<MmioSlot>,
    unhandled_mmio: Mutex<RateLimit>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a device panicked on another vCPU; its state is still the best
    // we have, and the vmm must not take the host down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Bus {
    /// A bus with the port devices and the MMIO device windows (sorted by base, not
    /// overlapping).
    pub fn new(pio: PioBus<Box<dyn Write + Send>>, mut mmio: Vec<MmioSlot>) -> Self {
        mmio.sort_by_key(|s| s.base);
        Self {
            pio: Mutex::new(pio),
            mmio,
            unhandled_mmio: Mutex::new(RateLimit::default()),
        }
    }

    /// Every device's state, for a save of the paused VM.
    pub fn save_devices(&self) -> Result<crate::devices::saved::DevicesState, crate::devices::virtio::save::SaveError> {
        let serial = lock(&self.pio).serial.regs();
        let mmio = self.mmio.iter().map(|slot| lock(&slot.transport).save()).collect::<Result<_, _>>()?;
        Ok(crate::devices::saved::DevicesState { serial, mmio })
    }

    /// The MMIO devices.
    pub fn mmio_slots(&self) -> &[MmioSlot] {
        &self.mmio
    }

    fn slot(&self, addr: u64) -> Option<(&MmioSlot, u64)> {
        let i = self
            .mmio
            .partition_point(|s| s.base <= addr)
            .checked_sub(1)?;
        let slot = &self.mmio[i];
        let offset = addr - slot.base;
        (offset < MMIO_WINDOW).then_some((slot, offset))
    }

    /// A guest MMIO read; unknown addresses read as 0.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.slot(addr) {
            Some((slot, offset)) if offset + data.len() as u64 <= MMIO_WINDOW => {
                lock(&slot.transport).read(offset, data)
            }
            _ => {
                data.fill(0);
                if lock(&self.unhandled_mmio).hit() {
                    tracing::debug!(addr, len = data.len(), "unhandled MMIO read");
                }
            }
        }
    }

    /// A guest MMIO write; unknown addresses are ignored.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        match self.slot(addr) {
            Some((slot, offset)) if offset + data.len() as u64 <= MMIO_WINDOW => {
                lock(&slot.transport).write(offset, data)
            }
            _ => {
                if lock(&self.unhandled_mmio).hit() {
                    tracing::debug!(addr, ?data, "unhandled MMIO write");
                }
            }
        }
    }

    /// A guest `in`.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        lock(&self.pio).read(port, data)
    }

    /// A guest `out`.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> PioAction {
        lock(&self.pio).write(port, data)
    }

    /// Flushes the console log and logs the port exit statistics.
    pub fn finish(&self) {
        let mut pio = lock(&self.pio);
        let total: u64 = pio.exits.values().sum();
        tracing::info!(total, busiest = ?pio.busiest_ports(8), "port I/O exits");
        if let Err(e) = pio.serial.writer_mut().flush() {
            tracing::warn!(error = %e, "flushing the console log");
        }
    }
}
