//! The hypervisor conformance kit: boots the guest image through the plugin and checks the
//! contract of [`HypervisorPlugin`](crate::hypervisor::HypervisorPlugin) on one VM, in order
//! (each check needs the ones before it; after a failure the rest report that they did not
//! run). Whether the guest agent answers is asked of the host ([`AgentProbe`]), which speaks
//! the agent's protocol; the kit itself needs only the plugin.

use super::{CheckResult, Report};
use crate::endpoint::parse_endpoints;
use crate::error::ErrorKind;
use crate::hypervisor::{HypervisorConfig, HypervisorHandle};
use std::path::PathBuf;
use std::time::Duration;

/// Asks the guest agent at one of `endpoints` (the plugin's agent endpoint text) to answer
/// within the time given: `Ok`, or why not.
pub type AgentProbe<'a> = &'a (dyn Fn(&str, Duration) -> Result<(), String> + Sync);

/// What the kit boots.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The VM: kernel, initrd (with the agent), vCPUs, memory, disks. Its `console_log` is
    /// set by the kit.
    pub config: HypervisorConfig,
    /// Where the kit writes the VMs' console logs.
    pub work_dir: PathBuf,
    /// How long a boot may take to the agent answering.
    pub boot_timeout: Duration,
}

struct Vm {
    id: String,
    blob: Vec<u8>,
}

type Step = fn(&HypervisorHandle, &Guest, AgentProbe<'_>, &mut Option<Vm>) -> Result<(), String>;

const STEPS: &[(&str, Step)] = &[
    ("a bad sandbox id or config is refused with INVALID_INPUT, naming what is wrong", refusals),
    ("create gives a blob that vm_status reads as created", create),
    ("a blob the plugin did not write is refused with INVALID_INPUT", foreign_blob),
    ("start boots the guest: running, and its agent answers at the endpoint given", start),
    ("the state blob round-trips: every call on the same bytes gives the same answer", round_trip),
    ("pause stops the vCPUs, a second pause is refused, resume runs them again", pause_resume),
    ("list_vms names the VM (plugin-api 1.2; UNSUPPORTED passes)", listed),
    ("stop ends the VM, stopping again succeeds, a stopped VM has no endpoint", stop),
];

/// Runs every check against `hypervisor`, booting `guest` (one VM, stopped at the end).
pub fn run(hypervisor: &HypervisorHandle, guest: &Guest, probe: AgentProbe<'_>) -> Report {
    let mut vm = None;
    let mut failed: Option<&str> = None;
    let mut checks = Vec::new();
    for (name, step) in STEPS {
        let outcome = match failed {
            Some(first) => Err(format!("not run: {first:?} failed")),
            None => step(hypervisor, guest, probe, &mut vm),
        };
        if outcome.is_err() && failed.is_none() {
            failed = Some(name);
        }
        checks.push(CheckResult { name, outcome });
    }
    if let Some(vm) = vm {
        let _ = hypervisor.stop_vm(&vm.blob);
    }
    Report { checks }
}

fn expect_refusal(what: &str, result: Result<impl Sized, crate::PluginError>, needle: &str) -> Result<(), String> {
    match result {
        Ok(_) => Err(format!("{what} was accepted")),
        Err(e) if e.kind != ErrorKind::INVALID_INPUT => Err(format!("{what}: kind {}, expected INVALID_INPUT: {e}", e.kind)),
        Err(e) if !e.message.contains(needle) => Err(format!("{what}: the message does not name {needle:?}: {e}")),
        Err(_) => Ok(()),
    }
}

fn status(hv: &HypervisorHandle, blob: &[u8], want: &str) -> Result<(), String> {
    match hv.vm_status(blob) {
        Ok(s) if s == want => Ok(()),
        Ok(s) => Err(format!("vm_status is {s:?}, expected {want:?}")),
        Err(e) => Err(format!("vm_status: {e}")),
    }
}

fn the_vm(vm: &Option<Vm>) -> Result<&Vm, String> {
    vm.as_ref().ok_or_else(|| "no VM".to_owned())
}

fn refusals(hv: &HypervisorHandle, guest: &Guest, _: AgentProbe<'_>, _: &mut Option<Vm>) -> Result<(), String> {
    expect_refusal("sandbox id \"../x\"", hv.create_vm("../x", &guest.config), "../x")?;
    let missing = guest.work_dir.join("no-such-kernel");
    let bad = HypervisorConfig { kernel: missing.clone(), ..guest.config.clone() };
    match hv.create_vm("conformance-bad", &bad) {
        Ok(blob) => {
            let _ = hv.stop_vm(&blob);
            Err(format!("a missing kernel {} was accepted", missing.display()))
        }
        Err(e) if e.message.contains("no-such-kernel") => Ok(()),
        Err(e) => Err(format!("a missing kernel: the message does not name the path: {e}")),
    }
}

fn create(hv: &HypervisorHandle, guest: &Guest, _: AgentProbe<'_>, vm: &mut Option<Vm>) -> Result<(), String> {
    let id = format!("conformance-{}", std::process::id());
    let config = HypervisorConfig { console_log: Some(guest.work_dir.join(format!("{id}.console.log"))), ..guest.config.clone() };
    let blob = hv.create_vm(&id, &config).map_err(|e| format!("create_vm: {e}"))?;
    if blob.is_empty() {
        return Err("create_vm returned an empty blob".into());
    }
    *vm = Some(Vm { id, blob });
    status(hv, &the_vm(vm)?.blob, "created")
}

fn foreign_blob(hv: &HypervisorHandle, _: &Guest, _: AgentProbe<'_>, _: &mut Option<Vm>) -> Result<(), String> {
    for blob in [&b"not a blob"[..], b"{}", b"{\"schema\": \"someone-else/1\"}"] {
        let what = format!("vm_status of {:?}", String::from_utf8_lossy(blob));
        expect_refusal(&what, hv.vm_status(blob), "")?;
        expect_refusal(&format!("stop_vm of {:?}", String::from_utf8_lossy(blob)), hv.stop_vm(blob), "")?;
    }
    Ok(())
}

fn start(hv: &HypervisorHandle, guest: &Guest, probe: AgentProbe<'_>, vm: &mut Option<Vm>) -> Result<(), String> {
    let created = the_vm(vm)?.blob.clone();
    let blob = hv.start_vm(&created).map_err(|e| format!("start_vm: {e}"))?;
    if let Some(vm) = vm.as_mut() {
        vm.blob = blob.clone();
    }
    status(hv, &blob, "running")?;
    let endpoints = hv.agent_endpoint(&blob).map_err(|e| format!("agent_endpoint: {e}"))?;
    parse_endpoints(&endpoints).map_err(|e| format!("agent_endpoint {endpoints:?} does not parse: {e}"))?;
    probe(&endpoints, guest.boot_timeout).map_err(|e| format!("the agent at {endpoints}: {e}"))
}

fn round_trip(hv: &HypervisorHandle, _: &Guest, _: AgentProbe<'_>, vm: &mut Option<Vm>) -> Result<(), String> {
    let blob = &the_vm(vm)?.blob;
    let copy = blob.clone();
    status(hv, &copy, "running")?;
    let (a, b) = (hv.agent_endpoint(blob), hv.agent_endpoint(&copy));
    match (a, b) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        (a, b) => Err(format!("agent_endpoint differs between calls on the same blob: {a:?} and {b:?}")),
    }
}

