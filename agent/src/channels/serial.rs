//! The virtio-serial port: found by name under /sys/class/virtio-ports (there is no udev to
//! make /dev/virtio-ports/NAME), opened non-blocking and driven through tokio's AsyncFd.
//!
//! While nothing is connected to the host side of a port, the port polls readable, writable
//! never, and hung up (POLLHUP), and a read returns end of file; tokio keeps a hang-up it saw
//! for as long as the descriptor is registered, so a write there would find the port ready
//! and busy-loop on EAGAIN. So a port is registered with tokio only once the host side is
//! open ([`SerialPort::open_connected`] waits for that on an epoll of its own, which the
//! driver wakes when the host opens the port), and a write that would block on a port the
//! host closed fails with BrokenPipe instead of spinning.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Finds the device node of the port named `name`.
pub fn find_port(name: &str) -> Option<PathBuf> {
    let ports = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    ports.filter_map(|e| e.ok()).find_map(|e| {
        let port_name = std::fs::read_to_string(e.path().join("name")).ok()?;
        (port_name.trim() == name).then(|| PathBuf::from("/dev").join(e.file_name()))
    })
}

/// How often a wait for the host re-checks the port without a wake-up (a safety net: the
/// driver wakes the port's waiters when the host opens it).
const HOST_RECHECK_MS: i32 = 1000;

/// Whether the host side of the port is open (it polls POLLHUP while it is not).
fn host_connected(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes the one pollfd it is given, for zero milliseconds.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    !(n > 0 && p.revents & libc::POLLHUP != 0)
}

/// Blocks until the host side of `file`'s port is open.
fn wait_host(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    if host_connected(fd) {
        return Ok(());
    }
    // SAFETY: epoll_create1 takes no pointers; a descriptor it returns is new and ours.
    let ep = match unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } {
        -1 => return Err(std::io::Error::last_os_error()),
        // SAFETY: a new descriptor that nothing else owns.
        fd => unsafe { OwnedFd::from_raw_fd(fd) },
    };
    let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32, u64: 0 };
    // SAFETY: registers the port's descriptor, alive for this call, with our epoll.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // Edge-triggered: the first wait returns at once (the port is ready on registration),
    // later ones when the driver wakes the port.
    while !host_connected(fd) {
        let mut ready = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: epoll_wait writes at most one event into `ready`.
        unsafe { libc::epoll_wait(ep.as_raw_fd(), ready.as_mut_ptr(), 1, HOST_RECHECK_MS) };
    }
    Ok(())
}

/// An open port.
pub struct SerialPort(AsyncFd<File>);

impl SerialPort {
    /// Opens the port non-blocking once its host side is open.
    pub async fn open_connected(path: &PathBuf) -> std::io::Result<SerialPort> {
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path)?;
        let file = tokio::task::spawn_blocking(move || wait_host(&file).map(|()| file)).await.map_err(std::io::Error::other)??;
        // SAFETY: the File owns its descriptor and keeps it open, unchanged, for as long as
        // the AsyncFd owns the File.
        let fd = unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)?;
        Ok(SerialPort(fd))
    }
}

impl AsyncRead for SerialPort {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) if !host_connected(self.0.as_raw_fd()) => {
                    return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the host closed the port")));
                }
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
