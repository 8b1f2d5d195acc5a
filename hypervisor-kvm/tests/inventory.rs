//! `list_vms` and `adopt_vm` of the kvm plugin, through the `HypervisorPlugin` trait as the
//! host calls them, on `fake-vmm` (the vmm's test double: it daemonizes, writes its pid file and
//! answers the control API, but runs no VM).

use hypervisor_kvm::KvmHypervisor;
use hypervisor_framework::process;
use plugin_api::hypervisor::{HypervisorConfig, HypervisorPlugin};
use plugin_api::ErrorKind;
use std::path::Path;

const FAKE_VMM: &str = env!("CARGO_BIN_EXE_fake-vmm");

fn hypervisor(run_dir: &Path) -> KvmHypervisor {
    let json = serde_json::json!({ "vmm": FAKE_VMM, "run_dir": run_dir, "agent_ports": 1, "stop_timeout_ms": 500 });
    KvmHypervisor::new(json.to_string().as_bytes()).unwrap()
}

fn config(tmp: &Path) -> HypervisorConfig {
    let kernel = tmp.join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF fake").unwrap();
    hypervisor_framework::testing::hypervisor_config(kernel)
}

fn pid_of(blob: &[u8]) -> (i32, u64) {
    let v: serde_json::Value = serde_json::from_slice(blob).unwrap();
    (v["pid"].as_i64().unwrap() as i32, v["start_time"].as_u64().unwrap())
}

/// Stops every VM the instance still lists (a failed assertion leaves none running).
struct StopAll<'a>(&'a KvmHypervisor);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        for (_, blob) in self.0.list_vms().unwrap_or_default() {
            let _ = self.0.stop_vm(&blob);
        }
    }
}

#[test]
fn a_vm_whose_blob_was_lost_is_listed_and_stopped_through_the_listed_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let hv = hypervisor(&tmp.path().join("run"));
    let _stop = StopAll(&hv);
    assert_eq!(hv.list_vms().unwrap(), vec![], "a run directory not made yet holds no VM");
    let created = hv.create_vm("sb-created", &config(tmp.path())).unwrap();
    let running = hv.start_vm(&hv.create_vm("sb-lost", &config(tmp.path())).unwrap()).unwrap();
    let (pid, start) = pid_of(&running);
    std::fs::create_dir_all(tmp.path().join("run/not-a-vm")).unwrap();
    std::fs::write(tmp.path().join("run/stray-file"), "x").unwrap();

    // The host forgets `running`: only the run directory knows the VM now.
    let listed = hv.list_vms().unwrap();
    let ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["sb-created", "sb-lost"], "directories without a state copy are skipped");
    assert_eq!(hv.vm_status(&listed[0].1).unwrap(), "created");
    assert_eq!(hv.vm_status(&listed[1].1).unwrap(), "running");
    assert_eq!(pid_of(&listed[1].1), (pid, start));

    hv.pause_vm(&listed[1].1).unwrap();
    let relisted = hv.list_vms().unwrap();
    assert_eq!(hv.vm_status(&relisted[1].1).unwrap(), "paused", "the copy follows every change");
    hv.stop_vm(&relisted[1].1).unwrap();
    assert!(!process::is_alive(pid, start), "the listed blob stopped the VMM");
    hv.stop_vm(&created).unwrap();
    assert_eq!(hv.list_vms().unwrap(), vec![], "stopped VMs leave no directory");
}

#[test]
fn a_vm_started_before_its_copy_was_updated_is_found_through_its_pid_file() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let hv = hypervisor(&run_dir);
    let _stop = StopAll(&hv);
    let created = hv.create_vm("sb1", &config(tmp.path())).unwrap();
    let copy = std::fs::read(run_dir.join("sb1/vm-state.json")).unwrap();
    let running = hv.start_vm(&created).unwrap();
    // A host killed after the VMM started and before the copy was replaced.
    std::fs::write(run_dir.join("sb1/vm-state.json"), copy).unwrap();
    let listed = hv.list_vms().unwrap();
    assert_eq!(pid_of(&listed[0].1), pid_of(&running));
    assert_eq!(hv.vm_status(&listed[0].1).unwrap(), "running");
}

#[test]
fn an_adopted_vm_moves_with_its_sockets_and_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let (pool_dir, run_dir) = (tmp.path().join("pool"), tmp.path().join("run"));
    let (pool, hv) = (hypervisor(&pool_dir), hypervisor(&run_dir));
    let (_stop_pool, _stop) = (StopAll(&pool), StopAll(&hv));
    let pooled = pool.start_vm(&pool.create_vm("pool-1", &config(tmp.path())).unwrap()).unwrap();
    let (pid, start) = pid_of(&pooled);

    let adopted = hv.adopt_vm(&pooled, "sb1").unwrap();
    assert!(!pool_dir.join("pool-1").exists() && run_dir.join("sb1/api.sock").exists());
    assert_eq!(pool.list_vms().unwrap(), vec![], "the pool no longer has it");
    assert_eq!(hv.list_vms().unwrap(), vec![("sb1".to_owned(), adopted.clone())]);
    assert_eq!(pid_of(&adopted), (pid, start), "the same VMM process");
    // The control channel answers at its new path.
    let paused = hv.pause_vm(&adopted).unwrap();
    assert_eq!(hv.vm_status(&paused).unwrap(), "paused");
    let adopted = hv.resume_vm(&paused).unwrap();
    let endpoint = hv.agent_endpoint(&adopted).unwrap();
    assert!(endpoint.contains(&format!("{}", run_dir.join("sb1").display())), "{endpoint}");
    assert_eq!(hv.adopt_vm(&adopted, "sb1").unwrap(), adopted, "adopting it again changes nothing");

    // The old blob no longer reaches the VM; a second VM cannot take sb1 while it runs.
    let other = pool.start_vm(&pool.create_vm("pool-2", &config(tmp.path())).unwrap()).unwrap();
    let e = hv.adopt_vm(&other, "sb1").unwrap_err();
    assert_eq!(e.kind, ErrorKind::BUSY, "{e}");
    assert!(e.message.contains("already holds a running vmm"), "{e}");
    assert!(pool_dir.join("pool-2").exists(), "a refused adoption moves nothing");
    let e = hv.adopt_vm(&other, "../x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_INPUT, "{e}");

    hv.stop_vm(&adopted).unwrap();
    assert!(!process::is_alive(pid, start));
    let stale_then_new = hv.adopt_vm(&other, "sb1").unwrap();
    assert_eq!(hv.vm_status(&stale_then_new).unwrap(), "running");
}

#[test]
fn a_foreign_or_stopped_blob_is_not_adopted() {
    let tmp = tempfile::tempdir().unwrap();
    let hv = hypervisor(&tmp.path().join("run"));
    let e = hv.adopt_vm(br#"{"schema": "qemu-vm/1"}"#, "sb1").unwrap_err();
    assert_eq!(e.kind, ErrorKind::INVALID_INPUT, "{e}");
    let created = hv.create_vm("pool-1", &config(tmp.path())).unwrap();
    let stopped = hv.stop_vm(&created).unwrap();
    let e = hv.adopt_vm(&stopped, "sb1").unwrap_err();
    assert!(e.message.contains("stopped: cannot be adopted"), "{e}");
}
