//! What the vCPU threads and the control API tell the vmm's main thread.

use crate::vstate::vcpu::{GuestExit, VcpuError};

/// What the vCPU threads and the API tell the main thread.
#[derive(Debug)]
pub enum Event {
    /// A vCPU left its loop.
    Vcpu(u8, Result<GuestExit, VcpuError>),
    /// The API asked for a shutdown.
    Shutdown,
}
