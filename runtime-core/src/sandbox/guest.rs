//! The guest-side steps the operations share: each is one or a few agent calls on one
//! container, with its failures mapped to [`SandboxError`]. They take the sandbox id (for
//! errors) and an agent client, and know no handle, lock or store.

use super::record::SandboxRecord;
use super::state::ContainerState;
use super::{oci, ContainerConfig, SandboxError};
use crate::agent::{AgentClient, AgentError};
use agent_protocol::pb;
use std::time::Duration;

/// How long a container may take to exit after SIGKILL before the agent is taken to be lying.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Maps a failed agent call of sandbox `sandbox` to its error.
pub(crate) fn call_error<'a>(sandbox: &'a str, method: &'static str) -> impl Fn(tonic::Status) -> SandboxError + 'a {
    move |status| SandboxError::Agent { sandbox: sandbox.to_owned(), source: AgentError::Call { method, status } }
}

/// The agent's reference to container `id`.
pub(crate) fn cref(id: &str) -> pb::ContainerRef {
    pb::ContainerRef { container_id: id.to_owned() }
}

/// The agent's exec id of a process token: empty for the container's first process.
pub(crate) fn exec_id(container: &str, token: &str) -> String {
    if token == container {
        String::new()
    } else {
        token.to_owned()
    }
}

/// The guest's clock starts from the emulated RTC; sets it from the host's.
pub(crate) async fn set_time(sandbox: &str, agent: &AgentClient) -> Result<(), SandboxError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let request = pb::SetGuestTimeRequest { seconds: now.as_secs() as i64, nanoseconds: now.subsec_nanos() };
    agent.raw().set_guest_time(request).await.map_err(call_error(sandbox, "SetGuestTime"))?;
    Ok(())
}

/// How many bytes of the host's randomness a guest's RNG is reseeded with.
const SEED_BYTES: usize = 64;

/// Mixes fresh randomness from the host into the guest's RNG: a VM cloned from a template
/// resumes the template's RNG state, as every sibling does, and a pooled VM's was seeded
/// long before it serves a sandbox.
pub(crate) async fn reseed(sandbox: &str, agent: &AgentClient) -> Result<(), SandboxError> {
    use std::io::Read;
    let mut data = vec![0u8; SEED_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .map_err(|source| SandboxError::Io { what: format!("reading the host's /dev/urandom to reseed the guest of sandbox {sandbox}"), source })?;
    agent.raw().reseed_random(pb::ReseedRandomRequest { data }).await.map_err(call_error(sandbox, "ReseedRandom"))?;
    Ok(())
}

/// Creates container `c` (not started) in the guest; its rootfs is one of the record's disks.
pub(crate) async fn create_container(
    sandbox: &str,
    agent: &AgentClient,
    record: &SandboxRecord,
    c: &ContainerConfig,
) -> Result<(), SandboxError> {
    let disk = record.config.disks.iter().find(|d| d.name == c.rootfs.disk);
    let rootfs = pb::Storage {
        driver: "blk".into(),
        source: c.rootfs.disk.clone(),
        fstype: c.rootfs.fstype.clone(),
        options: Vec::new(),
        read_only: disk.is_none_or(|d| d.read_only),
        // A writable root over a read-only (shared) disk needs a layer of its own.
        writable_layer: c.rootfs.writable && disk.is_none_or(|d| d.read_only),
    };
    let request = pb::CreateContainerRequest {
        container_id: c.id.clone(),
        oci_spec_json: serde_json::to_vec(&oci::spec(c)).unwrap_or_default(),
        rootfs: Some(rootfs),
    };
    agent.raw().create_container(request).await.map_err(call_error(sandbox, "CreateContainer"))?;
    Ok(())
}

/// Stops container `id`: SIGKILL to every process of the container, as Kata 1.x's container
/// stop does. With a `grace` above zero (`runtime.stop_timeout_s`), the first process of a
/// started container gets SIGTERM first and that long to exit. Returns the exit status if
/// one was seen.
pub(crate) async fn stop_container(
    sandbox: &str,
    agent: &AgentClient,
    id: &str,
    state: ContainerState,
    grace: Duration,
) -> Result<Option<i32>, SandboxError> {
    let mut raw = agent.raw();
    let process = pb::ProcessRef { container_id: id.to_owned(), exec_id: String::new() };
    let status = raw.status_process(process.clone()).await.map_err(call_error(sandbox, "StatusProcess"))?.into_inner();
    if status.exited {
        return Ok(Some(status.exit_status));
    }
    if status.container_state == "paused" {
        raw.resume_container(cref(id)).await.map_err(call_error(sandbox, "ResumeContainer"))?;
    }
    let signal = |signal: i32, all: bool| pb::SignalProcessRequest { container_id: id.to_owned(), exec_id: String::new(), signal: signal as u32, all };
    // A container never started has no handler to run: it gets no grace.
    if !grace.is_zero() && state != ContainerState::Ready {
        raw.signal_process(signal(libc::SIGTERM, false)).await.map_err(call_error(sandbox, "SignalProcess"))?;
        if let Ok(reply) = tokio::time::timeout(grace, raw.wait_process(process.clone())).await {
            return Ok(Some(reply.map_err(call_error(sandbox, "WaitProcess"))?.into_inner().exit_status));
        }
        tracing::info!(sandbox, container = id, "no exit {grace:?} after SIGTERM: sending SIGKILL");
    }
    raw.signal_process(signal(libc::SIGKILL, true)).await.map_err(call_error(sandbox, "SignalProcess"))?;
    match tokio::time::timeout(KILL_WAIT, raw.wait_process(process)).await {
        Ok(reply) => Ok(Some(reply.map_err(call_error(sandbox, "WaitProcess"))?.into_inner().exit_status)),
        Err(_) => Err(SandboxError::BadReply { sandbox: sandbox.to_owned(), what: format!("container {id} did not exit after SIGKILL") }),
    }
}

/// Refreshes container `id`'s recorded state (and exit status) from the agent: its process
/// may have exited. A stopped container stays stopped without asking.
pub(crate) async fn refresh_container(
    sandbox: &str,
    agent: &AgentClient,
    record: &mut SandboxRecord,
    id: &str,
) -> Result<ContainerState, SandboxError> {
    let not_found = || SandboxError::ContainerNotFound { sandbox: sandbox.to_owned(), id: id.to_owned() };
    if record.containers.get(id).ok_or_else(not_found)?.state == ContainerState::Stopped {
        return Ok(ContainerState::Stopped);
    }
    let reply = agent
        .raw()
        .status_process(pb::ProcessRef { container_id: id.to_owned(), exec_id: String::new() })
        .await
        .map_err(call_error(sandbox, "StatusProcess"))?
        .into_inner();
    let state = ContainerState::from_agent(&reply.container_state)
        .ok_or_else(|| SandboxError::BadReply { sandbox: sandbox.to_owned(), what: format!("container state {:?}", reply.container_state) })?;
    let c = record.containers.get_mut(id).ok_or_else(not_found)?;
    c.state = state;
    if reply.exited {
        c.exit_status = Some(reply.exit_status);
    }
    Ok(state)
}
