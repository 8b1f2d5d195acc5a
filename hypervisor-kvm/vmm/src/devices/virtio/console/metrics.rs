//! Counters of a console device, readable by tests and by the VMM while the device runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters of one named port.
#[derive(Debug, Default)]
pub struct PortMetrics {
    /// Bytes the guest wrote that reached the connected host stream.
    pub bytes_to_host: Counter,
    /// Bytes from the host stream placed in the guest's receive buffers.
    pub bytes_to_guest: Counter,
    /// Bytes the guest wrote while no host was connected (or after the host went away in the
    /// middle of a buffer): dropped, as QEMU does.
    pub dropped_bytes: Counter,
    /// Host connections accepted.
    pub host_connects: Counter,
    /// Host connections that ended (peer closed, error, or reset of the stream).
    pub host_disconnects: Counter,
    /// `PORT_OPEN 1` messages from the driver (a guest process opened the port).
    pub guest_opens: Counter,
    /// `PORT_OPEN 0` messages from the driver.
    pub guest_closes: Counter,
}

/// The counters of a console device.
#[derive(Debug, Default)]
pub struct ConsoleMetrics {
    /// Per named port; index 0 is port id 1.
    pub ports: Vec<PortMetrics>,
    /// Bytes the guest wrote to port 0, which has no backend.
    pub port0_dropped_bytes: Counter,
    /// Well-formed control messages received from the driver.
    pub control_from_guest: Counter,
    /// Control messages sent to the driver.
    pub control_to_guest: Counter,
    /// Control messages from the driver that were rejected (too short, unknown or
    /// device-only event, port id out of range or never added, bad value).
    pub control_invalid: Counter,
    /// Control receive buffers too small for the pending message (returned with length 0).
    pub control_buffer_too_small: Counter,
    /// Descriptor chains rejected: wrong direction, outside guest memory, broken `next`
    /// links or loops, too many descriptors.
    pub bad_chains: Counter,
    /// Times the device was activated by the driver.
    pub activations: Counter,
}

impl ConsoleMetrics {
    /// Counters for a device with `ports` named ports.
    pub fn new(ports: usize) -> Self {
        Self { ports: (0..ports).map(|_| PortMetrics::default()).collect(), ..Self::default() }
    }

    /// The counters of port `id` (1-based), if it exists.
    pub fn port(&self, id: u32) -> Option<&PortMetrics> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.ports.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_ports_are_one_based() {
        let m = ConsoleMetrics::new(2);
        m.control_invalid.inc();
        m.control_invalid.add(4);
        assert_eq!(m.control_invalid.get(), 5);
        assert!(m.port(0).is_none());
        assert!(m.port(3).is_none());
        m.port(2).expect("port 2").bytes_to_host.add(7);
        assert_eq!(m.ports[1].bytes_to_host.get(), 7);
    }
}
