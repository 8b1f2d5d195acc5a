//! The container manager: containers and their processes inside the guest.
//!
//! Isolation (namespaces, pivot_root, cgroup, user, capabilities, rlimits, no_new_privileges,
//! masked and read-only paths) is done by youki's libcontainer from the OCI spec, in a helper
//! process (see `helper`). The manager keeps the agent's view: the state machine, the stdio of
//! each process, and exit statuses from the reaper.

mod bundle;
mod cgroup;
pub mod helper;
mod process;
pub mod spawner;
mod start;
mod stdio;

use crate::reaper::Reaper;
use agent_protocol::pb;
use futures::Stream;
use helper::{Op, Outcome, Stdio3};
use process::Process;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// How long a container's processes get to die after SIGKILL on a forced removal.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A request field is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The OCI spec (or process, or resources) does not parse or lacks what is needed.
    #[error("invalid OCI spec: {0}")]
    InvalidSpec(String),
    /// No such container or process.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// The rootfs source is missing.
    #[error("rootfs source {path} does not exist")]
    NoRootfs {
        /// The source named.
        path: String,
    },
    /// The id is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// Not allowed in the current state.
    #[error("container {id} is {state}: cannot {action}")]
    WrongState {
        /// The container.
        id: String,
        /// Its state.
        state: State,
        /// What was asked.
        action: &'static str,
    },
    /// Someone else is reading the stream.
    #[error("another reader is attached to {stream} of {what}")]
    ReaderAttached {
        /// The process.
        what: String,
        /// "stdout" or "stderr".
        stream: &'static str,
    },
    /// Resize of a process without a terminal.
    #[error("{what} has no terminal")]
    NoTerminal {
        /// The process.
        what: String,
    },
    /// A system call failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// libcontainer refused or failed.
    #[error("{action} {id}: {message}")]
    Runtime {
        /// The operation.
        action: &'static str,
        /// The container.
        id: String,
        /// libcontainer's error chain.
        message: String,
    },
    /// The helper process failed.
    #[error(transparent)]
    Helper(#[from] helper::HelperError),
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created, init waiting for start.
    Created,
    /// Started and its init is alive.
    Running,
    /// Frozen.
    Paused,
    /// Its init exited.
    Stopped,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
        })
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    rootfs: PathBuf,
    cgroup: PathBuf,
    state: Mutex<State>,
    /// Serializes state-changing operations on this container.
    op: tokio::sync::Mutex<()>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    fn state(&self) -> State {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.init.exited().is_some() {
            *state = State::Stopped;
        }
        *state
    }

    fn set_state(&self, new: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = new;
    }

    fn require(&self, allowed: &[State], action: &'static str) -> Result<(), ContainerError> {
        let state = self.state();
        if allowed.contains(&state) {
            Ok(())
        } else {
            Err(ContainerError::WrongState { id: self.id.clone(), state, action })
        }
    }

    fn process(&self, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        let execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs.get(exec_id).cloned().ok_or_else(|| ContainerError::NotFound { what: format!("process {exec_id} of container {}", self.id) })
    }
}

/// All containers of the guest.
pub struct Containers {
    root: PathBuf,
    reaper: Reaper,
    /// Forks the container helpers (see `spawner`).
    spawner: Arc<spawner::Spawner>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created or removed, so two requests for one id do not race.
    busy: Mutex<std::collections::HashSet<String>>,
    results: AtomicU64,
}

struct Busy<'a>(&'a Containers, String);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

impl Containers {
    /// A manager keeping bundles and libcontainer's state under `root`.
    pub fn new(root: PathBuf, reaper: Reaper) -> Containers {
        let spawner = Arc::new(spawner::Spawner::start());
        Containers { root, reaper, spawner, containers: Mutex::default(), busy: Mutex::default(), results: AtomicU64::new(0) }
    }

