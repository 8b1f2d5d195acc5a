//! The VM factory conformance kit: checks the contract of
//! [`VmFactoryPlugin`](crate::factory::VmFactoryPlugin) on an initialized factory (the host
//! builds the [`FactoryHost`](crate::factory::FactoryHost) and calls `init`; `sandboxctl
//! conformance` does). In order: its status reads; it makes a started VM whose agent answers
//! (asked of the host through an [`AgentProbe`]); a second VM is another VM; both are the
//! caller's to stop; a bad sandbox id is refused without losing a VM the factory holds ready;
//! `close` succeeds.

use super::hypervisor::AgentProbe;
use super::{CheckResult, Report};
use crate::factory::VmFactoryHandle;
use crate::hypervisor::{HypervisorConfig, HypervisorHandle};
use std::path::Path;
use std::time::Duration;

/// What the kit asks for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The VM config of each request (its `console_log` is set by the kit, in `work_dir`).
    pub config: HypervisorConfig,
    /// Where the VMs' console logs go.
    pub work_dir: std::path::PathBuf,
    /// How long a VM may take to its agent answering.
    pub boot_timeout: Duration,
}

struct State {
    vms: Vec<Vec<u8>>,
}

type Step = fn(&VmFactoryHandle, &HypervisorHandle, &Request, AgentProbe<'_>, &mut State) -> Result<(), String>;

const STEPS: &[(&str, Step)] = &[
    ("status reads as a FactoryStatus", status),
    ("new_vm gives a started VM whose agent answers, its console where asked", first_vm),
    ("a second new_vm gives another VM (its own blob, endpoint and console)", second_vm),
    ("the VMs are the caller's: stop_vm ends each", stop_all),
    ("a bad sandbox id is refused, and costs no ready VM", bad_id),
    ("close succeeds", close),
];

/// Runs every check against `factory` (initialized), with VMs under `hypervisor`.
pub fn run(factory: &VmFactoryHandle, hypervisor: &HypervisorHandle, request: &Request, probe: AgentProbe<'_>) -> Report {
    let mut state = State { vms: vec![] };
    let mut failed: Option<&str> = None;
    let mut checks = Vec::new();
    for (name, step) in STEPS {
        let outcome = match failed {
            Some(first) => Err(format!("not run: {first:?} failed")),
            None => step(factory, hypervisor, request, probe, &mut state),
        };
        if outcome.is_err() && failed.is_none() {
            failed = Some(name);
        }
        checks.push(CheckResult { name, outcome });
    }
    for blob in state.vms {
        let _ = hypervisor.stop_vm(&blob);
    }
    let _ = factory.close();
    Report { checks }
}

fn status(f: &VmFactoryHandle, _: &HypervisorHandle, _: &Request, _: AgentProbe<'_>, _: &mut State) -> Result<(), String> {
    f.status().map(drop).map_err(|e| format!("status: {e}"))
}

fn one_vm(f: &VmFactoryHandle, hv: &HypervisorHandle, request: &Request, probe: AgentProbe<'_>, n: usize, state: &mut State) -> Result<(String, String), String> {
    let id = format!("conformance-{}-{n}", std::process::id());
    let console = request.work_dir.join(format!("{id}.console.log"));
    let config = HypervisorConfig { console_log: Some(console.clone()), ..request.config.clone() };
    let blob = f.new_vm(hv.raw(), &id, &config).map_err(|e| format!("new_vm({id}): {e}"))?;
    state.vms.push(blob.clone());
    match hv.vm_status(&blob) {
        Ok(s) if s == "running" => {}
        other => return Err(format!("the VM of {id} is {other:?}, expected running")),
    }
    let endpoints = hv.agent_endpoint(&blob).map_err(|e| format!("agent_endpoint: {e}"))?;
    probe(&endpoints, request.boot_timeout).map_err(|e| format!("the agent of {id} at {endpoints}: {e}"))?;
    if !non_empty(&console) {
        return Err(format!("the console log {} is empty or missing", console.display()));
    }
    Ok((id, endpoints))
}

fn non_empty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

fn first_vm(f: &VmFactoryHandle, hv: &HypervisorHandle, request: &Request, probe: AgentProbe<'_>, state: &mut State) -> Result<(), String> {
    one_vm(f, hv, request, probe, 1, state).map(drop)
}

fn second_vm(f: &VmFactoryHandle, hv: &HypervisorHandle, request: &Request, probe: AgentProbe<'_>, state: &mut State) -> Result<(), String> {
    let first_endpoint = state.vms.first().and_then(|b| hv.agent_endpoint(b).ok()).unwrap_or_default();
    let (_, endpoint) = one_vm(f, hv, request, probe, 2, state)?;
    if state.vms.len() == 2 && state.vms[0] == state.vms[1] {
        return Err("both requests got the same state blob".into());
    }
    if endpoint == first_endpoint {
        return Err(format!("both VMs have the agent endpoint {endpoint}"));
    }
    Ok(())
}

fn stop_all(_: &VmFactoryHandle, hv: &HypervisorHandle, _: &Request, _: AgentProbe<'_>, state: &mut State) -> Result<(), String> {
    for blob in std::mem::take(&mut state.vms) {
        let stopped = hv.stop_vm(&blob).map_err(|e| format!("stop_vm: {e}"))?;
        match hv.vm_status(&stopped) {
            Ok(s) if s == "stopped" => {}
            other => return Err(format!("a stopped VM is {other:?}")),
        }
    }
    Ok(())
}

fn bad_id(f: &VmFactoryHandle, hv: &HypervisorHandle, request: &Request, _: AgentProbe<'_>, state: &mut State) -> Result<(), String> {
    let ready = |f: &VmFactoryHandle| -> Result<Vec<String>, String> {
        let status = f.status().map_err(|e| format!("status: {e}"))?;
        Ok(status.vms.into_iter().filter(|v| v.state == "ready").map(|v| v.id).collect())
    };
    // A pool refilling after the VMs above: wait for its boots to end, so a VM is ready to lose.
    let began = std::time::Instant::now();
    while f.status().is_ok_and(|s| s.vms.iter().any(|v| v.state != "ready")) && began.elapsed() < request.boot_timeout {
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = ready(f)?;
    if let Ok(blob) = f.new_vm(hv.raw(), "../x", &request.config) {
        state.vms.push(blob);
        return Err("new_vm accepted the sandbox id \"../x\"".into());
    }
    let after = ready(f)?;
    match before.iter().find(|id| !after.contains(id)) {
        Some(lost) => Err(format!("the refused request cost the factory its ready VM {lost} (ready before: {before:?}, after: {after:?})")),
        None => Ok(()),
    }
}

fn close(f: &VmFactoryHandle, _: &HypervisorHandle, _: &Request, _: AgentProbe<'_>, _: &mut State) -> Result<(), String> {
    f.close().map_err(|e| format!("close: {e}"))
}
