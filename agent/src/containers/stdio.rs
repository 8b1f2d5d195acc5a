//! A process's stdio as the agent holds it: a stdin sink, and output pumps that buffer a
//! bounded amount and then stop reading, so a burst of output waits for a reader instead of
//! being dropped or filling the guest's memory.

use nix::fcntl::OFlag;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex, OwnedMutexGuard};

/// Size of one read, and of one chunk on the wire.
pub const CHUNK: usize = 64 * 1024;
/// Chunks buffered per stream before the pump stops reading (16 x 64 KiB = 1 MiB).
pub const BUFFERED_CHUNKS: usize = 16;

/// The agent's ends of a process's stdio, and the ends the process gets.
pub struct Pipes {
    /// Given to the process: stdin, stdout, stderr.
    pub child: [OwnedFd; 3],
    /// Kept: the write end of stdin, the read ends of stdout and stderr.
    pub ours: [OwnedFd; 3],
}

/// Makes the three pipes of a process without a terminal.
pub fn pipes() -> std::io::Result<Pipes> {
    let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok(Pipes { child: [in_r, out_w, err_w], ours: [in_w, out_r, err_r] })
}

/// One output stream, pumped into a bounded queue.
pub struct Output {
    queue: Arc<Mutex<mpsc::Receiver<Vec<u8>>>>,
}

impl Output {
    /// Starts pumping `fd` (a pipe's read end or a terminal master) until EOF.
    pub fn pump(fd: OwnedFd) -> Output {
        let (tx, rx) = mpsc::channel(BUFFERED_CHUNKS);
        let mut file = tokio::fs::File::from_std(std::fs::File::from(fd));
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf).await {
                    // EIO: a terminal whose last slave closed.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Output { queue: Arc::new(Mutex::new(rx)) }
    }

    /// Takes the reader's seat, or None if a reader is attached.
    pub fn attach(&self) -> Option<OwnedMutexGuard<mpsc::Receiver<Vec<u8>>>> {
        self.queue.clone().try_lock_owned().ok()
    }
}

/// A process's stdin.
pub struct Stdin {
    sink: Mutex<Option<tokio::fs::File>>,
}

impl Stdin {
    /// Wraps the write end.
    pub fn new(fd: OwnedFd) -> Stdin {
        Stdin { sink: Mutex::new(Some(tokio::fs::File::from_std(std::fs::File::from(fd)))) }
    }

    /// Writes all of `data`; false if stdin was closed.
    pub async fn write(&self, data: &[u8]) -> std::io::Result<bool> {
        let mut sink = self.sink.lock().await;
        let Some(file) = sink.as_mut() else { return Ok(false) };
        file.write_all(data).await?;
        file.flush().await?;
        Ok(true)
    }

    /// Closes stdin: the process reads EOF (for a terminal, sends EOT: the terminal stays).
    pub async fn close(&self, terminal: bool) -> std::io::Result<()> {
        let mut sink = self.sink.lock().await;
        if terminal {
            if let Some(file) = sink.as_mut() {
                file.write_all(&[4]).await?;
                file.flush().await?;
            }
            return Ok(());
        }
        if let Some(mut file) = sink.take() {
            file.flush().await?;
        }
        Ok(())
    }
}

/// Duplicates a descriptor (a terminal master is read and written through separate files).
pub fn dup(fd: &impl AsFd) -> std::io::Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned()
}

/// Sets a terminal's window size.
pub fn resize(master: &impl AsFd, rows: u16, columns: u16) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = libc::winsize { ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize we own; the fd is a terminal master we hold open.
    if unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives the terminal master that libcontainer sends over the console socket.
pub async fn receive_master(listener: tokio::net::UnixListener) -> std::io::Result<OwnedFd> {
    let accepted = tokio::time::timeout(std::time::Duration::from_secs(60), listener.accept()).await;
    let (stream, _) = accepted.map_err(|_| std::io::Error::other("nothing connected to the console socket"))??;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    tokio::task::spawn_blocking(move || recv_fd(&stream)).await.map_err(std::io::Error::other)?
}

fn recv_fd(stream: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 1024];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS just installed this descriptor in our table; we own it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(std::io::Error::other("the console socket message carried no terminal descriptor"))
}