    /// Number of containers.
    pub fn count(&self) -> usize {
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        let map = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).cloned().ok_or_else(|| ContainerError::NotFound { what: format!("container {id}") })
    }

    fn reserve(&self, id: &str) -> Result<Busy<'_>, ContainerError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let exists = self.containers.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id);
        if exists || !busy.insert(id.to_owned()) {
            return Err(ContainerError::Exists(format!("container {id}")));
        }
        Ok(Busy(self, id.to_owned()))
    }

    async fn helper(&self, id: &str, op: Op, stdio: Stdio3, action: &'static str) -> Result<Option<i32>, ContainerError> {
        let n = self.results.fetch_add(1, Ordering::Relaxed);
        let request = helper::Request {
            root: self.root.join("libcontainer"),
            id: id.to_owned(),
            result: self.root.join(format!("helper-result-{n}.json")),
            op,
            log: None,
        };
        match helper::run(&self.reaper, &self.spawner, request, stdio).await? {
            Outcome::Ok { pid } => Ok(pid),
            Outcome::Err { message } => Err(ContainerError::Runtime { action, id: id.to_owned(), message }),
        }
    }

    /// Creates a container: its init process waits for `start`.
    pub async fn create(&self, id: &str, spec_json: &[u8], rootfs: Option<pb::Storage>) -> Result<(), ContainerError> {
        bundle::validate_id("container", id)?;
        let began = std::time::Instant::now();
        let storage = rootfs.ok_or_else(|| ContainerError::InvalidArgument("no rootfs given".into()))?;
        let _busy = self.reserve(id)?;
        let bundle_dir = self.root.join("bundles").join(id);
        let rootfs = bundle_dir.join("rootfs");
        let spec = bundle::prepare_spec(id, spec_json, &rootfs)?;
        let io = |what: String| move |source| ContainerError::Io { what, source };
        std::fs::create_dir_all(&rootfs).map_err(io(format!("creating {}", rootfs.display())))?;
        let undo = |mounted: bool| {
            if mounted {
                bundle::unmount_rootfs(&rootfs);
            }
            let _ = std::fs::remove_dir_all(&bundle_dir);
        };
        if let Err(e) = bundle::mount_rootfs(&storage, &rootfs) {
            undo(false);
            return Err(e);
        }
        let mount_ms = began.elapsed().as_millis() as u64;
        let result = self.create_mounted(id, &spec, &bundle_dir).await;
        match result {
            Ok(init) => {
                let cgroup = cgroup::of_pid(init.pid).unwrap_or_else(|_| {
                    let rel = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()).unwrap_or_default();
                    PathBuf::from(cgroup::CGROUP_ROOT).join(rel.strip_prefix("/").unwrap_or(&rel))
                });
                let container = Container {
                    id: id.to_owned(),
                    bundle: bundle_dir.clone(),
                    rootfs: rootfs.clone(),
                    cgroup,
                    state: Mutex::new(State::Created),
                    op: tokio::sync::Mutex::new(()),
                    init: Arc::new(init),
                    execs: Mutex::default(),
                };
                let ms = began.elapsed().as_millis() as u64;
                info!(container = id, pid = container.init.pid, ms, mount_ms, "container created");
                self.containers.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), Arc::new(container));
                Ok(())
            }
            Err(e) => {
                let _ = self.helper(id, Op::Delete { force: true }, Stdio3::null(), "delete").await;
                undo(true);
                Err(e)
            }
        }
    }

    async fn create_mounted(&self, id: &str, spec: &oci_spec::runtime::Spec, bundle_dir: &std::path::Path) -> Result<Process, ContainerError> {
        let config = bundle_dir.join("config.json");
        let json = serde_json::to_vec_pretty(spec).map_err(|e| ContainerError::InvalidSpec(e.to_string()))?;
        std::fs::write(&config, json).map_err(|source| ContainerError::Io { what: format!("writing {}", config.display()), source })?;
        let terminal = spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        let spawn = process::Spawn::prepare(bundle_dir, "init", terminal)?;
        let op = Op::Create { bundle: bundle_dir.to_path_buf(), console_socket: spawn.console_socket() };
        let stdio = spawn.helper_stdio()?;
        let pid = self.helper(id, op, stdio, "create").await?;
        let pid = pid.ok_or_else(|| ContainerError::Runtime { action: "create", id: id.into(), message: "libcontainer reported no pid".into() })?;
        spawn.finish(pid, &self.reaper).await
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        c.require(&[State::Created], "start")?;
        let root = self.root.join("libcontainer");
        let owned = id.to_owned();
        let started = tokio::task::spawn_blocking(move || start::start(&root, &owned))
            .await
            .map_err(|e| ContainerError::Runtime { action: "start", id: id.to_owned(), message: e.to_string() })?
            .map_err(|e| ContainerError::Runtime { action: "start", id: id.to_owned(), message: crate::error_chain(&e) })?;
        if let start::Started::NeedsHelper(why) = started {
            debug!(container = id, why, "starting through the container helper");
            self.helper(id, Op::Start, Stdio3::null(), "start").await?;
        }
        c.set_state(State::Running);
        Ok(())
    }

    /// Removes a container; a running or paused one only with `force` (its processes are killed).
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        let state = c.state();
        if matches!(state, State::Running | State::Paused) {
            if !force {
                return Err(ContainerError::WrongState { id: id.into(), state, action: "remove without force" });
            }
            self.kill_all(&c, libc::SIGKILL).await?;
            if tokio::time::timeout(KILL_WAIT, c.init.wait()).await.is_err() {
                warn!(container = id, "init still alive {KILL_WAIT:?} after SIGKILL");
            }
        }
        self.helper(id, Op::Delete { force: true }, Stdio3::null(), "delete").await?;
        bundle::unmount_rootfs(&c.rootfs);
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        info!(container = id, "container removed");
        Ok(())
    }

    async fn kill_all(&self, c: &Container, signal: i32) -> Result<(), ContainerError> {
        let sig = process::signal(signal)?;
        let procs = cgroup::processes(&c.cgroup).map(|l| l.processes).unwrap_or_default();
        for p in procs {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig);
        }
        if signal == libc::SIGKILL && c.state() == State::Paused {
            // Frozen tasks die once thawed.
            let _ = std::fs::write(c.cgroup.join("cgroup.freeze"), "0");
        }
        Ok(())
    }

    /// Freezes a running container.
    pub async fn pause(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        c.require(&[State::Running], "pause")?;
        self.helper(id, Op::Pause, Stdio3::null(), "pause").await?;
        c.set_state(State::Paused);
        Ok(())
    }

    /// Thaws a paused container.
    pub async fn resume(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        c.require(&[State::Paused], "resume")?;
        self.helper(id, Op::Resume, Stdio3::null(), "resume").await?;
        c.set_state(State::Running);
        Ok(())
    }

    /// The container's cgroup and network statistics.
    pub async fn stats(&self, id: &str) -> Result<pb::ContainerStats, ContainerError> {
        let c = self.get(id)?;
        let pid = c.init.exited().is_none().then_some(c.init.pid);
        Ok(cgroup::stats(&c.cgroup, pid))
    }

    /// Applies new resource limits.
    pub async fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        c.require(&[State::Created, State::Running, State::Paused], "update")?;
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources_json).map_err(|e| ContainerError::InvalidSpec(format!("linux.resources: {e}")))?;
        cgroup::update(&c.cgroup, &resources).map_err(|e| ContainerError::Runtime { action: "update", id: id.into(), message: e.to_string() })
    }

    /// The container's processes.
    pub async fn processes(&self, id: &str) -> Result<pb::ProcessList, ContainerError> {
        let c = self.get(id)?;
        cgroup::processes(&c.cgroup).map_err(|source| ContainerError::Io { what: format!("listing the processes of {id}"), source })
    }

    /// Runs another process in a running container.
    pub async fn exec(&self, id: &str, exec_id: &str, process_json: &[u8]) -> Result<(), ContainerError> {
        bundle::validate_id("exec", exec_id)?;
        let c = self.get(id)?;
        let _op = c.op.lock().await;
        c.require(&[State::Running], "exec")?;
        if c.execs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(exec_id) {
            return Err(ContainerError::Exists(format!("process {exec_id} of container {id}")));
        }
        let oci: oci_spec::runtime::Process =
            serde_json::from_slice(process_json).map_err(|e| ContainerError::InvalidSpec(format!("process: {e}")))?;
        if oci.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(ContainerError::InvalidSpec("process.args is empty".into()));
        }
        let path = c.bundle.join(format!("exec-{exec_id}.json"));
        let json = serde_json::to_vec(&oci).map_err(|e| ContainerError::InvalidSpec(e.to_string()))?;
        std::fs::write(&path, json).map_err(|source| ContainerError::Io { what: format!("writing {}", path.display()), source })?;
        let spawn = process::Spawn::prepare(&c.bundle, exec_id, oci.terminal().unwrap_or(false))?;
        let op = Op::Exec { process: path.clone(), console_socket: spawn.console_socket() };
        let stdio = spawn.helper_stdio()?;
        let result = self.helper(id, op, stdio, "exec").await;
        let _ = std::fs::remove_file(&path);
        let pid = result?.ok_or_else(|| ContainerError::Runtime { action: "exec", id: id.into(), message: "libcontainer reported no pid".into() })?;
        let process = spawn.finish(pid, &self.reaper).await?;
        c.execs.lock().unwrap_or_else(|p| p.into_inner()).insert(exec_id.to_owned(), Arc::new(process));
        Ok(())
    }

    /// Signals one process, or all processes of the container.
    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let number = i32::try_from(signal).map_err(|_| ContainerError::InvalidArgument(format!("{signal} is not a signal")))?;
        let p = c.process(exec_id)?;
        if all {
            return self.kill_all(&c, number).await;
        }
        p.signal(number, &c.id, exec_id)
    }

    /// Waits for a process to exit; returns its exit status.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, ContainerError> {
        let p = self.get(id)?.process(exec_id)?;
        Ok(p.wait().await)
    }

    /// The container's state and the process's exit status, if it exited.
    pub fn status(&self, id: &str, exec_id: &str) -> Result<(State, Option<i32>), ContainerError> {
        let c = self.get(id)?;
        let p = c.process(exec_id)?;
        Ok((c.state(), p.exited()))
    }

    /// Writes to a process's stdin.
    pub async fn write_stdin(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<u64, ContainerError> {
        let p = self.get(id)?.process(exec_id)?;
        p.write_stdin(data, id, exec_id).await
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let p = self.get(id)?.process(exec_id)?;
        p.close_stdin(id, exec_id).await
    }

    /// A process's stdout or stderr, as it comes.
    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stderr: bool,
    ) -> Result<impl Stream<Item = Result<pb::OutputChunk, tonic::Status>> + Send + 'static, ContainerError> {
        let p = self.get(id)?.process(exec_id)?;
        p.read_output(stderr, id, exec_id)
    }

    /// Resizes a process's terminal.
    pub async fn resize(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<(), ContainerError> {
        let p = self.get(id)?.process(exec_id)?;
        p.resize(rows, columns, id, exec_id)
    }
}
