//! The sandbox's own lifecycle: create (boot the VM, create the containers), start, stop,
//! pause, resume and delete.

use super::context::RuntimeContext;
use super::guest;
use super::handle::Sandbox;
use super::lock::SandboxLock;
use super::record::{ContainerRecord, SandboxRecord, VmRecord, SCHEMA};
use super::rules;
use super::state::{ContainerState, SandboxState};
use super::status::{self, SandboxStatus};
use super::{blocking, SandboxConfig, SandboxError};
use crate::console_tail::console_tail;
use agent_protocol::pb;
use std::sync::Arc;
use std::time::Duration;

use SandboxState::*;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// CreateSandbox.
pub(crate) async fn create(rt: &Arc<RuntimeContext>, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
    config.validate()?;
    let (hv, section) = rt.hypervisor()?;
    section.check_files(&rt.config.file)?;
    let (lock, existing) = rt.lock(&config.id, false).await?;
    if existing.is_some() {
        return Err(SandboxError::Exists { id: config.id });
    }
    let dir = rt.sandbox_dir(&config.id);
    std::fs::create_dir_all(&dir).map_err(|source| SandboxError::Io { what: format!("creating {}", dir.display()), source })?;
    if let Some(factory) = &rt.config.factory {
        factory.check_files(&rt.config.file)?;
    }
    let console = Some(dir.join("console.log"));
    let vm_config = crate::factory::vm_config(section, config.vcpus, config.memory_mib, config.disks.clone(), console);
    let record = SandboxRecord {
        schema: SCHEMA,
        config,
        state: Stopped,
        vm: VmRecord { plugin: hv.plugin().to_owned(), config: vm_config, blob: String::new(), agent_endpoint: String::new(), boot: 0 },
        containers: Default::default(),
        created_ms: now_ms(),
        paused_from: None,
        next_process: 0,
    };
    let sandbox = Sandbox::new(rt.clone(), record.clone());
    let mut record = record;
    match boot(&sandbox, &mut record).await {
        Ok(()) => {
            record.state = Ready;
            sandbox.commit(&record).await?;
            tracing::info!(sandbox = %sandbox.id, "sandbox created");
            drop(lock);
            Ok(sandbox)
        }
        Err(e) => {
            // The caller gets the error; the log says only what is done about it.
            tracing::info!(sandbox = %sandbox.id, "creating the sandbox failed: removing what was made");
            destroy(&sandbox, &record, &lock).await;
            Err(e)
        }
    }
}

/// Gets a started VM for `record` from the VM factory, waits for its agent and creates the
/// containers of the config. Saves the record as soon as there is a VM, so that a process
/// killed midway leaves a record through which the VM can be stopped (a process killed while
/// the factory works leaves a VM that `Runtime::orphan_vms` finds).
async fn boot(sb: &Sandbox, record: &mut SandboxRecord) -> Result<(), SandboxError> {
    let factory = sb.rt.factory().await?;
    let (hv, _) = sb.rt.hypervisor()?;
    let (hv, id, config, f) = (hv.clone(), sb.id.clone(), record.vm.config.clone(), factory.clone());
    let blob = blocking(move || f.new_vm(&hv, &id, &config))
        .await?
        .map_err(|source| SandboxError::Factory { plugin: factory.plugin().to_owned(), op: format!("make the VM of sandbox {}", sb.id), source })?;
    record.vm.set_blob(&blob);
    if sb.rt.vm_status(record).await == "created" {
        // A factory built against plugin-api before 1.2 may return a VM it only created.
        let blob = sb.hv("start", move |h| h.start_vm(&blob)).await?;
        record.vm.set_blob(&blob);
    }
    let blob = record.vm.blob()?;
    record.vm.boot += 1;
    record.vm.agent_endpoint = sb.hv("query", move |h| h.agent_endpoint(&blob)).await?;
    sb.commit(record).await?;
    let timeout = Duration::from_secs(sb.rt.config.runtime.boot_timeout_s);
    // A VM whose process ends while it boots will never answer: fail then, not at the timeout.
    let agent = tokio::select! {
        agent = sb.agent_within(record, timeout, None) => agent.map_err(|e| match e {
            SandboxError::Agent { sandbox, source } => {
                SandboxError::Boot { sandbox, console: console_tail(record.vm.config.console_log.as_deref(), "\n"), source }
            }
            other => other,
        })?,
        vm_status = vm_died(&sb.rt, record) => {
            return Err(SandboxError::BootDied { sandbox: sb.id.clone(), vm_status, console: console_tail(record.vm.config.console_log.as_deref(), "\n") });
        }
    };
    tracing::info!(sandbox = %sb.id, boot = record.vm.boot, "agent ready");
    // The VM may be a template's clone (the template's clock and RNG state) or have waited
    // in a pool: its clock is set and its RNG reseeded before anything runs in it.
    guest::set_time(&sb.id, &agent).await?;
    guest::reseed(&sb.id, &agent).await?;
    record.containers.clear();
    for c in record.config.containers.clone() {
        guest::create_container(&sb.id, &agent, record, &c).await?;
        record.containers.insert(c.id.clone(), ContainerRecord::ready());
    }
    Ok(())
}

