//! The devices' part of a VM's state file (`crate::save`).

use serde::{Deserialize, Serialize};

use crate::devices::legacy::serial::SerialRegs;
use crate::devices::virtio::mmio::TransportState;

/// Every device's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesState {
    /// COM1.
    pub serial: SerialRegs,
    /// The virtio-mmio devices, in slot order.
    pub mmio: Vec<TransportState>,
}
