//! Fuzzes the virtio-console queues with guest memory from the fuzz input: the control
//! transmit queue (driver messages, answered on the control receive queue), the transmit
//! queues of a port with a host, of a port without one and of port 0, and a port's receive
//! queue fed by a host.
//!
//! Layout: the input is copied to guest address 0. Queue `i` (of 8: port 0, control, two
//! named ports) has its descriptor table at `i * 0x400`, its avail ring at `+ 0x100` and its
//! used ring at `+ 0x200`; its avail index and descriptors (which may point anywhere in the
//! 1 MiB of guest memory, or outside it) come from the input.
//!
//! `seeds/virtio_console/handshake` goes through the whole handshake (DEVICE_READY,
//! PORT_READY, PORT_OPEN) with data on every port queue, which random bytes rarely reach:
//! `cargo fuzz run virtio_console seeds/virtio_console` starts from it.

use crate::devices::virtio::console::control::ControlState;
use crate::devices::virtio::console::metrics::ConsoleMetrics;
use crate::devices::virtio::console::queue::{self, Scratch, TxCounters};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 1 << 20;
const QUEUES: u64 = 8;
const QUEUE_SIZE: u16 = 16;

fn queue(mem: &GuestMemoryMmap, index: u64) -> Option<Queue> {
    let base = index * 0x400;
    let mut q = Queue::new(QUEUE_SIZE).ok()?;
    q.set_size(QUEUE_SIZE);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    let len = data.len().min(MEM_SIZE);
    if mem.write_slice(&data[..len], GuestAddress(0)).is_err() {
        return;
    }
    let Some(mut queues) = (0..QUEUES)
        .map(|i| queue(&mem, i))
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let mut state = ControlState::new(&["agent.0".to_owned(), "agent.1".to_owned()]);
    let metrics = ConsoleMetrics::new(2);
    let mut scratch = Scratch::default();
    // Make the ports' hosts known, so PORT_OPEN is sent and data may flow.
    state.set_host_connected(1, true);

    // The driver's control messages, answered at once.
    let [_, _, rx, tx, ..] = &mut queues[..] else {
        return;
    };
    queue::receive_control(&mem, tx, rx, &mut state, &metrics, &mut scratch);
    queue::send_control(&mem, rx, &mut state, &metrics, &mut scratch);

    // Port 1 has a host that takes everything; port 2 and port 0 have none.
    let p1 = &metrics.ports[0];
    let counters = TxCounters {
        sent: &p1.bytes_to_host,
        dropped: &p1.dropped_bytes,
    };
    let mut pending = None;
    let mut host = std::io::sink();
    queue::transmit(
        &mem,
        &mut queues[5],
        &mut pending,
        Some(&mut host),
        &counters,
        &metrics,
        &mut scratch,
    );
    let p2 = &metrics.ports[1];
    let counters = TxCounters {
        sent: &p2.bytes_to_host,
        dropped: &p2.dropped_bytes,
    };
    queue::transmit::<std::io::Sink>(
        &mem,
        &mut queues[7],
        &mut None,
        None,
        &counters,
        &metrics,
        &mut scratch,
    );
    let counters = TxCounters {
        sent: &metrics.port0_dropped_bytes,
        dropped: &metrics.port0_dropped_bytes,
    };
    queue::transmit::<std::io::Sink>(
        &mem,
        &mut queues[1],
        &mut None,
        None,
        &counters,
        &metrics,
        &mut scratch,
    );

    REACHED.add([
        metrics.control_from_guest.get(),
        metrics.control_invalid.get(),
        p1.bytes_to_host.get(),
    ]);
    // Host bytes into port 1's receive buffers, if the driver opened it.
    if state.rx_allowed(1) {
        let mut source: &[u8] = b"bytes from the host, more than one small buffer holds";
        queue::receive(
            &mem,
            &mut queues[4],
            &mut source,
            &p1.bytes_to_guest,
            &metrics,
            &mut scratch,
        );
    }
}

/// Control messages handled, invalid control messages and bytes passed to port 1's host so
/// far, over all inputs.
pub static REACHED: super::Reached<3> = super::Reached::new();