/// How often a booting VM is checked for having died.
const BOOT_WATCH: Duration = Duration::from_secs(1);

/// Resolves with the VM status once the hypervisor plugin says the record's VM is `dead`.
async fn vm_died(rt: &RuntimeContext, record: &SandboxRecord) -> String {
    loop {
        tokio::time::sleep(BOOT_WATCH).await;
        let status = rt.vm_status(record).await;
        if status == "dead" {
            return status;
        }
    }
}

/// Stops the VM (if any), then removes the sandbox's files and record; if the VM cannot be
/// stopped, the record stays. Used to roll back a failed create and by delete.
async fn destroy(sb: &Sandbox, record: &SandboxRecord, lock: &SandboxLock) -> Vec<String> {
    let mut problems = Vec::new();
    sb.drop_agent().await;
    if let Ok(blob) = record.vm.blob() {
        if !blob.is_empty() {
            if let Err(e) = sb.hv("stop", move |h| h.stop_vm(&blob)).await {
                // Keep the record: it is the only way left to reach that VM.
                problems.push(crate::plugins::error_chain(&e));
                return problems;
            }
        }
    }
    let dir = sb.rt.sandbox_dir(&sb.id);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            problems.push(format!("removing {}: {e}", dir.display()));
        }
    }
    let store = sb.rt.store.clone();
    let id = sb.id.clone();
    match blocking(move || store.delete(&id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(crate::plugins::error_chain(&e)),
        Err(e) => problems.push(e.to_string()),
    }
    lock.remove_file();
    problems
}

impl Sandbox {
    /// sandbox.Start(): starts the sandbox and the containers not started yet. A stopped
    /// sandbox gets a fresh VM and its containers are created again first.
    pub async fn start(&self) -> Result<(), SandboxError> {
        let (_lock, mut record) = self.locked().await?;
        rules::START.check_sandbox(&self.id, record.state)?;
        if record.state == Stopped {
            let blob = record.vm.blob()?;
            if !blob.is_empty() {
                self.hv("stop", move |h| h.stop_vm(&blob)).await?; // a leftover of a killed process
            }
            if let Err(e) = boot(self, &mut record).await {
                let blob = record.vm.blob()?;
                let _ = self.hv("stop", move |h| h.stop_vm(&blob)).await;
                self.commit(&record).await?;
                return Err(e);
            }
            record.state = Ready;
            self.commit(&record).await?;
        }
        let agent = self.agent(&record).await?;
        for (id, c) in record.containers.iter_mut() {
            if c.state == ContainerState::Ready {
                agent.raw().start_container(pb::ContainerRef { container_id: id.clone() }).await.map_err(self.call_error("StartContainer"))?;
                c.state = ContainerState::Running;
            }
        }
        record.state = Running;
        self.commit(&record).await?;
        tracing::info!(sandbox = %self.id, "sandbox started");
        Ok(())
    }

