//! Starting a created container from the agent itself, without a helper process.
//!
//! Starting forks nothing: the container's init waits on libcontainer's notify socket, and
//! start is a connect and a write to it, then libcontainer's state file saved as running. A
//! helper process for that (exec of the agent binary, then the same three steps) cost more
//! than the start itself, most of StartContainer's time under TCG. What needs a process of
//! its own stays in the helper: a container whose spec has poststart hooks (they run commands
//! in the runtime's namespaces) and a notify socket path longer than a socket address holds.

use libcontainer::config::YoukiConfig;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::notify_socket::NOTIFY_FILE;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The longest path a Unix socket address holds (`sun_path` less its final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How an in-process start ended.
#[derive(Debug)]
pub enum Started {
    /// The container's init was told to run the user's program; the state file says running.
    Done,
    /// This container needs the helper (hooks, or a notify socket path too long).
    NeedsHelper(&'static str),
}

/// Why an in-process start failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// libcontainer's state or config could not be loaded or saved.
    #[error("libcontainer state of the container: {0}")]
    State(#[from] libcontainer::error::LibcontainerError),
    /// Its config file (hooks) could not be read.
    #[error("libcontainer config of the container: {0}")]
    Config(#[from] libcontainer::config::ConfigError),
    /// libcontainer's state says it cannot start.
    #[error("the container is {0:?}, not created")]
    NotCreated(ContainerStatus),
    /// The container's init did not take the start notification.
    #[error("notifying the container's init at {path}")]
    Notify {
        /// The notify socket.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Starts the container `id` whose libcontainer state lives under `root`. Blocking.
pub fn start(root: &Path, id: &str) -> Result<Started, StartError> {
    let mut container = Container::load(root.join(id))?;
    if !container.can_start() {
        return Err(StartError::NotCreated(container.status()));
    }
    let config = YoukiConfig::load(&container.root)?;
    if config.hooks.as_ref().is_some_and(|h| h.poststart().as_ref().is_some_and(|p| !p.is_empty())) {
        return Ok(Started::NeedsHelper("the spec has poststart hooks"));
    }
    let socket = container.root.join(NOTIFY_FILE);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Ok(Started::NeedsHelper("the notify socket path is too long for a socket address"));
    }
    let notify = |source| StartError::Notify { path: socket.display().to_string(), source };
    // The init reads to end of stream: the stream is closed when it goes out of scope.
    UnixStream::connect(&socket).and_then(|mut s| s.write_all(b"start container")).map_err(notify)?;
    container.set_status(ContainerStatus::Running).save()?;
    Ok(Started::Done)
}
