//! Against a real virtiofsd (QEMU's C one, which needs root): the vhost-user handshake on a
//! memfd guest memory, one FUSE_INIT through the request queue answered in the used ring with
//! an interrupt, a FUSE_GETATTR, reset and a second activation, a backend that died before
//! the activation or while the device runs, and the handshake under the device seccomp filter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::Backend;
use super::*;
use crate::vstate::memory::create_guest_memory;
use crate::devices::virtio::net::tap::testutil::skip_unless;
use crate::devices::virtio::{Interrupt, INT_USED_RING};

const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const QSIZE: u16 = 16;
const FUSE_INIT: u32 = 26;
const FUSE_GETATTR: u32 = 3;
const REQUEST: u64 = 0x40_000;
const REPLY: u64 = 0x41_000;

/// A virtiofsd serving a fresh temporary directory; killed (and reaped) when dropped.
struct Virtiofsd {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts one, or returns None after saying why it cannot run here.
    fn start() -> Option<Self> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if skip_unless(root, "the virtiofsd tests need root (QEMU's virtiofsd refuses otherwise)")
            || skip_unless(Path::new(VIRTIOFSD).exists(), &format!("no {VIRTIOFSD} on this machine"))
        {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("the shared directory");
        std::fs::write(shared.join("hello"), "hi\n").expect("a file to share");
        let socket = dir.path().join("vfsd.sock");
        let log = std::fs::File::create(dir.path().join("virtiofsd.log")).expect("the log file");
        let child = Command::new(VIRTIOFSD)
            .arg(format!("--socket-path={}", socket.display()))
            .args(["-o", &format!("source={}", shared.display()), "-o", "cache=none", "-o", "sandbox=chroot"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("virtiofsd starts");
        let mut vfsd = Self { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vfsd.socket.exists() {
            let exited = vfsd.child.try_wait().expect("waitpid on virtiofsd");
            assert!(exited.is_none() && Instant::now() < deadline, "virtiofsd did not listen: {}", vfsd.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(vfsd)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("virtiofsd.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Queue `index`'s rings, at 0x10000 * (index + 1) in guest memory.
fn ring(index: u64) -> (u64, u64, u64) {
    let base = 0x10_000 * (index + 1);
    (base, base + 0x1000, base + 0x2000)
}

fn queue(mem: &GuestMemoryMmap, index: u64) -> Queue {
    let (desc, avail, used) = ring(index);
    for (addr, len) in [(desc, 0x1000usize), (avail, 0x1000), (used, 0x1000)] {
        mem.write_slice(&vec![0u8; len], GuestAddress(addr)).unwrap();
    }
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    assert!(q.is_valid(mem));
    q
}

/// What the test keeps of an activation: the kicks (the guest's notifications) and the
/// interrupt with its eventfd.
pub(super) struct Guest {
    kicks: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    irq: EventFd,
}

pub(super) fn activation(fs: &Fs, mem: &GuestMemoryMmap) -> (Activation, Guest) {
    let kicks: Vec<EventFd> = (0..NUM_QUEUES).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    let activation = Activation {
        mem: mem.clone(),
        queues: (0..NUM_QUEUES as u64).map(|i| queue(mem, i)).collect(),
        queue_evts: kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
        interrupt: interrupt.clone(),
        acked_features: fs.features(),
    };
    (activation, Guest { kicks, interrupt, irq })
}

/// Puts a FUSE request (`opcode` on `nodeid` with `body`) on the request queue (queue 1)
/// as avail entry `n` and kicks it.
fn send_request(mem: &GuestMemoryMmap, guest: &Guest, opcode: u32, nodeid: u64, unique: u64, n: u16, body: &[u8]) {
    // fuse_in_header (40 bytes), then the body.
    let len = 40 + body.len() as u32;
    let mut req = Vec::new();
    req.extend(len.to_le_bytes());
    req.extend(opcode.to_le_bytes());
    req.extend(unique.to_le_bytes());
    req.extend(nodeid.to_le_bytes());
    req.extend([0u8; 4 + 4 + 4 + 4]); // uid, gid, pid, extlen + padding
    req.extend(body);
    mem.write_slice(&req, GuestAddress(REQUEST)).unwrap();
    mem.write_slice(&[0u8; 256], GuestAddress(REPLY)).unwrap();
    let (desc, avail, _) = ring(1);
    let d0 = 2 * u64::from(n);
    // Descriptor d0: the request (device-readable), chained to d0 + 1: the reply buffer.
    let mut descs = Vec::new();
    descs.extend(REQUEST.to_le_bytes());
    descs.extend(len.to_le_bytes());
    descs.extend(1u16.to_le_bytes()); // NEXT
    descs.extend((d0 as u16 + 1).to_le_bytes());
    descs.extend(REPLY.to_le_bytes());
    descs.extend(256u32.to_le_bytes());
    descs.extend(2u16.to_le_bytes()); // WRITE
    descs.extend(0u16.to_le_bytes());
    mem.write_slice(&descs, GuestAddress(desc + 16 * d0)).unwrap();
    mem.write_obj(d0 as u16, GuestAddress(avail + 4 + 2 * u64::from(n))).unwrap();
    // used_event (EVENT_IDX is acked): interrupt once entry `n` is used, as a driver asks.
    mem.write_obj(n, GuestAddress(avail + 4 + 2 * u64::from(QSIZE))).unwrap();
    mem.write_obj(n + 1, GuestAddress(avail + 2)).unwrap();
    guest.kicks[1].write(1).unwrap();
}

/// A FUSE_INIT (fuse_init_in: major, minor, max_readahead, flags).
fn send_fuse_init(mem: &GuestMemoryMmap, guest: &Guest, unique: u64, n: u16) {
    let body: Vec<u8> = [7u32, 31, 0x20000, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    send_request(mem, guest, FUSE_INIT, 0, unique, n, &body);
}

/// Waits until the request queue's used index reaches `idx`.
fn wait_for_used(mem: &GuestMemoryMmap, idx: u16, vfsd: &Virtiofsd) {
    let (_, _, used) = ring(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap() != idx {
        assert!(Instant::now() < deadline, "used idx {idx} not reached in 10 s; log: {}", vfsd.log());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for(evt: &EventFd) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if evt.read().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Checks the used ring's entry `n` and the FUSE_INIT reply it points at.
fn check_reply(mem: &GuestMemoryMmap, unique: u64, n: u16, vfsd: &Virtiofsd) {
    let (_, _, used) = ring(1);
    wait_for_used(mem, n + 1, vfsd);
    let id = mem.read_obj::<u32>(GuestAddress(used + 4 + 8 * u64::from(n))).unwrap();
    let len = mem.read_obj::<u32>(GuestAddress(used + 8 + 8 * u64::from(n))).unwrap();
    assert_eq!(id, 2 * u32::from(n), "the chain's head");
    // fuse_out_header: len, error, unique; then fuse_init_out: major, minor, ...
    let out_len = mem.read_obj::<u32>(GuestAddress(REPLY)).unwrap();
    let error = mem.read_obj::<i32>(GuestAddress(REPLY + 4)).unwrap();
    assert_eq!(mem.read_obj::<u64>(GuestAddress(REPLY + 8)).unwrap(), unique);
    assert_eq!(len, out_len, "the used length is the reply's");
    assert_eq!(error, 0, "FUSE request {unique:#x} answered with error {error}; log: {}", vfsd.log());
}

#[test]
fn virtiofsd_serves_fuse_init_through_the_request_queue() {
    let Some(vfsd) = Virtiofsd::start() else { return };
    let mem = create_guest_memory(32).unwrap();
    let mut fs = Fs::new("shared", &vfsd.socket).unwrap_or_else(|e| panic!("{e:?}; log: {}", vfsd.log()));
    assert_eq!(fs.features() & GUEST_FEATURES_VERSION_1, GUEST_FEATURES_VERSION_1);
    let (act, guest) = activation(&fs, &mem);
    fs.activate(act).unwrap_or_else(|e| panic!("{e:?}; log: {}", vfsd.log()));
    assert_eq!(FsMetrics::get(&fs.metrics().activations), 1);

    send_fuse_init(&mem, &guest, 0x1234, 0);
    check_reply(&mem, 0x1234, 0, &vfsd);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(REPLY + 16)).unwrap(), 7, "FUSE major version");
    assert!(wait_for(&guest.irq), "no interrupt within 10 s; log: {}", vfsd.log());

    // (libvhost-user also signals each call eventfd once when it gets it.) Once the driver
    // acknowledged everything, a FUSE_GETATTR of the root is answered with an interrupt.
    std::thread::sleep(Duration::from_millis(50));
    while guest.irq.read().is_ok() {}
    guest.interrupt.ack(u32::MAX);
    let interrupts = FsMetrics::get(&fs.metrics().interrupts);
    send_request(&mem, &guest, FUSE_GETATTR, 1, 0x2345, 1, &[0u8; 16]);
    assert!(wait_for(&guest.irq), "no interrupt for the reply within 10 s; log: {}", vfsd.log());
    assert_eq!(guest.interrupt.status() & INT_USED_RING, INT_USED_RING);
    assert!(FsMetrics::get(&fs.metrics().interrupts) > interrupts);
    check_reply(&mem, 0x2345, 1, &vfsd);
    // fuse_attr_out: attr_valid (8), attr_valid_nsec (4), dummy (4), then fuse_attr: ino.
    let root = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(vfsd.dir.path().join("shared")).unwrap());
    assert_eq!(mem.read_obj::<u64>(GuestAddress(REPLY + 16 + 16)).unwrap(), root, "the shared directory's inode");

    // A reset takes the queues back promptly; the driver can set the device up again.
    let started = Instant::now();
    fs.reset();
    assert!(started.elapsed() < STOP_TIMEOUT, "GET_VRING_BASE answered in time");
    let (act, guest) = activation(&fs, &mem);
    fs.activate(act).unwrap_or_else(|e| panic!("reactivation: {e:?}; log: {}", vfsd.log()));
    send_request(&mem, &guest, FUSE_GETATTR, 1, 0x5678, 0, &[0u8; 16]);
    check_reply(&mem, 0x5678, 0, &vfsd);
    assert!(wait_for(&guest.irq), "no interrupt after reactivation; log: {}", vfsd.log());
    fs.reset();
    assert_eq!(FsMetrics::get(&fs.metrics().backend_errors), 0);
}

const GUEST_FEATURES_VERSION_1: u64 = crate::devices::virtio::VIRTIO_F_VERSION_1;

#[test]
fn a_dead_backend_fails_the_activation_and_the_vmm_lives() {
    let Some(mut vfsd) = Virtiofsd::start() else { return };
    let mem = create_guest_memory(32).unwrap();
    let mut fs = Fs::new("shared", &vfsd.socket).unwrap_or_else(|e| panic!("{e:?}; log: {}", vfsd.log()));
    vfsd.kill();
    let (act, _guest) = activation(&fs, &mem);
    let err = fs.activate(act).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default());
    assert!(chain.contains("vfsd.sock") && chain.contains("SET_FEATURES"), "{chain}");
    assert_eq!(FsMetrics::get(&fs.metrics().backend_errors), 1);
    fs.reset();

    // One that dies while the device runs: the worker notices the hang-up, the reset's
    // GET_VRING_BASE fails at once.
    let Some(mut vfsd) = Virtiofsd::start() else { return };
    let mut fs = Fs::new("shared", &vfsd.socket).unwrap_or_else(|e| panic!("{e:?}; log: {}", vfsd.log()));
    let (act, _guest) = activation(&fs, &mem);
    fs.activate(act).unwrap_or_else(|e| panic!("{e:?}; log: {}", vfsd.log()));
    vfsd.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while FsMetrics::get(&fs.metrics().backend_errors) == 0 {
        assert!(Instant::now() < deadline, "the hang-up was not noticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    fs.reset();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(FsMetrics::get(&fs.metrics().backend_errors), 1, "the worker stopped in time");
}

#[test]
fn the_handshake_passes_the_device_seccomp_filter() {
    let Some(vfsd) = Virtiofsd::start() else { return };
    let mem = create_guest_memory(32).unwrap();
    let mut backend = Backend::connect(&vfsd.socket, NUM_QUEUES).unwrap_or_else(|e| panic!("{e:?}; log: {}", vfsd.log()));
    let features = backend.guest_features();
    let filter = crate::seccomp::device_filter_returning_eperm();
    let result = std::thread::spawn(move || {
        seccompiler::apply_filter(&filter).unwrap();
        let queues: Vec<Queue> = (0..NUM_QUEUES as u64).map(|i| queue(&mem, i)).collect();
        let evts = |_| EventFd::new(EFD_NONBLOCK).unwrap();
        let kicks: Vec<EventFd> = (0..NUM_QUEUES).map(evts).collect();
        let calls: Vec<EventFd> = (0..NUM_QUEUES).map(evts).collect();
        let mut started = Vec::new();
        let result = backend.start(&mem, &queues, &kicks, &calls, features, &mut started);
        backend.stop(&started);
        result.map(|()| started).map_err(|e| format!("{e:?}"))
    })
    .join()
    .unwrap();
    assert_eq!(result, Ok(vec![0, 1]), "log: {}", vfsd.log());
}