    /// sandbox.Stop(force): stops every container (SIGKILL to all its processes; SIGTERM
    /// first when `runtime.stop_timeout_s` gives a grace period), removes them from the guest
    /// and stops the VM. With `force`, failures of the
    /// guest (an agent that does not answer, a container that will not die) are ignored.
    pub async fn stop(&self, force: bool) -> Result<(), SandboxError> {
        let (_lock, mut record) = self.locked().await?;
        rules::STOP.check_sandbox(&self.id, record.state)?;
        if record.state == Stopped {
            return Ok(()); // as Kata (since 1.5): stopping a stopped sandbox does nothing
        }
        if let Err(e) = self.stop_guest(&mut record).await {
            if !force {
                return Err(e);
            }
            tracing::warn!(sandbox = %self.id, "ignoring a guest failure while stopping (force): {}", crate::plugins::error_chain(&e));
        }
        self.drop_agent().await;
        let blob = record.vm.blob()?;
        let blob = self.hv("stop", move |h| h.stop_vm(&blob)).await?;
        record.vm.set_blob(&blob);
        for c in record.containers.values_mut() {
            c.state = ContainerState::Stopped;
            c.paused_by_sandbox = false;
            c.processes.clear();
        }
        record.state = Stopped;
        record.paused_from = None;
        self.commit(&record).await?;
        tracing::info!(sandbox = %self.id, "sandbox stopped");
        Ok(())
    }

    async fn stop_guest(&self, record: &mut SandboxRecord) -> Result<(), SandboxError> {
        let vm_status = self.rt.vm_status(record).await;
        if vm_status != "running" && vm_status != "paused" {
            return Err(SandboxError::VmNotRunning { sandbox: self.id.clone(), vm_status });
        }
        if record.state == Paused {
            let blob = record.vm.blob()?;
            let blob = self.hv("resume", move |h| h.resume_vm(&blob)).await?;
            record.vm.set_blob(&blob);
        }
        let agent = self.agent(record).await?;
        let grace = Duration::from_secs(self.rt.config.runtime.stop_timeout_s);
        for (id, c) in record.containers.iter_mut() {
            if c.state != ContainerState::Stopped {
                if let Some(status) = guest::stop_container(&self.id, &agent, id, c.state, grace).await? {
                    c.exit_status = Some(status);
                }
            }
            let request = pb::RemoveContainerRequest { container_id: id.clone(), force: true };
            agent.raw().remove_container(request).await.map_err(self.call_error("RemoveContainer"))?;
        }
        Ok(())
    }

    /// Pauses the sandbox's VM (Kata's PauseSandbox): its running containers are recorded as
    /// paused (ready, paused and stopped ones keep their state).
    pub async fn pause(&self) -> Result<(), SandboxError> {
        let (_lock, mut record) = self.locked().await?;
        rules::PAUSE.check_sandbox(&self.id, record.state)?;
        let blob = record.vm.blob()?;
        let blob = self.hv("pause", move |h| h.pause_vm(&blob)).await?;
        record.vm.set_blob(&blob);
        record.paused_from = Some(record.state);
        record.state = Paused;
        for c in record.containers.values_mut().filter(|c| c.state == ContainerState::Running) {
            c.state = ContainerState::Paused;
            c.paused_by_sandbox = true;
        }
        self.commit(&record).await
    }

    /// Resumes a paused sandbox (Kata's ResumeSandbox): the containers its pause froze run
    /// again; one paused on its own (PauseContainer) stays paused.
    pub async fn resume(&self) -> Result<(), SandboxError> {
        let (_lock, mut record) = self.locked().await?;
        rules::RESUME.check_sandbox(&self.id, record.state)?;
        let blob = record.vm.blob()?;
        let blob = self.hv("resume", move |h| h.resume_vm(&blob)).await?;
        record.vm.set_blob(&blob);
        record.state = record.paused_from.take().unwrap_or(Running);
        for c in record.containers.values_mut().filter(|c| c.paused_by_sandbox) {
            c.state = ContainerState::Running;
            c.paused_by_sandbox = false;
        }
        self.commit(&record).await
    }

    /// sandbox.Delete(): shuts the VM down and removes everything of the sandbox: its
    /// record, console log, channel claims and lock file. A running sandbox must be stopped
    /// first. Returns its last status.
    pub async fn delete(&self) -> Result<SandboxStatus, SandboxError> {
        let (lock, record) = self.locked().await?;
        rules::DELETE.check_sandbox(&self.id, record.state)?;
        let mut last = status::from_record(&self.rt, &record).await;
        let problems = destroy(self, &record, &lock).await;
        if !problems.is_empty() {
            return Err(SandboxError::Io {
                what: format!("deleting sandbox {}: {}", self.id, problems.join("; ")),
                source: std::io::Error::other("cleanup failed"),
            });
        }
        last.state = Stopped;
        last.vm_status = "deleted".into();
        tracing::info!(sandbox = %self.id, "sandbox deleted");
        Ok(last)
    }
}
