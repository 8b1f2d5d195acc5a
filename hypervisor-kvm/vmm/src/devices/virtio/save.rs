//! A device's part of a VM's state file (`vstate::snapshot`): its transport registers, each
//! queue's configuration and ring indexes, and what the device model itself must keep.
//!
//! An active device's queues live in its worker thread; [`VirtioDevice::save`] stops the
//! worker, takes the queues' state and starts the worker again on the same queues, so a VM
//! can run on after a save. A device model that cannot be saved yet says so
//! ([`SaveError::Unsupported`]), and the whole save fails naming it: no state file is written
//! half-way.
//!
//! [`VirtioDevice::save`]: super::VirtioDevice::save

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

/// Errors saving or restoring a device.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// This device model has no save and restore yet.
    #[error("{0} cannot be saved and restored yet")]
    Unsupported(&'static str),
    /// The worker ended without handing its queues back.
    #[error("{0}: its worker did not hand its queues back")]
    Worker(&'static str),
    /// The worker could not be started again after the save.
    #[error("{device}: starting its worker again")]
    Restart {
        /// The device type's name.
        device: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The saved device is not this VM's device at that slot.
    #[error("device {index} of the state is {saved}; this VM's is {here}: start the clone with the template's devices")]
    Mismatch {
        /// The slot.
        index: usize,
        /// What the state has there.
        saved: String,
        /// What this VM has there.
        here: String,
    },
    /// A saved queue is not valid for the device.
    #[error("{device}: saved queue {index}: {why}")]
    Queue {
        /// The device type's name.
        device: &'static str,
        /// The queue.
        index: usize,
        /// What was wrong.
        why: String,
    },
    /// The device's own saved state is not what it expects.
    #[error("{device}: {what}")]
    State {
        /// The device type's name.
        device: &'static str,
        /// What was wrong.
        what: String,
    },
}

/// What a device hands over for a save.
#[derive(Debug, Clone)]
pub struct DeviceSave {
    /// The queues its worker served, in queue order; empty when the device is not active
    /// (the transport then has the queues).
    pub queues: Vec<QueueState>,
    /// The device model's own state (`null` when it has none).
    pub state: serde_json::Value,
}

impl DeviceSave {
    /// A device with no state of its own and, without a worker, no queues.
    pub fn stateless(queues: Vec<QueueState>) -> DeviceSave {
        DeviceSave { queues, state: serde_json::Value::Null }
    }
}

/// One queue in a state file (virtio-queue's `QueueState`, which has no serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRegs {
    /// QueueNumMax.
    pub max_size: u16,
    /// QueueNum.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// The descriptor table's guest address.
    pub desc_table: u64,
    /// The available ring's.
    pub avail_ring: u64,
    /// The used ring's.
    pub used_ring: u64,
    /// The next available entry the device reads.
    pub next_avail: u16,
    /// The next used entry the device writes.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
}

impl From<QueueState> for QueueRegs {
    fn from(q: QueueState) -> Self {
        QueueRegs {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }
}

impl From<QueueRegs> for QueueState {
    fn from(q: QueueRegs) -> Self {
        QueueState {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
        }
    }
}

/// Checks that a device model with no state of its own got none.
pub fn expect_no_state(device: &'static str, state: &serde_json::Value) -> Result<(), SaveError> {
    if state.is_null() {
        Ok(())
    } else {
        Err(SaveError::State { device, what: format!("the state holds {state} for a device that keeps none") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};

    #[test]
    fn queue_state_round_trips_through_json() {
        let mut q = Queue::new(256).unwrap();
        q.set_size(128);
        q.set_ready(true);
        q.set_desc_table_address(Some(0x1000), Some(0));
        q.set_next_avail(7);
        q.set_next_used(5);
        let regs = QueueRegs::from(q.state());
        let json = serde_json::to_string(&regs).unwrap();
        let back: QueueRegs = serde_json::from_str(&json).unwrap();
        assert_eq!(back, regs);
        let q2 = Queue::try_from(QueueState::from(back)).unwrap();
        assert_eq!((q2.next_avail(), q2.next_used(), q2.size(), q2.ready()), (7, 5, 128, true));
        assert!(serde_json::from_str::<QueueRegs>(&json.replace("}", ",\"x\":1}")).is_err());
        assert!(expect_no_state("virtio-blk", &serde_json::json!({"a": 1})).unwrap_err().to_string().contains("keeps none"));
    }
}