fn pause_resume(hv: &HypervisorHandle, guest: &Guest, probe: AgentProbe<'_>, vm: &mut Option<Vm>) -> Result<(), String> {
    let blob = the_vm(vm)?.blob.clone();
    let paused = hv.pause_vm(&blob).map_err(|e| format!("pause_vm: {e}"))?;
    status(hv, &paused, "paused")?;
    expect_refusal("pausing a paused VM", hv.pause_vm(&paused), "paused")?;
    let resumed = hv.resume_vm(&paused).map_err(|e| format!("resume_vm: {e}"))?;
    if let Some(vm) = vm.as_mut() {
        vm.blob = resumed.clone();
    }
    status(hv, &resumed, "running")?;
    let endpoints = hv.agent_endpoint(&resumed).map_err(|e| format!("agent_endpoint: {e}"))?;
    probe(&endpoints, guest.boot_timeout).map_err(|e| format!("the agent after resume: {e}"))
}

fn listed(hv: &HypervisorHandle, _: &Guest, _: AgentProbe<'_>, vm: &mut Option<Vm>) -> Result<(), String> {
    let vm = the_vm(vm)?;
    match hv.list_vms() {
        Err(e) if e.kind == ErrorKind::UNSUPPORTED => Ok(()),
        Err(e) => Err(format!("list_vms: {e}")),
        Ok(list) => match list.iter().find(|(id, _)| *id == vm.id) {
            None => Err(format!("list_vms does not name {}", vm.id)),
            Some((_, blob)) => status(hv, blob, "running").map_err(|e| format!("the listed blob: {e}")),
        },
    }
}

