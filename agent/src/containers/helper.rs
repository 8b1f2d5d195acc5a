//! libcontainer (youki) runs in a short-lived helper process: `guest-agent __container OP ...`.
//!
//! libcontainer forks and sets up namespaces from the calling process; doing that from the
//! agent's multi-threaded tokio process would fork with other threads' locks held. The helper
//! is a fresh single-threaded process, as `youki` itself is. It inherits the container's stdio,
//! runs one operation, writes its result as JSON to a file the agent names, and exits. The
//! container processes are made siblings of the helper (`as_sibling`), i.e. children of the
//! agent, so the agent's reaper sees their exits.

use crate::reaper::Reaper;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};
use super::spawner::Spawner;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The first argument that selects helper mode.
pub const HELPER_ARG: &str = "__container";

/// One operation for the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// Create the container from the bundle; the init process waits for `Start`.
    Create { bundle: PathBuf, console_socket: Option<PathBuf> },
    /// Let the init process exec the user's program.
    Start,
    /// Run a process (an OCI `process` JSON file) in the container.
    Exec { process: PathBuf, console_socket: Option<PathBuf> },
    /// Signal every process of the container.
    KillAll { signal: i32 },
    /// Freeze the container's cgroup.
    Pause,
    /// Thaw it.
    Resume,
    /// Delete the container's state and cgroup (killing what is left when `force`).
    Delete { force: bool },
}

/// The helper's request, passed as one JSON argument.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// libcontainer's state root.
    pub root: PathBuf,
    /// The container id.
    pub id: String,
    /// Where to write the result.
    pub result: PathBuf,
    /// The operation.
    pub op: Op,
    /// Where the helper writes libcontainer's debug log (set when the agent logs at debug
    /// level); the agent copies it into its own log when the helper exits.
    #[serde(default)]
    pub log: Option<PathBuf>,
}

/// What the helper reports.
#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// Done; the pid of the process created, if any.
    Ok { pid: Option<i32> },
    /// Failed, with libcontainer's error chain.
    Err { message: String },
}

/// Why running the helper failed (an operation that failed inside it is `Outcome::Err`).
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// It could not be started.
    #[error("starting the container helper")]
    Spawn(#[source] std::io::Error),
    /// It died without reporting.
    #[error("the container helper exited with status {status} without a result")]
    NoResult {
        /// Its exit status.
        status: i32,
    },
    /// Its report does not parse.
    #[error("the container helper's result does not parse")]
    BadResult(#[source] serde_json::Error),
}

/// The stdio a helper (and so the container process it creates) gets: three descriptors, or
/// /dev/null for all three.
pub struct Stdio3(Option<[OwnedFd; 3]>);

impl Stdio3 {
    /// All /dev/null.
    pub fn null() -> Stdio3 {
        Stdio3(None)
    }

    /// stdin, stdout and stderr.
    pub fn fds(stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> Stdio3 {
        Stdio3(Some([stdin, stdout, stderr]))
    }
}

/// Runs one helper operation and returns its outcome: the helper is forked by the spawner,
/// or exec'd where the spawner is gone.
pub async fn run(reaper: &Reaper, spawner: &Arc<Spawner>, mut request: Request, stdio: Stdio3) -> Result<Outcome, HelperError> {
    let _ = std::fs::remove_file(&request.result);
    if tracing::enabled!(tracing::Level::DEBUG) {
        request.log = Some(request.result.with_extension("log"));
    }
    let arg = serde_json::to_string(&request).map_err(HelperError::BadResult)?;
    tracing::debug!(op = ?request.op, "starting the container helper");
    let pid = start(spawner, arg, stdio).await?;
    let status = reaper.wait(pid).await;
    if let Some(log) = &request.log {
        copy_log(log);
    }
    let text = std::fs::read_to_string(&request.result).map_err(|_| HelperError::NoResult { status })?;
    let _ = std::fs::remove_file(&request.result);
    serde_json::from_str(&text).map_err(HelperError::BadResult)
}

async fn start(spawner: &Arc<Spawner>, arg: String, stdio: Stdio3) -> Result<i32, HelperError> {
    let fds = match stdio.0 {
        Some(fds) => fds,
        None => {
            let null = || std::fs::File::open("/dev/null").map(OwnedFd::from).map_err(HelperError::Spawn);
            [null()?, null()?, null()?]
        }
    };
    let forker = spawner.clone();
    let (arg, fds, forked) = tokio::task::spawn_blocking(move || {
        let [i, o, e] = &fds;
        let forked = forker.spawn(&arg, [i, o, e]);
        (arg, fds, forked)
    })
    .await
    .map_err(|e| HelperError::Spawn(std::io::Error::other(e)))?;
    match forked {
        Ok(pid) => return Ok(pid),
        Err(e) if !e.retry_by_exec() => return Err(HelperError::Spawn(std::io::Error::other(crate::error_chain(&e)))),
        Err(e) => tracing::debug!("exec'ing the container helper: {e}"),
    }
    let [stdin, stdout, stderr] = fds;
    let child = Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(arg)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(HelperError::Spawn)?;
    Ok(child.id() as i32)
}

/// Copies a helper's log into the agent's, one debug line each, and removes it.
fn copy_log(path: &Path) {
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            tracing::debug!(target: "container_helper", "{line}");
        }
    }
    let _ = std::fs::remove_file(path);
}

