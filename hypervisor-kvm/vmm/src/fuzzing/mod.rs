//! The fuzz harnesses of the guest-facing queue code, one per device (`cargo fuzz run
//! virtio_blk` and so on in `hypervisor-kvm/vmm/fuzz`, whose targets call these). Each takes one
//! input (guest memory and queue layout, as its module says) and serves the queues as the
//! device's worker would; a panic or a hang is a bug. The harnesses are compiled for the
//! feature `fuzzing` (the fuzz crate enables it) and for the unit tests, which replay the seed
//! corpus and a few thousand generated inputs through every harness on every `cargo test`
//! (`smoke_tests.rs`), so the harnesses and the code they reach stay exercised in CI, where
//! cargo-fuzz (nightly) may be missing.

pub mod blk;
pub mod console;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals of what a harness's inputs reached (requests served, malformed ones, ...),
/// so a test can check that generated inputs got past the first checks.
pub struct Reached<const N: usize>([AtomicU64; N]);

impl<const N: usize> Reached<N> {
    /// All zero.
    pub const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; N])
    }

    /// Adds one input's counts.
    pub fn add(&self, counts: [u64; N]) {
        for (total, n) in self.0.iter().zip(counts) {
            total.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The totals so far.
    pub fn get(&self) -> [u64; N] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

impl<const N: usize> Default for Reached<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod smoke_tests;