fn stop(hv: &HypervisorHandle, _: &Guest, _: AgentProbe<'_>, vm: &mut Option<Vm>) -> Result<(), String> {
    let Some(v) = vm.take() else { return Err("no VM".into()) };
    let stopped = hv.stop_vm(&v.blob).map_err(|e| format!("stop_vm: {e}"))?;
    status(hv, &stopped, "stopped")?;
    hv.stop_vm(&stopped).map_err(|e| format!("stopping a stopped VM: {e}"))?;
    hv.stop_vm(&v.blob).map_err(|e| format!("stopping through the running VM's old blob: {e}"))?;
    expect_refusal("agent_endpoint of a stopped VM", hv.agent_endpoint(&stopped), "")?;
    if let Ok(list) = hv.list_vms() {
        if list.iter().any(|(id, _)| *id == v.id) {
            return Err(format!("list_vms still names the stopped {}", v.id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The kit against test doubles: a fake hypervisor that keeps the contract passes, one
    //! whose pause does nothing fails exactly there, so the kit's checks can fail.
    use super::*;
    use crate::hypervisor::{hypervisor_into_ffi, HypervisorPlugin};
    use crate::PluginError;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A fake hypervisor (a test double): VMs are JSON blobs `{"id", "state"}`, nothing runs.
    struct Fake {
        pause_works: bool,
        listed: AtomicBool,
    }

    fn blob(id: &str, state: &str) -> Vec<u8> {
        serde_json::json!({"fake": 1, "id": id, "state": state}).to_string().into_bytes()
    }

    fn read(vm: &[u8]) -> Result<(String, String), PluginError> {
        let v: serde_json::Value = serde_json::from_slice(vm).map_err(|e| PluginError::invalid_input(format!("not a fake VM: {e}")))?;
        match (v["fake"].as_u64(), v["id"].as_str(), v["state"].as_str()) {
            (Some(1), Some(id), Some(state)) => Ok((id.to_owned(), state.to_owned())),
            _ => Err(PluginError::invalid_input("not a fake VM")),
        }
    }

    impl HypervisorPlugin for Fake {
        fn create_vm(&self, id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
            if id.contains('/') {
                return Err(PluginError::invalid_input(format!("sandbox id {id:?}")));
            }
            if !config.kernel.exists() {
                return Err(PluginError::invalid_input(format!("kernel {}: missing", config.kernel.display())));
            }
            self.listed.store(true, Ordering::SeqCst);
            Ok(blob(id, "created"))
        }
        fn start_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
            Ok(blob(&read(vm)?.0, "running"))
        }
        fn stop_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
            let (id, _) = read(vm)?;
            self.listed.store(false, Ordering::SeqCst);
            Ok(blob(&id, "stopped"))
        }
        fn pause_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
            let (id, state) = read(vm)?;
            if state != "running" {
                return Err(PluginError::invalid_input(format!("VM {id} is {state}")));
            }
            Ok(blob(&id, if self.pause_works { "paused" } else { "running" }))
        }
        fn resume_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
            Ok(blob(&read(vm)?.0, "running"))
        }
        fn agent_endpoint(&self, vm: &[u8]) -> Result<String, PluginError> {
            let (id, state) = read(vm)?;
            if state == "stopped" {
                return Err(PluginError::invalid_input("stopped"));
            }
            Ok(format!("unix:/run/fake/{id}.sock"))
        }
        fn vm_status(&self, vm: &[u8]) -> Result<String, PluginError> {
            Ok(read(vm)?.1)
        }
        fn list_vms(&self) -> Result<Vec<(String, Vec<u8>)>, PluginError> {
            let id = format!("conformance-{}", std::process::id());
            Ok(if self.listed.load(Ordering::SeqCst) { vec![(id.clone(), blob(&id, "running"))] } else { vec![] })
        }
    }

    fn kit(pause_works: bool) -> Report {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"k").unwrap();
        let hv = HypervisorHandle::new(hypervisor_into_ffi(Fake { pause_works, listed: AtomicBool::new(false) }), "fake");
        let config = HypervisorConfig {
            schema: 1,
            kernel,
            initrd: None,
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 128,
            extra: serde_json::Value::Null,
            console_log: None,
            disks: vec![],
            memory_file: None,
        };
        let guest = Guest { config, work_dir: dir.path().to_owned(), boot_timeout: Duration::from_secs(1) };
        run(&hv, &guest, &|endpoints: &str, _| if endpoints.starts_with("unix:") { Ok(()) } else { Err("no agent".into()) })
    }

    #[test]
    fn a_hypervisor_that_keeps_the_contract_passes() {
        let report = kit(true);
        assert!(report.passed(), "{report}");
        assert_eq!(report.checks.len(), STEPS.len());
    }

    #[test]
    fn a_pause_that_does_nothing_fails_there_and_the_rest_does_not_run() {
        let report = kit(false);
        let failed: Vec<&str> = report.failures().map(|c| c.name).collect();
        assert_eq!(failed[0], STEPS[5].0, "{report}");
        assert!(report.checks[5].outcome.as_ref().unwrap_err().contains("vm_status is \"running\", expected \"paused\""), "{report}");
        assert!(report.checks[6].outcome.as_ref().unwrap_err().starts_with("not run"), "{report}");
        assert!(report.to_string().ends_with("5 passed, 3 failed"), "{report}");
    }
}