/// The helper process's main: runs the operation, writes the outcome, exits.
pub fn main(arg: &str) -> i32 {
    let request: Request = match serde_json::from_str(arg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("guest-agent {HELPER_ARG}: bad request: {e}");
            return 2;
        }
    };
    if let Some(file) = request.log.as_ref().and_then(|log| std::fs::File::create(log).ok()) {
        // The helper's stderr is the container's: its own log goes to the file the agent named.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
        tracing::debug!("helper started");
    }
    let outcome = match execute(&request) {
        Ok(pid) => Outcome::Ok { pid },
        Err(e) => Outcome::Err { message: crate::error_chain(&*e) },
    };
    let ok = matches!(outcome, Outcome::Ok { .. });
    let written = serde_json::to_vec(&outcome).map(|json| write_result(&request.result, &json));
    match (ok, written) {
        (true, Ok(Ok(()))) => 0,
        (false, Ok(Ok(()))) => 1,
        _ => 3,
    }
}

fn write_result(path: &Path, json: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, path)
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

fn builder(request: &Request) -> Result<ContainerBuilder, AnyError> {
    Ok(ContainerBuilder::new(request.id.clone(), SyscallType::default()).with_root_path(&request.root)?)
}

fn load(request: &Request) -> Result<Container, AnyError> {
    Ok(Container::load(request.root.join(&request.id))?)
}

fn execute(request: &Request) -> Result<Option<i32>, AnyError> {
    match &request.op {
        Op::Create { bundle, console_socket } => {
            let container = builder(request)?
                .with_console_socket(console_socket.as_ref())
                .validate_id()?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .as_sibling(true)
                .build()?;
            Ok(container.pid().map(|p| p.as_raw()))
        }
        Op::Start => load(request)?.start().map(|()| None).map_err(Into::into),
        Op::Exec { process, console_socket } => {
            let pid = builder(request)?
                .with_console_socket(console_socket.as_ref())
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .as_sibling(true)
                .build()?;
            Ok(Some(pid.as_raw()))
        }
        Op::KillAll { signal } => {
            let signal = nix::sys::signal::Signal::try_from(*signal)?;
            load(request)?.kill(signal, true).map(|()| None).map_err(Into::into)
        }
        Op::Pause => load(request)?.pause().map(|()| None).map_err(Into::into),
        Op::Resume => load(request)?.resume().map(|()| None).map_err(Into::into),
        Op::Delete { force } => load(request)?.delete(*force).map(|()| None).map_err(Into::into),
    }
}
