//! One process of a container (its init or an exec'd one): pid, exit status, stdio.

use super::helper::Stdio3;
use super::stdio::{self, Output, Stdin};
use super::ContainerError;
use crate::reaper::Reaper;
use agent_protocol::pb;
use futures::Stream;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long libcontainer may take to send the terminal master after the process exists.
const TERMINAL_WAIT: Duration = Duration::from_secs(10);

/// Converts a signal number.
pub fn signal(number: i32) -> Result<nix::sys::signal::Signal, ContainerError> {
    nix::sys::signal::Signal::try_from(number).map_err(|_| ContainerError::InvalidArgument(format!("{number} is not a signal")))
}

/// A process of a container.
pub struct Process {
    /// Its pid in the agent's namespace.
    pub pid: i32,
    exit: watch::Receiver<Option<i32>>,
    stdin: Stdin,
    stdout: Output,
    stderr: Option<Output>,
    terminal: Option<OwnedFd>,
}

fn name(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        format!("the init process of container {id}")
    } else {
        format!("process {exec_id} of container {id}")
    }
}

impl Process {
    /// The exit status, if it exited.
    pub fn exited(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> i32 {
        crate::reaper::wait_for(self.exit.clone()).await
    }

    /// Sends a signal.
    pub fn signal(&self, number: i32, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let sig = signal(number)?;
        if let Some(status) = self.exited() {
            return Err(ContainerError::NotFound { what: format!("a running {} (it exited with status {status})", name(id, exec_id).replacen("the ", "", 1)) });
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig)
            .map_err(|e| ContainerError::Io { what: format!("signalling {}", name(id, exec_id)), source: e.into() })
    }

    /// Writes to stdin.
    pub async fn write_stdin(&self, data: &[u8], id: &str, exec_id: &str) -> Result<u64, ContainerError> {
        match self.stdin.write(data).await {
            Ok(true) => Ok(data.len() as u64),
            Ok(false) => Err(ContainerError::InvalidArgument(format!("the stdin of {} is closed", name(id, exec_id)))),
            Err(source) => Err(ContainerError::Io { what: format!("writing to the stdin of {}", name(id, exec_id)), source }),
        }
    }

    /// Closes stdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        self.stdin
            .close(self.terminal.is_some())
            .await
            .map_err(|source| ContainerError::Io { what: format!("closing the stdin of {}", name(id, exec_id)), source })
    }

    /// The output stream; empty for stderr of a process on a terminal.
    pub fn read_output(
        &self,
        stderr: bool,
        id: &str,
        exec_id: &str,
    ) -> Result<impl Stream<Item = Result<pb::OutputChunk, tonic::Status>> + Send + 'static, ContainerError> {
        let (output, stream) = if stderr { (self.stderr.as_ref(), "stderr") } else { (Some(&self.stdout), "stdout") };
        let seat = match output {
            Some(o) => Some(o.attach().ok_or_else(|| ContainerError::ReaderAttached { what: name(id, exec_id), stream })?),
            None => None,
        };
        Ok(futures::stream::unfold(seat, |seat| async move {
            let mut seat = seat?;
            let data = seat.recv().await?;
            Some((Ok(pb::OutputChunk { data }), Some(seat)))
        }))
    }

    /// Resizes the terminal.
    pub fn resize(&self, rows: u32, columns: u32, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let master = self.terminal.as_ref().ok_or_else(|| ContainerError::NoTerminal { what: name(id, exec_id) })?;
        let (rows, columns) = match (u16::try_from(rows), u16::try_from(columns)) {
            (Ok(r), Ok(c)) => (r, c),
            _ => return Err(ContainerError::InvalidArgument(format!("terminal size {rows}x{columns} is over 65535"))),
        };
        stdio::resize(master, rows, columns).map_err(|source| ContainerError::Io { what: format!("resizing the terminal of {}", name(id, exec_id)), source })
    }
}

