//! Feeds guest-controlled tx chains to the virtio-vsock queue code and its real backend
//! (a muxer with a listening Unix socket and a `_52` port socket), then lets it answer into
//! rx buffers. Each input is a list of records `[shape, n, bytes[n]]`: the bytes are placed
//! in guest memory and split over up to three descriptors as `shape` says; shape's high bit
//! also stamps a plausible address (guest CID 3 to host CID 2, STREAM) over the header so
//! that the connection state machine is reached quickly.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::devices::virtio::vsock::metrics::VsockMetrics;
use crate::devices::virtio::vsock::muxer::{Limits, Muxer};
use crate::devices::virtio::vsock::queue::QueueHandler;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x2_0000;
const TX_DATA: u64 = 0x2000;
const RX_DATA: u64 = 0x1_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

struct Sockets {
    path: PathBuf,
    listener: UnixListener,
    port52: UnixListener,
}

fn sockets() -> &'static Sockets {
    static S: OnceLock<Sockets> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vsock-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let p52 = dir.join("v.sock_52");
        let _ = std::fs::remove_file(&p52);
        let port52 = UnixListener::bind(&p52).expect("bind _52");
        port52.set_nonblocking(true).expect("nonblocking");
        Sockets {
            path,
            listener,
            port52,
        }
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let s = sockets();
    // Connections the previous input made to port 52: accept and drop them.
    while s.port52.accept().is_ok() {}

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).expect("guest memory");
    let rxq_mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let txq_mock = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);

    let mut descs: Vec<RawDescriptor> = Vec::new();
    let mut at = TX_DATA;
    let mut rest = data;
    while let [shape, n, tail @ ..] = rest {
        let shape = *shape;
        let n = usize::from(*n).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        if descs.len() + 3 > 16 || at + 256 > RX_DATA {
            break;
        }
        let mut bytes = bytes.to_vec();
        if shape & 0x80 != 0 && bytes.len() >= 32 {
            bytes[0..8].copy_from_slice(&3u64.to_le_bytes());
            bytes[8..16].copy_from_slice(&2u64.to_le_bytes());
            bytes[28..30].copy_from_slice(&1u16.to_le_bytes());
        }
        mem.write_slice(&bytes, GuestAddress(at))
            .expect("in memory");
        // Split points and per-descriptor oddities from the shape byte.
        let cut1 = (usize::from(shape & 0x7) * 8).min(bytes.len());
        let cut2 = (cut1 + usize::from((shape >> 3) & 0x7) * 8).min(bytes.len());
        let parts = [(0, cut1), (cut1, cut2), (cut2, bytes.len())];
        let used: Vec<_> = parts.iter().filter(|(a, b)| b > a).collect();
        let head = descs.len() as u16;
        for (i, (a, b)) in used.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == used.len();
            let mut flags = if last { 0 } else { F_NEXT };
            if shape & 0x40 != 0 && last {
                flags |= F_WRITE;
            }
            let mut addr = at + *a as u64;
            let mut len = (*b - *a) as u32;
            if shape & 0x40 != 0 && shape & 0x1 != 0 {
                addr = MEM as u64 - 4; // straddles the end of guest memory
                len = len.saturating_add(u32::from(shape));
            }
            descs.push(RawDescriptor::from(Descriptor::new(
                addr,
                len,
                flags,
                idx + 1,
            )));
        }
        if used.is_empty() {
            descs.push(RawDescriptor::from(Descriptor::new(at, 0, 0, 0)));
        }
        at += (bytes.len() as u64 + 7) & !7;
    }
    if !descs.is_empty() && txq_mock.add_desc_chains(&descs, 0).is_err() {
        return;
    }
    for i in 0..8u16 {
        let d = Descriptor::new(RX_DATA + u64::from(i) * 0x1000, 0x1000, F_WRITE, 0);
        if rxq_mock
            .add_desc_chains(&[RawDescriptor::from(d)], i)
            .is_err()
        {
            return;
        }
    }
    let (Ok(mut txq), Ok(mut rxq)) = (
        txq_mock.create_queue::<Queue>(),
        rxq_mock.create_queue::<Queue>(),
    ) else {
        return;
    };

    let Ok(listener) = s.listener.try_clone() else {
        return;
    };
    let metrics = Arc::new(VsockMetrics::default());
    let limits = Limits {
        max_connections: 4,
        request_timeout: Duration::from_millis(1),
        ..Limits::default()
    };
    let mut muxer = Muxer::new(3, &s.path, listener, limits, metrics.clone());
    let mut handler = QueueHandler::new(metrics.clone());
    handler.process_tx(&mem, &mut txq, &mut muxer);
    muxer.sweep(Instant::now() + Duration::from_millis(5));
    handler.process_rx(&mem, &mut rxq, &mut muxer);
    let get = VsockMetrics::get;
    REACHED.add([get(&metrics.tx_packets), get(&metrics.bad_packets)]);
}

/// Packets the muxer took and malformed packets so far, over all inputs.
pub static REACHED: super::Reached<2> = super::Reached::new();
