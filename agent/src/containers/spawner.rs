//! The helper spawner: one process, started once, that forks a container helper per request.
//!
//! A helper started by exec (`guest-agent __container ...`) pays the exec of the agent's
//! binary and its start-up each time, a large share of a container operation under TCG. The
//! spawner is a single-threaded process (`guest-agent __container-spawner`) waiting on a
//! `SOCK_SEQPACKET` socket (its stdin): each request is the helper's JSON argument and three
//! file descriptors (its stdin, stdout, stderr). It forks the helper with `CLONE_PARENT`, so
//! the helper is the agent's child as an exec'd one would be (the reaper sees its exit, and
//! libcontainer's sibling processes are the agent's children too), and answers with its pid.
//! Forking is safe there because the spawner has one thread. A spawner that fails or dies is
//! dropped, and helpers are exec'd as before.

use nix::sys::socket::{recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The first argument that selects spawner mode.
pub const SPAWNER_ARG: &str = "__container-spawner";
/// The largest request (the helper's JSON argument).
const MAX_REQUEST: usize = 256 * 1024;
/// How long the agent waits for the spawner's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Why the spawner did not start a helper.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    /// The spawner is gone (failed earlier, or never started).
    #[error("the helper spawner is not running")]
    Gone,
    /// The request is larger than the spawner takes.
    #[error("a {0}-byte request is too large for the helper spawner")]
    TooLarge(usize),
    /// The request could not be sent: no helper was started.
    #[error("sending to the helper spawner")]
    NotSent(#[source] std::io::Error),
    /// The request was sent but no answer came: a helper may have been started.
    #[error("the helper spawner took the request but did not answer")]
    NoAnswer(#[source] std::io::Error),
    /// It could not fork the helper.
    #[error("the helper spawner could not fork: errno {0}")]
    Fork(i32),
}

impl SpawnerError {
    /// Whether the helper can be exec'd instead: only where none was started.
    pub fn retry_by_exec(&self) -> bool {
        !matches!(self, SpawnerError::NoAnswer(_))
    }
}

/// The agent's end of the spawner.
pub struct Spawner {
    socket: Mutex<Option<OwnedFd>>,
}

impl Spawner {
    /// Starts the spawner process. A spawner that cannot start leaves helpers exec'd.
    pub fn start() -> Spawner {
        let started = (|| -> std::io::Result<OwnedFd> {
            let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
            let timeout = nix::sys::time::TimeVal::new(ANSWER_WAIT.as_secs() as _, 0);
            nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
            let child = Command::new("/proc/self/exe").arg(SPAWNER_ARG).stdin(Stdio::from(theirs)).stdout(Stdio::null()).spawn()?;
            tracing::info!(pid = child.id(), "container helper spawner started");
            Ok(ours)
        })();
        match started {
            Ok(socket) => Spawner { socket: Mutex::new(Some(socket)) },
            Err(e) => {
                tracing::warn!("the container helper spawner did not start ({e}); helpers are exec'd");
                Spawner::none()
            }
        }
    }

    /// No spawner: every helper is exec'd.
    pub fn none() -> Spawner {
        Spawner { socket: Mutex::new(None) }
    }

    /// Has the spawner fork a helper with `arg` and `stdio`; returns its pid. Blocking.
    pub fn spawn(&self, arg: &str, stdio: [&OwnedFd; 3]) -> Result<i32, SpawnerError> {
        if arg.len() >= MAX_REQUEST {
            return Err(SpawnerError::TooLarge(arg.len()));
        }
        let mut guard = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let socket = guard.as_ref().ok_or(SpawnerError::Gone)?;
        match ask(socket, arg, stdio) {
            Ok(pid) if pid > 0 => Ok(pid),
            Ok(errno) => Err(SpawnerError::Fork(-errno)),
            Err(e) => {
                tracing::warn!("{}; helpers are exec'd from now on", crate::error_chain(&e));
                *guard = None;
                Err(e)
            }
        }
    }
}

fn ask(socket: &OwnedFd, arg: &str, stdio: [&OwnedFd; 3]) -> Result<i32, SpawnerError> {
    let fds = stdio.map(|fd| fd.as_raw_fd());
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(arg.as_bytes())], &cmsg, MsgFlags::empty(), None);
    sent.map_err(|e| SpawnerError::NotSent(e.into()))?;
    let mut answer = [0u8; 4];
    let mut iov = [IoSliceMut::new(&mut answer)];
    let received = recvmsg::<()>(socket.as_raw_fd(), &mut iov, None, MsgFlags::empty());
    let n = received.map_err(|e| SpawnerError::NoAnswer(e.into()))?.bytes;
    if n != answer.len() {
        return Err(SpawnerError::NoAnswer(std::io::Error::other(format!("a {n}-byte answer"))));
    }
    Ok(i32::from_le_bytes(answer))
}

/// The spawner process's main: serves requests on stdin until the agent closes it; each
/// forked helper runs `helper` (the helper's main) with its request.
pub fn main(helper: fn(&str) -> i32) -> i32 {
    // The socket moves off fd 0 (a helper's stdin goes there), and fd 0 becomes /dev/null.
    // SAFETY: fcntl on fd 0, the socket the agent gave this process as its stdin.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return 1;
    }
    // SAFETY: fd is a new descriptor this process owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 of a descriptor this process owns onto fd 0, which it no longer uses.
        unsafe { libc::dup2(null.as_raw_fd(), 0) };
    }
    let mut request = vec![0u8; MAX_REQUEST];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let (n, truncated, fds) = {
            let mut iov = [IoSliceMut::new(&mut request)];
            let msg = match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return 1,
            };
            let mut fds = Vec::new();
            for c in msg.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(received) = c {
                    // SAFETY: the kernel just installed these descriptors in this process.
                    fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC), fds)
        };
        if n == 0 {
            return 0; // the agent closed its end
        }
        let answer = match (std::str::from_utf8(&request[..n]), <[OwnedFd; 3]>::try_from(fds)) {
            _ if truncated => -libc::EMSGSIZE,
            (Ok(arg), Ok(stdio)) => fork_helper(&socket, arg, stdio, helper),
            _ => -libc::EINVAL,
        };
        if sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(&answer.to_le_bytes())], &[], MsgFlags::empty(), None).is_err() {
            return 1;
        }
    }
}

/// Forks a helper as a sibling of this process; returns its pid or a negative errno.
fn fork_helper(socket: &OwnedFd, arg: &str, stdio: [OwnedFd; 3], helper: fn(&str) -> i32) -> i32 {
    // SAFETY: a fork (clone without a new stack) of this single-threaded process; the child
    // only rewires its stdio and runs the helper, then exits without returning here.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::CLONE_PARENT | libc::SIGCHLD, 0, 0, 0, 0) };
    match pid {
        0 => {
            for (target, fd) in stdio.iter().enumerate() {
                // SAFETY: dup2 onto 0, 1, 2 of descriptors this process owns.
                if unsafe { libc::dup2(fd.as_raw_fd(), target as i32) } < 0 {
                    std::process::exit(3);
                }
            }
            drop(stdio);
            // SAFETY: the socket is this process's copy of the spawner's (not 0, 1 or 2); the
            // helper and the container processes it forks must not hold it.
            unsafe { libc::close(socket.as_raw_fd()) };
            std::process::exit(helper(arg))
        }
        p if p < 0 => -std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO),
        p => p as i32,
    }
}
