//! The container half of the Sandbox Operation API.

use super::config::{resources_field, ConfigError};
use super::guest::{self, cref, exec_id};
use super::handle::{Process, Sandbox};
use super::lock::SandboxLock;
use super::record::{ContainerRecord, ProcessRecord, SandboxRecord};
use super::rules::{self, Rule};
use super::state::{ContainerState, SandboxState};
use super::status::{container_status, ContainerStatus};
use super::{oci, ContainerConfig, ContainerStats, ProcessConfig, ProcessInfo, SandboxError};
use crate::agent::AgentClient;
use agent_protocol::pb;
use std::time::Duration;

use ContainerState::{Paused, Running, Stopped};

/// Sandbox states in which the agent answers.
const LIVE: &[SandboxState] = &[SandboxState::Ready, SandboxState::Running];

impl Sandbox {
    fn container<'r>(&self, record: &'r mut SandboxRecord, id: &str) -> Result<&'r mut ContainerRecord, SandboxError> {
        record.containers.get_mut(id).ok_or_else(|| SandboxError::ContainerNotFound { sandbox: self.id.clone(), id: id.to_owned() })
    }

    /// Locks, checks the sandbox's state against `rule`, and returns the record and agent.
    async fn live(&self, rule: &Rule) -> Result<(SandboxLock, SandboxRecord, AgentClient), SandboxError> {
        let (lock, record) = self.locked().await?;
        rule.check_sandbox(&self.id, record.state)?;
        let agent = self.agent(&record).await?;
        Ok((lock, record, agent))
    }

    /// Refreshes container `id` from the agent and checks its state against `rule`.
    async fn checked(&self, rule: &Rule, agent: &AgentClient, record: &mut SandboxRecord, id: &str) -> Result<ContainerState, SandboxError> {
        let state = self.refresh(agent, record, id).await?;
        rule.check_container(id, state)?;
        Ok(state)
    }

    /// [`Self::live`], then [`Self::checked`] for container `id`: what a call on one container
    /// starts with.
    async fn live_container(&self, rule: &Rule, id: &str) -> Result<(SandboxLock, SandboxRecord, AgentClient, ContainerState), SandboxError> {
        let (lock, mut record, agent) = self.live(rule).await?;
        let state = self.checked(rule, &agent, &mut record, id).await?;
        Ok((lock, record, agent, state))
    }

    /// sandbox.CreateContainer(config): creates a container (not started) and adds its config
    /// to the sandbox's. Its rootfs must be one of the sandbox's disks.
    pub async fn create_container(&self, config: ContainerConfig) -> Result<ContainerStatus, SandboxError> {
        let (_lock, mut record, agent) = self.live(&rules::CREATE_CONTAINER).await?;
        config.validate("container", &record.config.disks)?;
        if record.containers.contains_key(&config.id) {
            return Err(ConfigError { field: "container.id".into(), reason: format!("{:?} is already a container of sandbox {}", config.id, self.id) }.into());
        }
        guest::create_container(&self.id, &agent, &record, &config).await?;
        record.config.containers.push(config.clone());
        record.containers.insert(config.id.clone(), ContainerRecord::ready());
        self.commit(&record).await?;
        Ok(container_status(&record, &config.id).expect("just added"))
    }

    /// sandbox.StartContainer(id).
    pub async fn start_container(&self, id: &str) -> Result<ContainerStatus, SandboxError> {
        let (_lock, mut record, agent, _) = self.live_container(&rules::START_CONTAINER, id).await?;
        agent.raw().start_container(cref(id)).await.map_err(self.call_error("StartContainer"))?;
        self.container(&mut record, id)?.state = Running;
        self.commit(&record).await?;
        Ok(container_status(&record, id).expect("exists"))
    }

    /// sandbox.StopContainer(id, force): SIGKILL to all its processes, as Kata does (SIGTERM
    /// first when `runtime.stop_timeout_s` gives a grace period); a ready container is killed
    /// the same way, and a stopped one is left as it is. With `force`, guest failures are
    /// ignored and the container is recorded as stopped.
    pub async fn stop_container(&self, id: &str, force: bool) -> Result<ContainerStatus, SandboxError> {
        let (_lock, mut record, agent, state) = self.live_container(&rules::STOP_CONTAINER, id).await?;
        if state == Stopped {
            return Ok(container_status(&record, id).expect("exists"));
        }
        let grace = Duration::from_secs(self.rt.config.runtime.stop_timeout_s);
        let exit = match guest::stop_container(&self.id, &agent, id, state, grace).await {
            Ok(exit) => exit,
            Err(e) if force => {
                tracing::warn!(sandbox = %self.id, container = id, "ignoring (force): {}", crate::plugins::error_chain(&e));
                None
            }
            Err(e) => return Err(e),
        };
        let c = self.container(&mut record, id)?;
        c.state = Stopped;
        c.exit_status = exit.or(c.exit_status);
        self.commit(&record).await?;
        Ok(container_status(&record, id).expect("exists"))
    }

    /// sandbox.DeleteContainer(id): removes a ready or stopped container from the guest and
    /// from the sandbox's config. Returns its last status.
    pub async fn delete_container(&self, id: &str) -> Result<ContainerStatus, SandboxError> {
        let (_lock, mut record) = self.locked().await?;
        rules::DELETE_CONTAINER.check_sandbox(&self.id, record.state)?;
        if record.state == SandboxState::Stopped {
            // The VM is gone and its containers with it: only the config is left to remove.
            self.container(&mut record, id)?;
        } else {
            let agent = self.agent(&record).await?;
            self.checked(&rules::DELETE_CONTAINER, &agent, &mut record, id).await?;
            // With force: a ready container's process waits, and a killed one may be gone.
            let request = pb::RemoveContainerRequest { container_id: id.to_owned(), force: true };
            agent.raw().remove_container(request).await.map_err(self.call_error("RemoveContainer"))?;
        }
        let last = container_status(&record, id).expect("exists");
        record.containers.remove(id);
        record.config.containers.retain(|c| c.id != id);
        self.commit(&record).await?;
        Ok(last)
    }

    /// sandbox.EnterContainer(id, cmd): runs a new process in a running container.
    pub async fn enter_container(&self, id: &str, cmd: ProcessConfig) -> Result<Process, SandboxError> {
        cmd.validate("cmd")?;
        let (_lock, mut record, agent, _) = self.live_container(&rules::ENTER_CONTAINER, id).await?;
        record.next_process += 1;
        let token = format!("{id}.{}", record.next_process);
        let request = pb::ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: token.clone(),
            oci_process_json: serde_json::to_vec(&oci::process(&cmd)).unwrap_or_default(),
        };
        agent.raw().exec_process(request).await.map_err(self.call_error("ExecProcess"))?;
        self.container(&mut record, id)?.processes.insert(token.clone(), ProcessRecord { config: cmd, exit_status: None });
        self.commit(&record).await?;
        Ok(Process { container: id.to_owned(), token })
    }

    /// sandbox.KillContainer(id, signal, all): signals the container's first process, or
    /// every process in it.
    pub async fn kill_container(&self, id: &str, signal: i32, all: bool) -> Result<(), SandboxError> {
        let (_lock, _, agent, _) = self.live_container(&rules::KILL_CONTAINER, id).await?;
        let request = pb::SignalProcessRequest { container_id: id.to_owned(), exec_id: String::new(), signal: signal as u32, all };
        agent.raw().signal_process(request).await.map_err(self.call_error("SignalProcess"))?;
        Ok(())
    }

    /// sandbox.PauseContainer(id): freezes the container's cgroup.
    pub async fn pause_container(&self, id: &str) -> Result<ContainerStatus, SandboxError> {
        self.freeze(id, true).await
    }

    /// sandbox.ResumeContainer(id).
    pub async fn resume_container(&self, id: &str) -> Result<ContainerStatus, SandboxError> {
        self.freeze(id, false).await
    }

    async fn freeze(&self, id: &str, pause: bool) -> Result<ContainerStatus, SandboxError> {
        let rule = if pause { &rules::PAUSE_CONTAINER } else { &rules::RESUME_CONTAINER };
        let (_lock, mut record, agent, _) = self.live_container(rule, id).await?;
        let mut raw = agent.raw();
        if pause {
            raw.pause_container(cref(id)).await.map_err(self.call_error("PauseContainer"))?;
        } else {
            raw.resume_container(cref(id)).await.map_err(self.call_error("ResumeContainer"))?;
        }
        self.container(&mut record, id)?.state = if pause { Paused } else { Running };
        self.commit(&record).await?;
        Ok(container_status(&record, id).expect("exists"))
    }

    /// sandbox.ProcessListContainer(id): the processes in a container.
    pub async fn process_list_container(&self, id: &str) -> Result<Vec<ProcessInfo>, SandboxError> {
        let (_lock, _, agent, _) = self.live_container(&rules::PS_CONTAINER, id).await?;
        let list = agent.raw().list_processes(cref(id)).await.map_err(self.call_error("ListProcesses"))?.into_inner();
        Ok(list.processes)
    }

    /// sandbox.StatsContainer(id): cgroup statistics of a container.
    pub async fn stats_container(&self, id: &str) -> Result<ContainerStats, SandboxError> {
        let (_lock, _, agent, _) = self.live_container(&rules::STATS_CONTAINER, id).await?;
        Ok(agent.raw().stats_container(cref(id)).await.map_err(self.call_error("StatsContainer"))?.into_inner())
    }

    /// sandbox.StatusContainer(id): its state (refreshed from the agent while the VM runs),
    /// exit status and processes.
    pub async fn status_container(&self, id: &str) -> Result<ContainerStatus, SandboxError> {
        let (_lock, mut record) = self.locked().await?;
        if LIVE.contains(&record.state) {
            let agent = self.agent(&record).await?;
            let before = self.container(&mut record, id)?.state;
            if self.refresh(&agent, &mut record, id).await? != before {
                self.commit(&record).await?;
            }
        }
        container_status(&record, id).ok_or_else(|| SandboxError::ContainerNotFound { sandbox: self.id.clone(), id: id.to_owned() })
    }

    /// sandbox.UpdateContainer(id, resources): new cgroup limits (OCI `linux.resources`).
    pub async fn update_container(&self, id: &str, resources: serde_json::Value) -> Result<(), SandboxError> {
        resources_field("resources", &resources)?;
        let (_lock, mut record, agent, _) = self.live_container(&rules::UPDATE_CONTAINER, id).await?;
        let request = pb::UpdateContainerRequest { container_id: id.to_owned(), resources_json: serde_json::to_vec(&resources).unwrap_or_default() };
        agent.raw().update_container(request).await.map_err(self.call_error("UpdateContainer"))?;
        if let Some(c) = record.config.containers.iter_mut().find(|c| c.id == id) {
            c.resources = Some(resources);
        }
        self.commit(&record).await
    }

    /// sandbox.WaitProcess(container, token): waits for a process to exit and returns its exit
    /// status. Holds no lock while waiting.
    pub async fn wait_process(&self, container: &str, token: &str) -> Result<i32, SandboxError> {
        let record = {
            let (_lock, mut record) = self.locked().await?;
            self.check_token(&mut record, container, token)?;
            record
        };
        rules::WAIT_PROCESS.check_sandbox(&self.id, record.state)?;
        let agent = self.agent(&record).await?;
        let request = pb::ProcessRef { container_id: container.to_owned(), exec_id: exec_id(container, token) };
        let status = agent.raw().wait_process(request).await.map_err(self.call_error("WaitProcess"))?.into_inner().exit_status;
        let (_lock, mut record) = self.locked().await?;
        if let Some(c) = record.containers.get_mut(container) {
            if token == container {
                c.state = Stopped;
                c.exit_status = Some(status);
            } else if let Some(p) = c.processes.get_mut(token) {
                p.exit_status = Some(status);
            }
            self.commit(&record).await?;
        }
        Ok(status)
    }

    /// Checks that `token` names a process of `container`.
    pub(crate) fn check_token(&self, record: &mut SandboxRecord, container: &str, token: &str) -> Result<(), SandboxError> {
        let c = self.container(record, container)?;
        if token == container || c.processes.contains_key(token) {
            Ok(())
        } else {
            Err(SandboxError::ProcessNotFound { container: container.to_owned(), token: token.to_owned() })
        }
    }
}
