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

/// The kernel command line the kvm plugin gives its VMs: the agent on vsock port 1024 and one
/// serial port.
const AGENT_CMDLINE: &str = "console=ttyS0 panic=-1 quiet agent.channels=vsock:1024,serial:agent.0 reboot=k pci=off";

/// A vmm with the devices of a sandbox's VM (vsock for the agent, one agent port), RAM in
/// `memory`, booted from the image or restored from `restore`; `n` tells its sockets apart.
fn sandbox_vmm(image: &integration_tests::qemu::GuestImage, dir: &Path, n: u32, memory: &Path, restore: Option<&Path>, cid: u32) -> (Killed, std::path::PathBuf) {
    let api = dir.join(format!("api-{n}.sock"));
    let mut cmd = Command::new(kvm::vmm_binary());
    match restore {
        Some(state) => cmd.arg("--restore").arg(state),
        None => cmd.arg("--kernel").arg(&image.vmlinux).arg("--initrd").arg(&image.initramfs).args(["--cmdline", AGENT_CMDLINE]).arg("--state-file").arg(dir.join("state.json")),
    };
    cmd.args(["--memory-mib", "256", "--vcpus", "1"])
        .arg("--memory-file")
        .arg(memory)
        .arg("--vsock")
        .arg(format!("cid={cid},socket={}", dir.join(format!("vsock-{n}.sock")).display()))
        .arg("--serial-port")
        .arg(format!("name=agent.0,socket={}", dir.join(format!("agent-{n}.sock")).display()))
        .arg("--console-log")
        .arg(dir.join(format!("console-{n}.log")))
        .arg("--api-socket")
        .arg(&api)
        .arg("--paused")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("vmm-{n}.log"))).expect("the vmm's log"));
    (Killed(cmd.spawn().expect("spawning the vmm")), api)
}

/// The agent's health over the vmm's hybrid vsock socket, within `limit`.
fn agent_answers(dir: &Path, n: u32, limit: Duration) -> Result<(), String> {
    use runtime_core::agent::{connect, Endpoint};
    let endpoint = Endpoint::HybridVsock(dir.join(format!("vsock-{n}.sock")), 1024);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let client = connect(&endpoint, limit).await.map_err(|e| e.to_string())?;
        client.health().await.map(|_| ()).map_err(|e| e.to_string())
    })
}

fn exits_with(vmm: &mut Killed, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(what, || {
        status = vmm.0.try_wait().expect("waiting for the vmm");
        status.is_some()
    });
    status.expect("an exit status")
}

#[test]
fn kvm_a_saved_vm_is_restored_and_its_agent_answers_again() {
    let Some(image) = kvm::image_or_skip() else { return };
    let dir = integration_tests::private_dir();
    let (memory, state_file) = (dir.path().join("memory"), dir.path().join("state.json"));
    let log = |n: u32| std::fs::read_to_string(dir.path().join(format!("vmm-{n}.log"))).unwrap_or_default();

    // The VM a template is saved from: booted to a working agent, paused, saved, shut down.
    let (mut saved_vmm, api) = sandbox_vmm(&image, dir.path(), 1, &memory, None, 3);
    wait_until("the API socket appears", || api.exists());
    match client(&api).run_state(Request::Save) {
        Err(ClientError::Refused { message, .. }) => assert!(message.contains("cannot save: the VM is created"), "{message}"),
        other => panic!("save of a created VM: {other:?}"),
    }
    assert_eq!(state(&api, Request::Start), RunState::Running);
    agent_answers(dir.path(), 1, LIMIT).unwrap_or_else(|e| panic!("the booted VM's agent: {e}\n{}", log(1)));
    // Its connection closed, the agent settles back to listening.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&api, Request::Pause), RunState::Paused);
    assert_eq!(state(&api, Request::Save), RunState::Paused, "{}", log(1));
    let saved = std::fs::read_to_string(&state_file).expect("the state file");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&state_file).unwrap().permissions().mode() & 0o777, 0o600);
    for part in ["sandbox-vmm-state/1", "\"vcpus\"", "virtio-vsock", "virtio-console", "\"guest_cid\":3"] {
        assert!(saved.contains(part), "the state holds {part}");
    }
    assert_eq!(state(&api, Request::Shutdown), RunState::Stopping);
    assert!(exits_with(&mut saved_vmm, "the saved VM's vmm exits").success(), "{}", log(1));
    let ram_before = std::fs::read(&memory).expect("the RAM file");

    // A state that does not fit the VM is refused before anything runs, naming why.
    let (mut refused, _) = sandbox_vmm(&image, dir.path(), 2, &memory, Some(&state_file), 4);
    assert!(!exits_with(&mut refused, "a vmm with another CID exits").success());
    let said = log(2);
    assert!(said.contains("the saved guest CID is 3; this device's is 4"), "{said}");

    // The clone: the guest goes on from the save, its agent takes a new connection.
    let (mut clone, api) = sandbox_vmm(&image, dir.path(), 3, &memory, Some(&state_file), 3);
    wait_until("the clone's API socket appears", || api.exists());
    assert_eq!(state(&api, Request::State), RunState::Created);
    let started = Instant::now();
    assert_eq!(state(&api, Request::Start), RunState::Running);
    agent_answers(dir.path(), 3, Duration::from_secs(60)).unwrap_or_else(|e| panic!("the restored VM's agent: {e}\n{}", log(3)));
    eprintln!("restored VM: agent answered {:?} after start", started.elapsed());
    assert!(log(3).contains("transport reset sent to the restored guest"), "{}", log(3));
    // The clone's writes stayed in its own private mapping.
    assert!(std::fs::read(&memory).expect("the RAM file") == ram_before, "the template's RAM file is unchanged");
    assert_eq!(state(&api, Request::Shutdown), RunState::Stopping);
    assert!(exits_with(&mut clone, "the clone's vmm exits").success(), "{}", log(3));
}
