//! sandbox.Monitor(): a handle that reports the VM or the agent dying unexpectedly.

use super::handle::Sandbox;
use super::state::SandboxState;
use super::{blocking, SandboxError};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the VM's process is checked.
const VM_PERIOD: Duration = Duration::from_millis(500);
/// How often the agent is asked for its health (every this many VM checks).
const AGENT_EVERY: u32 = 4;
/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Something went wrong with a sandbox behind the runtime's back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// The VM's process is gone although nobody stopped the sandbox.
    VmDied {
        /// What the hypervisor plugin says (`dead`, ...).
        vm_status: String,
    },
    /// The agent stopped answering (twice in a row) although the sandbox was not paused through
    /// the API: it hangs, its channel broke, or the VM was paused behind the runtime's back.
    AgentUnreachable {
        /// The last error.
        error: String,
    },
}

/// Receives a sandbox's [`MonitorEvent`]s. The watch ends after the first event, when the
/// sandbox is stopped or deleted through the API, or when the handle is released or dropped.
pub struct Monitor {
    events: mpsc::Receiver<MonitorEvent>,
}

impl Monitor {
    /// The next event; `None` once the watch ended without one.
    pub async fn next(&mut self) -> Option<MonitorEvent> {
        self.events.recv().await
    }
}

impl Sandbox {
    /// sandbox.Monitor(): starts watching the VM (its process, through the hypervisor plugin)
    /// and the agent (its health). The watch is a task of this handle: Release ends it.
    pub async fn monitor(&self) -> Result<Monitor, SandboxError> {
        let (_lock, record) = self.locked().await?;
        super::rules::MONITOR.check_sandbox(&self.id, record.state)?;
        let agent = self.agent(&record).await?;
        let (hv, _) = self.rt.hypervisor()?;
        let hv = hv.clone();
        let store = self.rt.store.clone();
        let id = self.id.clone();
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let mut failures = 0;
            for tick in 1u32.. {
                tokio::time::sleep(VM_PERIOD).await;
                let (store, owned) = (store.clone(), id.clone());
                let Ok(Ok(Some(record))) = blocking(move || store.load(&owned)).await else { return };
                if record.state == SandboxState::Stopped {
                    return; // stopped through the API: expected
                }
                let Ok(blob) = record.vm.blob() else { return };
                let hv = hv.clone();
                let status = match blocking(move || hv.vm_status(&blob)).await {
                    Ok(Ok(s)) => s,
                    _ => continue,
                };
                if status == "dead" || status == "stopped" {
                    tracing::warn!(sandbox = %id, vm_status = %status, "the VM died");
                    let _ = tx.send(MonitorEvent::VmDied { vm_status: status }).await;
                    return;
                }
                // A VM paused through the API is expected not to answer; one paused behind the
                // runtime's back (or whose agent hangs) is not.
                if tick % AGENT_EVERY != 0 || record.state == SandboxState::Paused {
                    continue;
                }
                match tokio::time::timeout(HEALTH_TIMEOUT, agent.health()).await {
                    Ok(Ok(_)) => failures = 0,
                    outcome => {
                        failures += 1;
                        let error = match outcome {
                            Ok(Err(e)) => crate::plugins::error_chain(&e),
                            _ => format!("no answer within {HEALTH_TIMEOUT:?}"),
                        };
                        if failures >= 2 {
                            tracing::warn!(sandbox = %id, "the agent stopped answering: {error}");
                            let _ = tx.send(MonitorEvent::AgentUnreachable { error }).await;
                            return;
                        }
                    }
                }
            }
        });
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task.abort_handle());
        Ok(Monitor { events: rx })
    }
}