/// The stdio of a process about to be created.
pub enum Spawn {
    /// Pipes.
    Pipes {
        /// Given to the helper (and so to the process); taken when the helper starts.
        child: Option<[OwnedFd; 3]>,
        /// Kept.
        ours: [OwnedFd; 3],
    },
    /// A terminal, whose master libcontainer sends to our console socket.
    Terminal {
        /// The socket path.
        socket: PathBuf,
        /// Receives the master.
        receiver: JoinHandle<std::io::Result<OwnedFd>>,
    },
}

impl Spawn {
    /// Makes the pipes or the console socket (in `dir`).
    pub fn prepare(dir: &Path, name: &str, terminal: bool) -> Result<Spawn, ContainerError> {
        if terminal {
            let socket = dir.join(format!("console-{name}.sock"));
            let _ = std::fs::remove_file(&socket);
            let listener = tokio::net::UnixListener::bind(&socket)
                .map_err(|source| ContainerError::Io { what: format!("binding {}", socket.display()), source })?;
            let receiver = tokio::spawn(stdio::receive_master(listener));
            return Ok(Spawn::Terminal { socket, receiver });
        }
        let p = stdio::pipes().map_err(|source| ContainerError::Io { what: "making stdio pipes".into(), source })?;
        Ok(Spawn::Pipes { child: Some(p.child), ours: p.ours })
    }

    /// The console socket to hand libcontainer, for a terminal.
    pub fn console_socket(&self) -> Option<PathBuf> {
        match self {
            Spawn::Terminal { socket, .. } => Some(socket.clone()),
            Spawn::Pipes { .. } => None,
        }
    }

    /// The helper's stdio: the process's pipes, or nothing for a terminal.
    pub fn helper_stdio(&self) -> Result<Stdio3, ContainerError> {
        match self {
            Spawn::Terminal { .. } => Ok(Stdio3::null()),
            Spawn::Pipes { child, .. } => {
                let [i, o, e] = child.as_ref().ok_or_else(|| ContainerError::InvalidArgument("stdio already used".into()))?;
                let dup = |fd: &OwnedFd| fd.try_clone().map_err(|source| ContainerError::Io { what: "duplicating stdio".into(), source });
                Ok(Stdio3::fds(dup(i)?, dup(o)?, dup(e)?))
            }
        }
    }

    /// The process exists with `pid`: wire up its stdio and its exit.
    pub async fn finish(self, pid: i32, reaper: &Reaper) -> Result<Process, ContainerError> {
        let exit = reaper.watch(pid);
        match self {
            Spawn::Pipes { child, ours: [stdin, stdout, stderr] } => {
                // Our copies of the child's ends must close, or the outputs never reach EOF.
                drop(child);
                Ok(Process { pid, exit, stdin: Stdin::new(stdin), stdout: Output::pump(stdout), stderr: Some(Output::pump(stderr)), terminal: None })
            }
            Spawn::Terminal { socket, receiver } => {
                let received = tokio::time::timeout(TERMINAL_WAIT, receiver).await;
                let _ = std::fs::remove_file(&socket);
                let what = "receiving the terminal from libcontainer".to_owned();
                let master = match received {
                    Ok(Ok(Ok(fd))) => fd,
                    Ok(Ok(Err(source))) => return Err(ContainerError::Io { what, source }),
                    Ok(Err(join)) => return Err(ContainerError::Io { what, source: std::io::Error::other(join) }),
                    Err(_) => return Err(ContainerError::Io { what, source: std::io::Error::other("timed out") }),
                };
                let io = |source| ContainerError::Io { what: "duplicating the terminal".into(), source };
                let reader = stdio::dup(&master).map_err(io)?;
                let writer = stdio::dup(&master).map_err(io)?;
                Ok(Process { pid, exit, stdin: Stdin::new(writer), stdout: Output::pump(reader), stderr: None, terminal: Some(master) })
            }
        }
    }
}
