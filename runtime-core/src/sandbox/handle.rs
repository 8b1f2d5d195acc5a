//! The [`Sandbox`] handle: what every operation shares (the lock, the record, the agent
//! connection) and the seed's Sandbox Operation API.

use super::context::RuntimeContext;
use super::guest;
use super::lock::{try_claim, SandboxLock};
use super::record::SandboxRecord;
use super::state::ContainerState;
use super::{blocking, SandboxConfig, SandboxError, SandboxState};
use crate::agent::{connect_claimed, parse_endpoints, AgentClient, AgentError};
use plugin_api::hypervisor::HypervisorHandle;
use plugin_api::PluginError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long connecting to the agent of a VM that already booted may take (including waiting
/// for a free channel).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one handshake with an agent that is up may take before the connection is
/// dropped and made again.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// A process started in a container by [`Sandbox::enter_container`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// The container.
    pub container: String,
    /// The token that names it in later calls (a container's first process has the
    /// container's id as its token).
    pub token: String,
}

struct AgentConn {
    client: AgentClient,
    boot: u64,
}

/// A handle on one sandbox. It holds no lock between calls: other handles, in this process or
/// others, may operate on the same sandbox, and every call starts from the stored state.
pub struct Sandbox {
    pub(crate) rt: Arc<RuntimeContext>,
    pub(crate) id: String,
    snapshot: Mutex<SandboxRecord>,
    agent: tokio::sync::Mutex<Option<AgentConn>>,
    pub(crate) tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox").field("id", &self.id).field("state", &self.state()).finish()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl Sandbox {
    pub(crate) fn new(rt: Arc<RuntimeContext>, record: SandboxRecord) -> Sandbox {
        Sandbox {
            id: record.config.id.clone(),
            rt,
            snapshot: Mutex::new(record),
            agent: tokio::sync::Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The state when this handle last looked (every call refreshes it).
    pub fn state(&self) -> SandboxState {
        self.snapshot().state
    }

    /// The config when this handle last looked.
    pub fn config(&self) -> SandboxConfig {
        self.snapshot().config
    }

    /// The VM's console log file.
    pub fn console_log(&self) -> Option<PathBuf> {
        self.snapshot().vm.config.console_log
    }

    pub(crate) fn snapshot(&self) -> SandboxRecord {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_snapshot(&self, record: &SandboxRecord) {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = record.clone();
    }

    /// Takes the sandbox lock and loads the current record.
    pub(crate) async fn locked(&self) -> Result<(SandboxLock, SandboxRecord), SandboxError> {
        let (lock, record) = self.rt.lock(&self.id, true).await?;
        let record = record.expect("checked by lock");
        self.set_snapshot(&record);
        Ok((lock, record))
    }

    /// Saves the record (the lock must be held).
    pub(crate) async fn commit(&self, record: &SandboxRecord) -> Result<(), SandboxError> {
        self.rt.save(record).await?;
        self.set_snapshot(record);
        Ok(())
    }

    /// Calls the hypervisor plugin off the async threads.
    pub(crate) async fn hv<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&HypervisorHandle) -> Result<T, PluginError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let (hv, _) = self.rt.hypervisor()?;
        let hv = hv.clone();
        let plugin = hv.plugin().to_owned();
        blocking(move || f(&hv))
            .await?
            .map_err(|source| SandboxError::Hypervisor { plugin, op, sandbox: self.id.clone(), source })
    }

    pub(crate) fn agent_error(&self) -> impl Fn(AgentError) -> SandboxError + '_ {
        move |source| SandboxError::Agent { sandbox: self.id.clone(), source }
    }

    /// Maps a failed agent call.
    pub(crate) fn call_error(&self, method: &'static str) -> impl Fn(tonic::Status) -> SandboxError + '_ {
        guest::call_error(&self.id, method)
    }

    /// Refreshes container `id`'s recorded state from the agent ([`guest::refresh_container`]).
    pub(crate) async fn refresh(&self, agent: &AgentClient, record: &mut SandboxRecord, id: &str) -> Result<ContainerState, SandboxError> {
        guest::refresh_container(&self.id, agent, record, id).await
    }

    /// The agent client of the VM's current boot: claims a free agent channel (each host
    /// process holds one while connected) and connects.
    pub(crate) async fn agent(&self, record: &SandboxRecord) -> Result<AgentClient, SandboxError> {
        if let Some(c) = self.agent.lock().await.as_ref().filter(|c| c.boot == record.vm.boot) {
            return Ok(c.client.clone());
        }
        // A VM that is not running cannot answer: say so now rather than after the timeout.
        let vm_status = self.rt.vm_status(record).await;
        if vm_status != "running" {
            return Err(SandboxError::VmNotRunning { sandbox: self.id.clone(), vm_status });
        }
        self.agent_within(record, CONNECT_TIMEOUT, Some(HANDSHAKE_TIMEOUT)).await
    }

    /// [`Sandbox::agent`], waiting up to `timeout` (a booting VM takes longer), each attempt
    /// up to `per_attempt` (none while booting: the handshake waits for the guest).
    pub(crate) async fn agent_within(
        &self,
        record: &SandboxRecord,
        timeout: Duration,
        per_attempt: Option<Duration>,
    ) -> Result<AgentClient, SandboxError> {
        let mut conn = self.agent.lock().await;
        if let Some(c) = conn.as_ref().filter(|c| c.boot == record.vm.boot) {
            return Ok(c.client.clone());
        }
        *conn = None;
        let endpoints = parse_endpoints(&record.vm.agent_endpoint)?;
        let dir = self.rt.sandbox_dir(&self.id);
        let claims: Vec<PathBuf> = (0..endpoints.len()).map(|i| dir.join(format!("agent-{i}.lock"))).collect();
        let deadline = Instant::now() + timeout;
        let (index, claim) = loop {
            let paths = claims.clone();
            let claimed = blocking(move || try_claim(&paths))
                .await?
                .map_err(|source| SandboxError::Io { what: format!("claiming an agent channel in {}", dir.display()), source })?;
            match claimed {
                Some(c) => break c,
                None if Instant::now() >= deadline => {
                    return Err(SandboxError::AgentBusy { sandbox: self.id.clone(), count: endpoints.len() })
                }
                None => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        tracing::debug!(sandbox = %self.id, endpoint = %endpoints[index], "connecting to the agent");
        let client = connect_claimed(&endpoints[index], timeout, per_attempt, Arc::new(claim)).await.map_err(self.agent_error())?;
        *conn = Some(AgentConn { client: client.clone(), boot: record.vm.boot });
        Ok(client)
    }

    /// Drops the agent connection (and its channel claim).
    pub(crate) async fn drop_agent(&self) {
        *self.agent.lock().await = None;
    }

    /// sandbox.Release(): closes the agent connection and stops this handle's background
    /// tasks (monitors), without touching the VM. Streams from [`Sandbox::io_stream`] that
    /// the caller still holds keep working (and keep their channel) until dropped.
    pub async fn release(&self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        self.drop_agent().await;
    }

    /// Whether this handle holds an agent connection (for tests of Release).
    pub async fn is_connected(&self) -> bool {
        self.agent.lock().await.is_some()
    }
}
