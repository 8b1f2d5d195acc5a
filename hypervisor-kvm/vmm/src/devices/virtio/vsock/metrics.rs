//! Counters of the vsock device, readable while it runs (tests, diagnostics).

use std::sync::atomic::{AtomicU64, Ordering};

/// What the device has done and refused so far. All counters only grow.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Packets the guest sent (tx chains with a valid header).
    pub tx_packets: AtomicU64,
    /// Payload bytes the guest sent on established connections.
    pub tx_bytes: AtomicU64,
    /// Packets given to the guest.
    pub rx_packets: AtomicU64,
    /// Payload bytes given to the guest.
    pub rx_bytes: AtomicU64,
    /// Host-initiated connections whose `CONNECT` line was accepted.
    pub host_connects: AtomicU64,
    /// Guest-initiated connections that reached a host socket.
    pub guest_connects: AtomicU64,
    /// Guest connection requests answered with RST (no host socket, or connect failed).
    pub guest_connects_refused: AtomicU64,
    /// Connections refused because the connection limit was reached.
    pub connection_limit_hits: AtomicU64,
    /// Host-initiated connections the guest did not answer in time.
    pub request_timeouts: AtomicU64,
    /// Host handshakes that were malformed, too long, closed early or timed out.
    pub handshake_errors: AtomicU64,
    /// Tx chains that were unusable (unreadable memory, shorter than a header).
    pub bad_tx_chains: AtomicU64,
    /// Rx chains that were unusable (not writable, shorter than a header).
    pub bad_rx_chains: AtomicU64,
    /// Packets rejected by validation (cid, type, op, length).
    pub bad_packets: AtomicU64,
    /// Connections reset because the guest ignored its credit.
    pub credit_violations: AtomicU64,
    /// Connections reset because of an op that does not fit their state.
    pub protocol_errors: AtomicU64,
    /// Connections reset because their host stream failed.
    pub stream_errors: AtomicU64,
    /// RST packets sent to the guest.
    pub resets_sent: AtomicU64,
    /// RST packets dropped because too many were waiting for rx buffers.
    pub resets_dropped: AtomicU64,
}

impl VsockMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
