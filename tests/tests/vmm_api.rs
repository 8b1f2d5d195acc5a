//! The vmm's control API on a real guest: every op, in the order a runtime uses them, and a
//! shutdown that ends the process cleanly (exit status 0) from a state whose vCPUs are parked.
//! Needs a `/dev/kvm` that boots Linux, so here it runs in the nested L1 (`cargo xtask
//! nested-test`); the test name carries `kvm` for that tier's filter.

use hypervisor_kvm::api::client::{request, ClientError};
use integration_tests::kvm::{self, Killed};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bounds every wait, so a broken vmm fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(120);

fn call(api: &Path, op: &str) -> Result<Value, ClientError> {
    request(api, op, Duration::from_secs(10))
}

fn state(api: &Path, op: &str) -> String {
    let answer = call(api, op).unwrap_or_else(|e| panic!("{op}: {e}"));
    answer["state"].as_str().unwrap_or_default().to_owned()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < LIMIT, "{what} within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kvm_api_runs_pauses_stops_and_shuts_down_a_real_vm() {
    let Some(image) = kvm::image_or_skip() else { return };
    let dir = integration_tests::private_dir();
    let (api, console, log) = (dir.path().join("api.sock"), dir.path().join("console.log"), dir.path().join("vmm.log"));
    let mut vmm = Killed(
        Command::new(kvm::vmm_binary())
            .arg("--kernel")
            .arg(&image.vmlinux)
            .arg("--initrd")
            .arg(&image.initramfs)
            .args(["--cmdline", "console=ttyS0 panic=-1 reboot=k pci=off", "--memory-mib", "256", "--vcpus", "2"])
            .arg("--console-log")
            .arg(&console)
            .arg("--api-socket")
            .arg(&api)
            .arg("--paused")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the vmm's log"))
            .spawn()
            .expect("spawning the vmm"),
    );
    wait_until("the API socket appears", || api.exists());
    assert_eq!(state(&api, "state"), "created");
    let console_len = || std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
    assert_eq!(console_len(), 0, "a created VM's guest has not run");

    assert_eq!(state(&api, "start"), "running");
    wait_until("the kernel writes to the console", || console_len() > 0);
    assert_eq!(state(&api, "pause"), "paused");
    assert_eq!(state(&api, "resume"), "running");
    let devices = call(&api, "devices").expect("devices");
    assert_eq!(devices["devices"], serde_json::json!([]), "no --disk, --net, ...: no virtio device");

    assert_eq!(state(&api, "stop"), "stopped");
    for refused in ["resume", "start", "pause"] {
        match call(&api, refused) {
            Err(ClientError::Refused { message, .. }) => assert!(message.contains("the VM is stopped"), "{refused}: {message}"),
            other => panic!("{refused} on a stopped VM: {other:?}"),
        }
    }
    assert_eq!(state(&api, "state"), "stopped");

    assert_eq!(state(&api, "shutdown"), "stopping");
    let mut status = None;
    wait_until("the vmm exits after shutdown", || {
        status = vmm.0.try_wait().expect("waiting for the vmm");
        status.is_some()
    });
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "the vmm exits cleanly from a stopped VM: {status:?}\n{log_text}");
    assert!(!api.exists(), "the API socket is removed at exit");
}
