//! A pass over a driver's queue in real guest memory.

use super::{drain, Drained};
use crate::devices::virtio::test_driver::{memory, Driver, BUF, QSIZE};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The device's `avail_event` (after the used ring), which event-idx makes it publish.
fn avail_event(mem: &GuestMemoryMmap, drv: &Driver<'_>) -> u16 {
    let used = drv.addrs()[2];
    mem.read_obj(GuestAddress(used + 4 + 8 * u64::from(QSIZE)))
        .unwrap()
}

#[test]
fn every_chain_is_served_and_used_with_the_length_served() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    let heads: Vec<u16> = (0..3)
        .map(|i| drv.add(&[(BUF + 0x100 * i, 16, true)]))
        .collect();
    let mut q = drv.queue(false);
    let mut seen = Vec::new();
    let done = drain(
        &mem,
        &mut q,
        64,
        |chain| {
            seen.push(chain.head_index());
            7
        },
        |what, e| panic!("{what}: {e}"),
    );
    assert_eq!(
        done,
        Drained {
            used: 3,
            signal: true,
            more: false
        }
    );
    assert_eq!(seen, heads);
    let used: Vec<(u32, u32)> = heads.iter().map(|h| (u32::from(*h), 7)).collect();
    assert_eq!(drv.used(), used);
}

#[test]
fn an_empty_queue_is_no_work_and_no_interrupt() {
    let mem = memory();
    let drv = Driver::new(&mem);
    let mut q = drv.queue(false);
    let done = drain(
        &mem,
        &mut q,
        64,
        |_| panic!("no chain"),
        |what, e| panic!("{what}: {e}"),
    );
    assert_eq!(done, Drained::default());
}

#[test]
fn the_budget_bounds_a_pass_and_the_next_pass_goes_on() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    for i in 0..5 {
        drv.add(&[(BUF + 0x100 * i, 16, false)]);
    }
    let mut q = drv.queue(false);
    let first = drain(&mem, &mut q, 2, |_| 0, |what, e| panic!("{what}: {e}"));
    assert_eq!(
        first,
        Drained {
            used: 2,
            signal: true,
            more: true
        }
    );
    let second = drain(&mem, &mut q, 64, |_| 0, |what, e| panic!("{what}: {e}"));
    assert_eq!(
        second,
        Drained {
            used: 3,
            signal: true,
            more: false
        }
    );
    assert_eq!(drv.used().len(), 5);
}

#[test]
fn with_event_idx_the_device_publishes_where_it_wants_the_next_kick() {
    let mem = memory();
    let mut drv = Driver::new(&mem);
    drv.add(&[(BUF, 16, false)]);
    drv.add(&[(BUF + 0x100, 16, false)]);
    let mut q = drv.queue(true);
    // The driver wants an interrupt only once the fifth chain is used.
    drv.set_used_event(4);
    let done = drain(&mem, &mut q, 64, |_| 0, |what, e| panic!("{what}: {e}"));
    assert_eq!(
        done,
        Drained {
            used: 2,
            signal: false,
            more: false
        }
    );
    assert_eq!(avail_event(&mem, &drv), 2);
    drv.set_used_event(2);
    drv.add(&[(BUF + 0x200, 16, false)]);
    let done = drain(&mem, &mut q, 64, |_| 0, |what, e| panic!("{what}: {e}"));
    assert_eq!(
        done,
        Drained {
            used: 1,
            signal: true,
            more: false
        }
    );
}

#[test]
fn an_available_index_far_ahead_ends_the_pass_as_a_ring_error() {
    let mem = memory();
    let drv = Driver::new(&mem);
    let avail = drv.addrs()[1];
    mem.write_obj(QSIZE + 1, GuestAddress(avail + 2)).unwrap();
    let mut q = drv.queue(false);
    let mut errors = Vec::new();
    let done = drain(
        &mem,
        &mut q,
        64,
        |_| panic!("no chain"),
        |what, _| errors.push(what),
    );
    assert_eq!(done, Drained::default());
    assert_eq!(errors, ["reading the available ring"]);
    assert!(q.is_valid(&mem), "the queue stays as the driver set it");
}
