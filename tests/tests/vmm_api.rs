//! The vmm's control API on a real guest: every op, in the order a runtime uses them, and a
//! shutdown that ends the process cleanly (exit status 0) from a state whose vCPUs are parked.
//! Needs a `/dev/kvm` that boots Linux, so here it runs in the nested L1 (`cargo xtask
//! nested-test`); the test name carries `kvm` for that tier's filter.

use integration_tests::kvm::{self, Killed};
use vmm_api::{Client, ClientError, Request, RunState};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bounds every wait, so a broken vmm fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(120);

fn client(api: &Path) -> Client {
    Client::new(api, Duration::from_secs(10))
}

/// The state after `op`: the answer of a run-state request, or `state`'s report.
fn state(api: &Path, op: Request) -> RunState {
    let answer = match op {
        Request::State => client(api).info().map(|info| info.state),
        _ => client(api).run_state(op),
    };
    answer.unwrap_or_else(|e| panic!("{op}: {e}"))
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
    assert_eq!(state(&api, Request::State), RunState::Created);
    let console_len = || std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
    assert_eq!(console_len(), 0, "a created VM's guest has not run");

    assert_eq!(state(&api, Request::Start), RunState::Running);
    wait_until("the kernel writes to the console", || console_len() > 0);
    assert_eq!(state(&api, Request::Pause), RunState::Paused);
    assert_eq!(state(&api, Request::Resume), RunState::Running);
    let info = client(&api).info().expect("state");
    assert_eq!((info.vcpus, info.memory_mib, info.pid), (2, 256, vmm.0.id()));
    let devices = client(&api).devices().expect("devices");
    assert!(devices.is_empty(), "no --disk, --net, ...: no virtio device: {devices:?}");

    assert_eq!(state(&api, Request::Stop), RunState::Stopped);
    for refused in [Request::Resume, Request::Start, Request::Pause] {
        match client(&api).run_state(refused) {
            Err(ClientError::Refused { message, .. }) => assert!(message.contains("the VM is stopped"), "{refused}: {message}"),
            other => panic!("{refused} on a stopped VM: {other:?}"),
        }
    }
    assert_eq!(state(&api, Request::State), RunState::Stopped);

    assert_eq!(state(&api, Request::Shutdown), RunState::Stopping);
    let mut status = None;
    wait_until("the vmm exits after shutdown", || {
        status = vmm.0.try_wait().expect("waiting for the vmm");
        status.is_some()
    });
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.is_some_and(|s| s.success()), "the vmm exits cleanly from a stopped VM: {status:?}\n{log_text}");
    assert!(!api.exists(), "the API socket is removed at exit");
}
