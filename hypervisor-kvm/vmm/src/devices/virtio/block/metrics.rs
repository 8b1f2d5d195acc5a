//! Counters of one virtio-blk device, readable by tests and (later) the VMM's metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a block device did since it was created.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Descriptor chains returned to the guest, whatever their outcome.
    pub requests: AtomicU64,
    /// Successful `VIRTIO_BLK_T_IN` requests.
    pub reads: AtomicU64,
    /// Bytes read from the image into guest memory.
    pub read_bytes: AtomicU64,
    /// Successful `VIRTIO_BLK_T_OUT` requests.
    pub writes: AtomicU64,
    /// Bytes written from guest memory to the image.
    pub write_bytes: AtomicU64,
    /// Successful `VIRTIO_BLK_T_FLUSH` requests.
    pub flushes: AtomicU64,
    /// `VIRTIO_BLK_T_GET_ID` requests.
    pub get_ids: AtomicU64,
    /// Requests of a type the device does not implement (answered `VIRTIO_BLK_S_UNSUPP`).
    pub unsupported: AtomicU64,
    /// Malformed requests answered `VIRTIO_BLK_S_IOERR` (bad header, direction, length,
    /// sector range, buffers outside guest memory).
    pub invalid: AtomicU64,
    /// Writes refused because the device is read-only.
    pub read_only_rejects: AtomicU64,
    /// Reads, writes and flushes the host image failed.
    pub io_errors: AtomicU64,
    /// Chains without a writable status byte, returned with length 0.
    pub no_status: AtomicU64,
    /// Times the queue itself was unusable (broken available index, used ring outside memory).
    pub queue_errors: AtomicU64,
}

impl BlockMetrics {
    /// Adds `n` to `counter`.
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub(super) fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
