//! The worker over a datagram socket pair standing in for the tap (no root needed).

use std::os::fd::RawFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use super::*;
use crate::devices::virtio::net::queue::tests::{eth_frame, memory, with_header, Driver, BUF};
use crate::devices::virtio::net::queue::RX_HEADER;

/// One end of a socket pair, keeping datagram boundaries like a tap keeps frames.
struct SocketFrames(UnixDatagram);

impl Frames for SocketFrames {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.send(frame)
    }
}

impl AsRawFd for SocketFrames {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn worker_moves_frames_both_ways_and_pauses_the_tap_without_buffers() {
    let mem = memory();
    let mut rx_drv = Driver::at(&mem, 0);
    let mut tx_drv = Driver::at(&mem, 0x1_0000);
    let (theirs, host) = UnixDatagram::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let rx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let tx_evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    let metrics = Arc::new(NetMetrics::default());
    let ctx = Context {
        mem: mem.clone(),
        rx_queue: rx_drv.queue(true),
        tx_queue: tx_drv.queue(true),
        rx_evt: rx_evt.try_clone().unwrap(),
        tx_evt: tx_evt.try_clone().unwrap(),
        tap: SocketFrames(theirs),
        interrupt: interrupt.clone(),
        metrics: metrics.clone(),
    };
    let mut worker = spawn("test-net", ctx).unwrap();

    // Transmit.
    let frame = eth_frame(60);
    mem.write_slice(&with_header([0; 12], &frame), GuestAddress(BUF)).unwrap();
    tx_drv.add(&[(BUF, 72, false)]);
    tx_evt.write(1).unwrap();
    let mut buf = [0u8; 2048];
    let n = host.recv(&mut buf).expect("the frame reached the host side");
    assert_eq!(&buf[..n], &with_header([0; 12], &frame)[..]);
    wait_until("the tx interrupt", || irq.read().is_ok());
    assert_eq!(tx_drv.used(), vec![(0, 0)]);

    // Receive with no buffers: one frame is held, the rest stays in the socket, and the
    // worker does not spin on the readable socket.
    let first = eth_frame(100);
    let second = eth_frame(200);
    host.send(&with_header([0; 12], &first)).unwrap();
    host.send(&with_header([0; 12], &second)).unwrap();
    wait_until("the worker to run out of rx buffers", || NetMetrics::get(&metrics.rx_no_buffers) >= 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(NetMetrics::get(&metrics.rx_no_buffers), 1, "the tap is not polled while the guest has no buffer");

    // Buffers arrive: both frames go in.
    rx_drv.add(&[(BUF + 0x1000, 1526, true)]);
    rx_drv.add(&[(BUF + 0x2000, 1526, true)]);
    rx_evt.write(1).unwrap();
    wait_until("two received frames", || NetMetrics::get(&metrics.rx_frames) == 2);
    assert_eq!(rx_drv.used(), vec![(0, 112), (1, 212)]);
    let mut got = vec![0u8; 212];
    mem.read_slice(&mut got, GuestAddress(BUF + 0x2000)).unwrap();
    assert_eq!(got, with_header(RX_HEADER, &second));
    wait_until("the rx interrupt", || irq.read().is_ok());

    // The tap is watched again: a frame arriving now with a buffer posted goes straight in.
    rx_drv.add(&[(BUF + 0x3000, 1526, true)]);
    rx_evt.write(1).unwrap();
    host.send(&with_header([0; 12], &first)).unwrap();
    wait_until("a third received frame", || NetMetrics::get(&metrics.rx_frames) == 3);

    let started = Instant::now();
    worker.stop();
    assert!(started.elapsed() < Duration::from_secs(1), "the worker stops promptly");
}

/// A regular file as the backend: epoll refuses to watch it.
struct FileFrames(std::fs::File);

impl Frames for FileFrames {
    fn read_frame(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        Ok(frame.len())
    }
}

impl AsRawFd for FileFrames {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[test]
fn worker_setup_failure_is_reported() {
    let mem = memory();
    let drv = Driver::new(&mem);
    let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    let ctx = Context {
        mem: mem.clone(),
        rx_queue: drv.queue(false),
        tx_queue: drv.queue(false),
        rx_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        tx_evt: EventFd::new(EFD_NONBLOCK).unwrap(),
        tap: FileFrames(file),
        interrupt: Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        metrics: Arc::default(),
    };
    let err = spawn("test-net", ctx).err().expect("a regular file cannot be watched");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
}
