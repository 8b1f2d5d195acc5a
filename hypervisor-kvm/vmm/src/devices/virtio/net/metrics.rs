//! Counters of one virtio-net device, readable by tests and (later) the VMM's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a virtio-net device has done since it was created (across resets).
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames the guest sent that were written to the tap.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames (without the virtio-net header).
    pub tx_bytes: AtomicU64,
    /// Transmit chains dropped as malformed: shorter than a header and an Ethernet header,
    /// longer than the bounded buffer, with device-writable descriptors, or outside guest
    /// memory.
    pub tx_bad_chains: AtomicU64,
    /// Transmit headers that asked for offloads that were not negotiated (the header was
    /// zeroed and the frame sent as is).
    pub tx_bad_headers: AtomicU64,
    /// Frames the tap refused (write error, short write, or its queue full).
    pub tx_tap_errors: AtomicU64,
    /// Frames from the tap delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames (without the virtio-net header).
    pub rx_bytes: AtomicU64,
    /// Receive chains completed empty: device-readable descriptors, smaller than the header,
    /// or outside guest memory.
    pub rx_bad_chains: AtomicU64,
    /// Frames dropped because the guest's buffer chain could not hold them.
    pub rx_frames_too_big: AtomicU64,
    /// Frames from the tap dropped as malformed (shorter than the header and an Ethernet
    /// header, or carrying offloads that were not negotiated).
    pub rx_bad_frames: AtomicU64,
    /// Failed reads from the tap.
    pub rx_tap_errors: AtomicU64,
    /// Times the device stopped reading the tap because the guest had no receive buffers.
    pub rx_no_buffers: AtomicU64,
    /// Errors of a queue itself (available index out of range, used ring not writable).
    pub queue_errors: AtomicU64,
}

impl NetMetrics {
    /// Adds 1 to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
