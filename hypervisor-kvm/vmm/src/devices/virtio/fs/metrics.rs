//! Counters of one virtio-fs device.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a virtio-fs device did since it was created.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Activations the backend accepted.
    pub activations: AtomicU64,
    /// Used-buffer notifications from the backend, each forwarded as an interrupt.
    pub interrupts: AtomicU64,
    /// Failed or unanswered vhost-user setups and teardowns, and backend hang-ups.
    pub backend_errors: AtomicU64,
}

impl FsMetrics {
    /// Adds one to `counter`.
    pub(super) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
