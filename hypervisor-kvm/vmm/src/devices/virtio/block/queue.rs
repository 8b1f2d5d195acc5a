//! Serving the request queue: pure functions over guest memory, the queue and the disk (no
//! threads, no epoll), called by the worker, the unit tests and the fuzz target.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::disk::Disk;
use super::metrics::BlockMetrics;
use super::request::{status_byte, Request, RequestKind, Segment};
use crate::devices::virtio::drain::drain;
use crate::logger::RateLimit;

/// How often one call looks at the available ring at most (so also how many chains it serves
/// at most): a guest that keeps the queue full cannot keep the worker from its stop event.
pub const BUDGET: usize = 1024;

/// What [`process_queue`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Chains were returned and the driver wants an interrupt for them.
    pub notify: bool,
    /// The budget ran out with chains still available: call again soon.
    pub more: bool,
}

/// Serves the available chains of `queue` against `disk`, returning each to the used ring.
/// Bad requests are counted in `metrics`, logged through `log` and answered
/// `VIRTIO_BLK_S_IOERR` (or returned with length 0 when they have no status byte).
pub fn process_queue(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    disk: &Disk,
    metrics: &BlockMetrics,
    log: &mut RateLimit,
) -> Processed {
    // One limiter for both closures: `serve` and `ring_error` are never called at once.
    let log = std::cell::RefCell::new(log);
    let done = drain(
        mem,
        queue,
        BUDGET,
        |chain| serve(mem, chain, disk, metrics, &mut log.borrow_mut()),
        |what, e| queue_error(metrics, &mut log.borrow_mut(), what, e),
    );
    BlockMetrics::add(&metrics.requests, u64::from(done.used));
    Processed { notify: done.signal, more: done.more }
}

fn queue_error(metrics: &BlockMetrics, log: &mut RateLimit, what: &str, e: &virtio_queue::Error) {
    BlockMetrics::inc(&metrics.queue_errors);
    if log.hit() {
        tracing::warn!(device = super::NAME, error = %e, "request queue unusable: {what}");
    }
}

/// Serves one chain; returns the used length (bytes written to the guest).
fn serve(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &Disk,
    metrics: &BlockMetrics,
    log: &mut RateLimit,
) -> u32 {
    // The chain iterator stops after at most the queue size (or an indirect table's 65535)
    // descriptors, and at a loop or a descriptor outside guest memory.
    let descs: Vec<Descriptor> = chain.collect();
    let Some(status) = status_byte(mem, &descs) else {
        BlockMetrics::inc(&metrics.no_status);
        if log.hit() {
            tracing::warn!(device = super::NAME, descriptors = descs.len(), "request without a writable status byte");
        }
        return 0;
    };
    let (code, written) = match Request::parse(mem, &descs, disk.sectors()) {
        Ok(request) => execute(mem, &request, disk, metrics, log),
        Err(e) => {
            BlockMetrics::inc(&metrics.invalid);
            if log.hit() {
                tracing::warn!(device = super::NAME, error = %e, "invalid request");
            }
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    // The status byte was checked to lie in guest memory.
    if mem.write_obj(code as u8, status).is_err() {
        return 0;
    }
    // A chain holds at most 4 GiB (the chain iterator stops before), status included.
    u32::try_from(written).unwrap_or(u32::MAX).saturating_add(1)
}

/// Carries out a valid request; returns the status and the data bytes written to the guest.
fn execute(
    mem: &GuestMemoryMmap,
    request: &Request,
    disk: &Disk,
    metrics: &BlockMetrics,
    log: &mut RateLimit,
) -> (u32, u64) {
    let result = match request.kind {
        RequestKind::In => disk.read_into(mem, &request.data, request.offset).map(|()| {
            BlockMetrics::inc(&metrics.reads);
            BlockMetrics::add(&metrics.read_bytes, request.data_len);
            request.data_len
        }),
        RequestKind::Out if disk.read_only() => {
            BlockMetrics::inc(&metrics.read_only_rejects);
            if log.hit() {
                tracing::warn!(device = super::NAME, sector = request.sector, "write to a read-only disk");
            }
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        RequestKind::Out => disk.write_from(mem, &request.data, request.offset).map(|()| {
            BlockMetrics::inc(&metrics.writes);
            BlockMetrics::add(&metrics.write_bytes, request.data_len);
            0
        }),
        RequestKind::Flush => disk.flush().map(|()| {
            BlockMetrics::inc(&metrics.flushes);
            0
        }),
        RequestKind::GetId => {
            BlockMetrics::inc(&metrics.get_ids);
            return (VIRTIO_BLK_S_OK, write_id(mem, &request.data, disk.id()));
        }
        RequestKind::Unsupported(kind) => {
            BlockMetrics::inc(&metrics.unsupported);
            if log.hit() {
                tracing::debug!(device = super::NAME, kind, "unsupported request type");
            }
            return (VIRTIO_BLK_S_UNSUPP, 0);
        }
    };
    match result {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(e) => {
            BlockMetrics::inc(&metrics.io_errors);
            if log.hit() {
                tracing::warn!(device = super::NAME, error = %e, kind = ?request.kind, sector = request.sector, "disk I/O failed");
            }
            (VIRTIO_BLK_S_IOERR, 0)
        }
    }
}

/// Writes as much of `id` as fits into `segs`; returns the bytes written.
fn write_id(mem: &GuestMemoryMmap, segs: &[Segment], id: &[u8]) -> u64 {
    let mut rest = id;
    for seg in segs {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(rest.len().min(seg.len as usize));
        // The segments were checked to lie in guest memory.
        if mem.write_slice(now, seg.addr).is_err() {
            break;
        }
        rest = later;
    }
    (id.len() - rest.len()) as u64
}
