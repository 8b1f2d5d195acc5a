//! What Status and Stats return.

use super::context::RuntimeContext;
use super::handle::Sandbox;
use super::record::SandboxRecord;
use super::rules;
use super::state::{ContainerState, SandboxState};
use super::{ContainerStats, SandboxError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A sandbox's status (the seed's `SandboxStatus`).
#[derive(Debug, Clone, Serialize)]
pub struct SandboxStatus {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: SandboxState,
    /// What the hypervisor plugin says of the VM: `created`, `running`, `paused`, `stopped`,
    /// `dead` (killed behind our back), or the plugin's error.
    pub vm_status: String,
    /// The hypervisor plugin.
    pub hypervisor: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Where the agent answers.
    pub agent_endpoint: String,
    /// The VM's console log.
    pub console_log: Option<PathBuf>,
    /// Milliseconds since the epoch when it was created.
    pub created_ms: u64,
    /// Annotations from its config.
    pub annotations: BTreeMap<String, String>,
    /// Its containers, in creation order.
    pub containers: Vec<ContainerStatus>,
}

/// A container's status.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerStatus {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: ContainerState,
    /// Its first process's exit status, once it exited.
    pub exit_status: Option<i32>,
    /// The command of its first process.
    pub args: Vec<String>,
    /// The disk its rootfs is on.
    pub rootfs_disk: String,
    /// Processes entered into it.
    pub processes: Vec<ProcessStatus>,
}

/// A process entered into a container.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    /// Its token.
    pub token: String,
    /// Its command.
    pub args: Vec<String>,
    /// Its exit status, once seen.
    pub exit_status: Option<i32>,
}

/// A sandbox's statistics (the seed's `SandboxStats`).
#[derive(Debug, Clone)]
pub struct SandboxStats {
    /// The agent's resident memory in the guest, KiB.
    pub agent_rss_kib: u64,
    /// How long the agent has run, ms.
    pub agent_uptime_ms: u64,
    /// Per running or paused container.
    pub containers: Vec<(String, ContainerStats)>,
}

/// The status of container `id` as recorded.
pub(crate) fn container_status(record: &SandboxRecord, id: &str) -> Option<ContainerStatus> {
    let c = record.containers.get(id)?;
    let config = record.config.containers.iter().find(|c| c.id == id)?;
    let args = match (&config.process, &config.oci_spec) {
        (_, Some(spec)) => spec
            .pointer("/process/args")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        (Some(p), None) => p.args.clone(),
        (None, None) => Vec::new(),
    };
    Some(ContainerStatus {
        id: id.to_owned(),
        state: c.state,
        exit_status: c.exit_status,
        args,
        rootfs_disk: config.rootfs.disk.clone(),
        processes: c
            .processes
            .iter()
            .map(|(token, p)| ProcessStatus { token: token.clone(), args: p.config.args.clone(), exit_status: p.exit_status })
            .collect(),
    })
}

/// A status from the record, asking the hypervisor plugin about the VM.
pub(crate) async fn from_record(rt: &RuntimeContext, record: &SandboxRecord) -> SandboxStatus {
    let vm_status = rt.vm_status(record).await;
    with_vm_status(record, vm_status)
}

/// A status from the record and what the plugin said of the VM.
fn with_vm_status(record: &SandboxRecord, vm_status: String) -> SandboxStatus {
    SandboxStatus {
        id: record.config.id.clone(),
        state: record.state,
        vm_status,
        hypervisor: record.vm.plugin.clone(),
        vcpus: record.vm.config.vcpus,
        memory_mib: record.vm.config.memory_mib,
        agent_endpoint: record.vm.agent_endpoint.clone(),
        console_log: record.vm.config.console_log.clone(),
        created_ms: record.created_ms,
        annotations: record.config.annotations.clone(),
        containers: record.config.containers.iter().filter_map(|c| container_status(record, &c.id)).collect(),
    }
}

impl Sandbox {
    /// sandbox.Status(): the sandbox's and its containers' status; while the VM runs, the
    /// containers' states are refreshed from the agent.
    pub async fn status(&self) -> Result<SandboxStatus, SandboxError> {
        let (_lock, mut record) = self.locked().await?;
        let live = matches!(record.state, SandboxState::Ready | SandboxState::Running);
        let vm = self.rt.vm_status(&record).await;
        if live && vm == "running" {
            let agent = self.agent(&record).await?;
            let before: Vec<ContainerState> = record.containers.values().map(|c| c.state).collect();
            for c in record.config.containers.clone() {
                self.refresh(&agent, &mut record, &c.id).await?;
            }
            if record.containers.values().map(|c| c.state).collect::<Vec<_>>() != before {
                self.commit(&record).await?;
            }
        }
        Ok(with_vm_status(&record, vm))
    }

    /// sandbox.Stats(): the agent's memory and every live container's cgroup statistics.
    pub async fn stats(&self) -> Result<SandboxStats, SandboxError> {
        let (_lock, record) = self.locked().await?;
        rules::STATS.check_sandbox(&self.id, record.state)?;
        let agent = self.agent(&record).await?;
        let health = agent.health().await.map_err(self.agent_error())?;
        let mut containers = Vec::new();
        for (id, c) in &record.containers {
            if matches!(c.state, ContainerState::Running | ContainerState::Paused) {
                let request = agent_protocol::pb::ContainerRef { container_id: id.clone() };
                match agent.raw().stats_container(request).await {
                    Ok(stats) => containers.push((id.clone(), stats.into_inner())),
                    Err(status) if status.code() == tonic::Code::FailedPrecondition || status.code() == tonic::Code::NotFound => {}
                    Err(status) => return Err(self.call_error("StatsContainer")(status)),
                }
            }
        }
        Ok(SandboxStats { agent_rss_kib: health.agent_rss_kib, agent_uptime_ms: health.uptime_ms, containers })
    }
}
