//! The host side of a port: a listening Unix socket, like QEMU's
//! `-chardev socket,server=on,wait=off`, and at most one connected stream.
//!
//! One host connection at a time: while a stream is connected (and until the driver has been
//! told it ended) the listener is not accepted from, so a second client's `connect` succeeds
//! but the client waits in the listen backlog, and is served when the first one ends. This is
//! what QEMU's socket chardev does, so host code written against QEMU sees the same thing.
//!
//! The listener and the stream belong to the device, not to one activation: a driver reset
//! (guest reboot) keeps the host connected, as in QEMU, and the new driver hears of it.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Errors setting up a port's socket.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Removing a stale socket, or looking at the path, failed.
    #[error("removing the stale socket {0}")]
    RemoveStale(PathBuf, #[source] io::Error),
    /// Binding or configuring the listener failed.
    #[error("listening on {0}")]
    Bind(PathBuf, #[source] io::Error),
}

/// A connected host: reads and writes never block, and writes to a peer that went away
/// return `EPIPE` instead of raising `SIGPIPE`.
#[derive(Debug)]
pub struct HostStream(UnixStream);

impl Read for HostStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for HostStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the pointer and length describe `buf`, which outlives the call; the fd is
        // the stream's open socket. send() does not keep the pointer.
        let n = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for HostStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// One port's socket and its current host.
#[derive(Debug)]
pub struct HostPort {
    path: PathBuf,
    listener: UnixListener,
    /// Device and inode of the socket file we made, so we remove only that one.
    ident: (u64, u64),
    /// The connected host, if any.
    pub stream: Option<HostStream>,
}

fn remove_stale(path: &Path) -> Result<(), HostError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| HostError::RemoveStale(path.to_owned(), e))
        }
        Ok(_) => Err(HostError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HostError::RemoveStale(path.to_owned(), e)),
    }
}

impl HostPort {
    /// Listens on `path`, replacing a stale socket file there (anything else is an error).
    pub fn bind(path: &Path) -> Result<Self, HostError> {
        remove_stale(path)?;
        let bind_err = |e| HostError::Bind(path.to_owned(), e);
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let meta = std::fs::symlink_metadata(path).map_err(bind_err)?;
        let port = Self { path: path.to_owned(), listener, ident: (meta.dev(), meta.ino()), stream: None };
        port.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(port)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener's fd, for epoll.
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts one waiting connection, made non-blocking; `Ok(None)` if none is waiting.
    pub fn accept(&self) -> io::Result<Option<HostStream>> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                Ok(Some(HostStream(stream)))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for HostPort {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.ident);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "removing a console socket");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_replaces_a_stale_socket_and_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a stale socket file");
        let port = HostPort::bind(&path).expect("stale socket replaced");
        assert!(port.accept().unwrap().is_none());
        let _client = UnixStream::connect(&path).unwrap();
        assert!(port.accept().unwrap().is_some());
        drop(port);
        assert!(!path.exists(), "the socket is removed with the port");

        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(HostPort::bind(&file), Err(HostError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn a_replaced_socket_is_not_removed_by_the_old_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let old = HostPort::bind(&path).unwrap();
        let new = HostPort::bind(&path).unwrap();
        drop(old);
        assert!(path.exists());
        drop(new);
        assert!(!path.exists());
    }

    #[test]
    fn writes_to_a_closed_peer_fail_without_sigpipe() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut s = HostStream(a);
        assert_eq!(s.write(b"x").unwrap_err().kind(), ErrorKind::BrokenPipe);
    }
}
