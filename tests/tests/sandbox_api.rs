//! The Sandbox API end to end: real VMs, the filesystem metadata store, the guest agent and
//! busybox containers. Every function of the seed's management, operation and relay tables is
//! called and its effect checked; so are the hotplug functions (the device ones are not
//! supported yet).
//!
//! One suite, run on both hypervisor plugins: each test is a function of the hypervisor and
//! runs as `<test>::qemu` (QEMU/TCG, tier 3) and `<test>::kvm` (our vmm; it needs a `/dev/kvm`
//! that boots Linux, so here it runs in the nested L1 of `cargo xtask nested-test`, tier 4).

use integration_tests::sandbox::{container, read_until, sandbox, Hypervisor, TestRuntime};
use runtime_core::sandbox::{
    rules, ContainerState, MonitorEvent, ProcessConfig, Sandbox, SandboxError, SandboxState, SandboxStatus,
    StateError,
};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

use hypervisor_kvm as _;
use hypervisor_qemu as _;

integration_tests::on_both_hypervisors!(
    every_operation_on_one_sandbox,
    killed_between_create_and_start_then_finished_by_another_process,
    two_processes_operate_on_one_sandbox_at_once,
    monitor_reports_a_vm_killed_with_sigkill,
    monitor_reports_an_agent_that_stops_answering,
    a_vm_that_dies_while_booting_fails_create_at_once,
    every_state_rule_refuses_what_it_should,
);
use storage_fs as _;

fn state_error(e: SandboxError) -> StateError {
    match e {
        SandboxError::State(s) => s,
        other => panic!("expected a state error, got {other}"),
    }
}

async fn every_operation_on_one_sandbox(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::on(&image, hv);
    let rt = &t.runtime;
    let config = sandbox(
        "api",
        &image,
        vec![
            container("c1", "echo hello from c1; read line; echo got:$line; exit 3"),
            container("c2", "trap 'exit 143' TERM; trap 'echo c2-got-usr1' USR1; while :; do sleep 0.2; done"),
        ],
    );

    // CreateSandbox: VM up, containers created, not started.
    let sb = rt.create_sandbox(config).await.expect("CreateSandbox");
    let status = sb.status().await.expect("Status");
    assert_eq!(status.state, SandboxState::Ready);
    assert_eq!(status.vm_status, "running");
    assert!(status.containers.iter().all(|c| c.state == ContainerState::Ready), "{status:?}");
    let e = state_error(sb.pause_container("c1").await.unwrap_err());
    assert!(e.to_string().contains("it is ready"), "{e}");
    // As Kata: a container starts only in a running sandbox.
    let e = state_error(sb.start_container("c1").await.unwrap_err());
    assert_eq!(e.to_string(), "cannot start a container in sandbox api: it is ready (allowed when running)");

    // Start: both containers run; a running sandbox cannot be deleted.
    sb.start().await.expect("Start");
    assert_eq!(sb.state(), SandboxState::Running);
    let e = state_error(sb.start().await.unwrap_err());
    assert_eq!(e.to_string(), "cannot start sandbox api: it is running (allowed when ready or stopped)");
    let e = state_error(sb.delete().await.unwrap_err());
    assert_eq!(e.to_string(), "cannot delete sandbox api: it is running (allowed when ready or paused or stopped)");
    let e = state_error(sb.start_container("c2").await.unwrap_err());
    assert!(e.to_string().contains("cannot start container c2: it is running"), "{e}");

    // IOStream + WaitProcess + StatusContainer on c1.
    let mut io = sb.io_stream("c1", "c1").await.expect("IOStream");
    read_until(&mut io.stdout, "hello from c1").await;
    io.stdin.write_all(b"ping\n").await.expect("stdin");
    read_until(&mut io.stdout, "got:ping").await;
    assert_eq!(sb.wait_process("c1", "c1").await.expect("WaitProcess"), 3);
    let c1 = sb.status_container("c1").await.expect("StatusContainer");
    assert_eq!((c1.state, c1.exit_status), (ContainerState::Stopped, Some(3)));

    // EnterContainer, SignalProcess, WinsizeProcess.
    let p = sb.enter_container("c2", ProcessConfig::new(["sh", "-c", "echo $((6 * 7)); exit 5"])).await.expect("EnterContainer");
    let mut io = sb.io_stream("c2", &p.token).await.expect("IOStream exec");
    read_until(&mut io.stdout, "42").await;
    assert_eq!(sb.wait_process("c2", &p.token).await.expect("wait exec"), 5);
    let trap = ProcessConfig::new(["sh", "-c", "trap 'echo got-usr1; exit 7' USR1; echo armed; while :; do sleep 0.1; done"]);
    let p = sb.enter_container("c2", trap).await.expect("exec trap");
    let mut io = sb.io_stream("c2", &p.token).await.expect("IOStream trap");
    read_until(&mut io.stdout, "armed").await;
    sb.signal_process("c2", &p.token, libc::SIGUSR1, false).await.expect("SignalProcess");
    read_until(&mut io.stdout, "got-usr1").await;
    assert_eq!(sb.wait_process("c2", &p.token).await.expect("wait trap"), 7);
    let mut tty = ProcessConfig::new(["sh", "-c", "read x; stty size"]);
    tty.terminal = true;
    let p = sb.enter_container("c2", tty).await.expect("exec tty");
    let mut io = sb.io_stream("c2", &p.token).await.expect("IOStream tty");
    assert!(io.stderr.is_none(), "a terminal has one output stream");
    sb.winsize_process("c2", &p.token, 40, 123).await.expect("WinsizeProcess");
    io.stdin.write_all(b"\n").await.expect("stdin tty");
    read_until(&mut io.stdout, "40 123").await;
    assert_eq!(sb.wait_process("c2", &p.token).await.expect("wait tty"), 0);
    let e = sb.wait_process("c2", "c2.999").await.unwrap_err();
    assert!(matches!(e, SandboxError::ProcessNotFound { .. }), "{e}");

    // ProcessListContainer, StatsContainer, UpdateContainer, Stats.
    let ps = sb.process_list_container("c2").await.expect("ProcessListContainer");
    assert!(ps.iter().any(|p| p.command.contains("sleep")), "{ps:?}");
    sb.update_container("c2", serde_json::json!({"pids": {"limit": 20}})).await.expect("UpdateContainer");
    let stats = sb.stats_container("c2").await.expect("StatsContainer");
    let pids = stats.pids.expect("pids stats");
    assert_eq!(pids.limit, 20);
    assert!(pids.current >= 1 && stats.memory.expect("memory").usage_bytes > 0);
    let all = sb.stats().await.expect("Stats");
    assert!(all.agent_rss_kib > 0 && all.containers.iter().any(|(id, _)| id == "c2"), "{all:?}");

    // PauseContainer / ResumeContainer.
    assert_eq!(sb.pause_container("c2").await.expect("PauseContainer").state, ContainerState::Paused);
    assert!(state_error(sb.pause_container("c2").await.unwrap_err()).to_string().contains("it is paused"));
    assert_eq!(sb.resume_container("c2").await.expect("ResumeContainer").state, ContainerState::Running);

    // CreateContainer / StartContainer / DeleteContainer in a running sandbox; each container
    // writes to a layer of its own over the shared read-only disk.
    sb.create_container(container("c3", "echo data > /written && echo c3 ran $(cat /written)")).await.expect("CreateContainer");
    assert!(sb.config().containers.iter().any(|c| c.id == "c3"), "CreateContainer adds to the config");
    let mut io = sb.io_stream("c3", "c3").await.expect("IOStream c3");
    sb.start_container("c3").await.expect("StartContainer");
    read_until(&mut io.stdout, "c3 ran data").await;
    assert_eq!(sb.wait_process("c3", "c3").await.expect("wait c3"), 0);
    let look = sb.enter_container("c2", ProcessConfig::new(["sh", "-c", "test -e /written && echo shared || echo private"])).await.expect("exec");
    let mut io = sb.io_stream("c2", &look.token).await.expect("IOStream look");
    read_until(&mut io.stdout, "private").await;
    sb.wait_process("c2", &look.token).await.expect("wait look");
    sb.delete_container("c3").await.expect("DeleteContainer");
    assert!(!sb.config().containers.iter().any(|c| c.id == "c3"));
    assert!(matches!(sb.status_container("c3").await.unwrap_err(), SandboxError::ContainerNotFound { .. }));
    assert!(state_error(sb.delete_container("c2").await.unwrap_err()).to_string().contains("it is running"));

    // As Kata: a ready container can be signalled, and stopping it kills it (SIGKILL).
    sb.create_container(container("c4", "echo never")).await.expect("CreateContainer c4");
    sb.kill_container("c4", libc::SIGKILL, true).await.expect("KillContainer on a ready container");
    assert_eq!(sb.wait_process("c4", "c4").await.expect("wait c4"), 128 + libc::SIGKILL);
    sb.delete_container("c4").await.expect("DeleteContainer c4");
    sb.create_container(container("c5", "echo never")).await.expect("CreateContainer c5");
    let c5 = sb.stop_container("c5", false).await.expect("StopContainer on a ready container");
    assert_eq!((c5.state, c5.exit_status), (ContainerState::Stopped, Some(128 + libc::SIGKILL)), "{c5:?}");
    sb.delete_container("c5").await.expect("DeleteContainer c5");

    // KillContainer (the first process only) and StopContainer (SIGTERM, handled: exit 143).
    let sleeper = sb.enter_container("c2", ProcessConfig::new(["sleep", "1000"])).await.expect("exec sleep");
    let mut c2_out = sb.io_stream("c2", "c2").await.expect("IOStream c2");
    sb.kill_container("c2", libc::SIGUSR1, false).await.expect("KillContainer");
    read_until(&mut c2_out.stdout, "c2-got-usr1").await;
    let c2 = sb.stop_container("c2", false).await.expect("StopContainer");
    assert_eq!((c2.state, c2.exit_status), (ContainerState::Stopped, Some(143)), "{c2:?}");
    assert_eq!(sb.wait_process("c2", &sleeper.token).await.expect("wait sleeper"), 128 + libc::SIGKILL, "the pid namespace went with its init");
    let again = sb.stop_container("c2", false).await.expect("StopContainer on a stopped container does nothing");
    assert_eq!((again.state, again.exit_status), (ContainerState::Stopped, Some(143)));
    assert!(state_error(sb.kill_container("c2", libc::SIGTERM, false).await.unwrap_err()).to_string().contains("it is stopped"));

    // The hotplug table: guest network works, device hotplug is not supported yet.
    let nics = sb.list_interfaces().await.expect("ListInterfaces");
    assert!(nics.iter().any(|i| i.name == "lo") && nics.iter().any(|i| i.name == "eth0"), "{nics:?}");
    let routes = sb.list_routes().await.expect("ListRoutes");
    assert_eq!(sb.update_routes(routes.clone()).await.expect("UpdateRoutes").len(), routes.len());
    let e = sb.add_interface(Default::default()).await.unwrap_err();
    assert!(e.to_string().contains("AddInterface is not supported yet"), "{e}");
    assert!(matches!(sb.add_device(plugin_api::hypervisor::DeviceRequest {
        schema: 1, add: true, kind: "block".into(), id: "d".into(), settings: serde_json::Value::Null
    }).await, Err(SandboxError::NotSupportedYet { function: "AddDevice" })));
    assert!(matches!(sb.remove_interface(Default::default()).await, Err(SandboxError::NotSupportedYet { .. })));

    // Sandbox pause/resume, Release.
    sb.pause().await.expect("pause");
    assert_eq!(rt.status_sandbox("api").await.expect("StatusSandbox").vm_status, "paused");
    assert!(state_error(sb.pause().await.unwrap_err()).to_string().contains("it is paused"));
    sb.resume().await.expect("resume");
    assert!(sb.is_connected().await);
    sb.release().await;
    assert!(!sb.is_connected().await, "Release closes the agent connection");
    assert_eq!(sb.status().await.expect("status after release").vm_status, "running", "Release leaves the VM alone");

    // Stop: containers destroyed, VM stopped; then Start again from stopped: a fresh VM.
    sb.stop(false).await.expect("Stop");
    sb.stop(false).await.expect("as Kata (since 1.5): stopping a stopped sandbox does nothing");
    let status = rt.status_sandbox("api").await.expect("status stopped");
    assert_eq!((status.state, status.vm_status.as_str()), (SandboxState::Stopped, "stopped"));
    assert_eq!(t.vm_pid("api"), None);
    assert!(state_error(sb.pause().await.unwrap_err()).to_string().contains("cannot pause sandbox api: it is stopped"));
    let sb = rt.start_sandbox("api").await.expect("StartSandbox from stopped");
    let mut io = sb.io_stream("c1", "c1").await.expect("IOStream after restart");
    read_until(&mut io.stdout, "hello from c1").await;

    // Sandbox pause freezes the running containers; resume runs them again, but not one
    // paused on its own.
    sb.pause_container("c2").await.expect("PauseContainer c2");
    sb.pause().await.expect("pause with running containers");
    let states = |s: SandboxStatus| s.containers.iter().map(|c| (c.id.clone(), c.state)).collect::<Vec<_>>();
    let paused = states(sb.status().await.expect("status paused"));
    assert_eq!(paused, [("c1".to_owned(), ContainerState::Paused), ("c2".to_owned(), ContainerState::Paused)]);
    let e = state_error(sb.resume_container("c2").await.unwrap_err());
    assert!(e.to_string().contains("it is paused (allowed when running)"), "{e}");
    sb.resume().await.expect("resume");
    let resumed = states(sb.status().await.expect("status resumed"));
    assert_eq!(resumed, [("c1".to_owned(), ContainerState::Running), ("c2".to_owned(), ContainerState::Paused)]);
    sb.resume_container("c2").await.expect("ResumeContainer c2");

    // KillContainer --all on the restarted c1; StopSandbox; sandbox.Delete().
    sb.kill_container("c1", libc::SIGKILL, true).await.expect("KillContainer --all");
    assert_eq!(sb.wait_process("c1", "c1").await.expect("wait c1"), 128 + libc::SIGKILL);
    rt.stop_sandbox("api", false).await.expect("StopSandbox");
    let last = sb.delete().await.expect("sandbox.Delete");
    assert_eq!(last.id, "api");
    assert!(rt.list_sandboxes().await.expect("ListSandboxes").is_empty());
    assert!(matches!(rt.fetch_sandbox("api").await.unwrap_err(), SandboxError::NotFound { .. }));
    t.assert_nothing_left("api");
}

/// The second process (`src/bin/sandbox_child.rs`).
fn child(t: &TestRuntime, role: &str, arg: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandbox_child"));
    cmd.arg(&t.config).args([role, arg]).stdout(Stdio::piped()).stderr(Stdio::inherit());
    cmd
}

async fn killed_between_create_and_start_then_finished_by_another_process(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::on(&image, hv);
    let config = sandbox("handover", &image, vec![container("c1", "echo started by the second process")]);
    let mut creator = tokio::process::Command::from(child(&t, "create", &serde_json::to_string(&config).expect("json"))).spawn().expect("spawning the creator");
    let mut lines = tokio::io::BufReader::new(creator.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            match lines.next_line().await.expect("reading the creator") {
                Some(l) if l.starts_with("created") => return l,
                Some(_) => continue,
                None => panic!("the creator exited before creating the sandbox"),
            }
        }
    })
    .await
    .expect("the creator did not create the sandbox in time");
    assert_eq!(line, "created handover");
    creator.start_kill().expect("SIGKILL the creator");
    creator.wait().await.expect("reap the creator");

    // A new process (this one) fetches it and carries on.
    let listed = t.runtime.list_sandboxes().await.expect("ListSandboxes");
    assert_eq!(listed.iter().map(|s| (s.id.as_str(), s.state)).collect::<Vec<_>>(), [("handover", SandboxState::Ready)]);
    assert_eq!(listed[0].vm_status, "running", "the VM outlived its creator");
    let sb = t.runtime.fetch_sandbox("handover").await.expect("FetchSandbox");
    let mut io = sb.io_stream("c1", "c1").await.expect("IOStream");
    sb.start().await.expect("Start");
    read_until(&mut io.stdout, "started by the second process").await;
    assert_eq!(sb.wait_process("c1", "c1").await.expect("wait"), 0);
    t.runtime.delete_sandbox("handover").await.expect("DeleteSandbox");
    t.assert_nothing_left("handover");
}

async fn two_processes_operate_on_one_sandbox_at_once(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::on(&image, hv);
    let config = sandbox("shared", &image, vec![container("c1", "echo up; while :; do sleep 1; done")]);
    let sb = t.runtime.run_sandbox(config).await.expect("RunSandbox");
    // This process holds an output stream (an agent channel) the whole time.
    let mut io = sb.io_stream("c1", "c1").await.expect("IOStream");
    read_until(&mut io.stdout, "up").await;
    let other = tokio::process::Command::from(child(&t, "exec", "shared")).spawn().expect("spawning the second process");
    let mut mine = Vec::new();
    for i in 0..4 {
        let p = sb.enter_container("c1", ProcessConfig::new(["sh", "-c", &format!("exit {}", 10 + i)])).await.expect("exec");
        assert_eq!(sb.wait_process("c1", &p.token).await.expect("wait"), 10 + i);
        mine.push(p.token);
    }
    let output = other.wait_with_output().await.expect("the second process");
    assert!(output.status.success(), "the second process failed: {:?}", output.status);
    let theirs: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().filter_map(|l| l.strip_prefix("token ").map(str::to_owned)).collect();
    assert_eq!(theirs.len(), 4, "{theirs:?}");
    let status = sb.status_container("c1").await.expect("status");
    let mut tokens: Vec<String> = status.processes.iter().map(|p| p.token.clone()).collect();
    tokens.sort();
    let mut expected: Vec<String> = mine.iter().chain(&theirs).cloned().collect();
    expected.sort();
    assert_eq!(tokens, expected, "every process of both, each with its own token");
    assert!(status.processes.iter().all(|p| p.exit_status.is_some()));
    drop(io);
    t.runtime.delete_sandbox("shared").await.expect("DeleteSandbox");
    t.assert_nothing_left("shared");
}

/// A guest whose initramfs is garbage panics early ("No working init found" or "Unable to
/// mount root fs"); with `panic=-1` it resets, which ends QEMU (`-no-reboot`) and the vmm.
/// CreateSandbox must say the VM died, with the console, instead of waiting for an agent that
/// will never answer until the boot timeout (300 s here).
async fn a_vm_that_dies_while_booting_fails_create_at_once(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let dir = integration_tests::private_dir();
    let garbage = dir.path().join("garbage-initramfs.img");
    std::fs::write(&garbage, vec![0x5a; 4096]).expect("writing a garbage initramfs");
    let broken = integration_tests::qemu::GuestImage { initramfs: garbage, ..image.clone() };
    let t = TestRuntime::on(&broken, hv);
    // In the nested L1 an L2 guest now and then triple-faults before its first console line
    // (docs/MACHINE-FACTS.md); that boot died too, but shows no panic: try once more.
    for attempt in 1..=2 {
        let id = format!("dying{attempt}");
        match t.runtime.create_sandbox(sandbox(&id, &broken, vec![])).await {
            Err(SandboxError::BootDied { vm_status, console, .. }) => {
                assert_eq!(vm_status, "dead");
                t.assert_nothing_left(&id);
                if console.trim().is_empty() && hv == Hypervisor::Kvm && attempt == 1 {
                    eprintln!("the first VM died before writing to its console (the nested L1's early triple fault): again");
                    continue;
                }
                assert!(console.contains("Kernel panic"), "the console shows why: {console}");
                return;
            }
            Err(other) => panic!("expected BootDied, got {other}"),
            Ok(_) => panic!("a guest without an init booted"),
        }
    }
}

async fn monitor_reports_a_vm_killed_with_sigkill(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::on(&image, hv);
    let sb = t.runtime.create_sandbox(sandbox("doomed", &image, vec![])).await.expect("CreateSandbox");
    let mut monitor = sb.monitor().await.expect("Monitor");
    let pid = t.vm_pid("doomed").expect("the VM runs");
    // SAFETY: kill(2) on the VM process this test started, found by its VM directory.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let event = tokio::time::timeout(Duration::from_secs(30), monitor.next()).await.expect("Monitor reported nothing within 30 s");
    assert_eq!(event, Some(MonitorEvent::VmDied { vm_status: "dead".into() }));
    assert_eq!(t.runtime.status_sandbox("doomed").await.map(|s| s.vm_status).unwrap_or_default(), "dead");
    t.runtime.delete_sandbox("doomed").await.expect("DeleteSandbox of a dead VM");
    t.assert_nothing_left("doomed");
}

async fn monitor_reports_an_agent_that_stops_answering(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::on(&image, hv);
    let sb = t.runtime.create_sandbox(sandbox("silent", &image, vec![])).await.expect("CreateSandbox");
    let mut monitor = sb.monitor().await.expect("Monitor");
    // Pausing the VM through the API is expected: no event.
    sb.pause().await.expect("pause");
    assert!(tokio::time::timeout(Duration::from_secs(4), monitor.next()).await.is_err(), "an event for a pause made through the API");
    sb.resume().await.expect("resume");
    // Frozen behind the runtime's back: the VM lives, the agent cannot answer.
    t.freeze_behind_the_runtime("silent");
    let event = tokio::time::timeout(Duration::from_secs(60), monitor.next()).await.expect("Monitor reported nothing within 60 s");
    assert!(matches!(event, Some(MonitorEvent::AgentUnreachable { .. })), "{event:?}");
    assert!(t.vm_pid("silent").is_some(), "the VM is alive");
    t.runtime.delete_sandbox("silent").await.expect("DeleteSandbox");
    t.assert_nothing_left("silent");
}

/// Every row of the state-rule table (`docs/SANDBOX-API.md`, `runtime_core::sandbox::rules`)
/// end to end: in each sandbox state, with containers in each state the sandbox allows, every
/// function is called wherever its rule refuses it, and must fail with a state error naming
/// the refused state while every state stays as it was. (What the rules allow is called by
/// `every_operation_on_one_sandbox`.)
async fn every_state_rule_refuses_what_it_should(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::on(&image, hv);
    let forever = "while :; do sleep 0.2; done";
    let config = sandbox("rules", &image, vec![container("cu", forever), container("cp", forever), container("cs", "true")]);
    let sb = t.runtime.create_sandbox(config).await.expect("CreateSandbox");
    let mut refused = check_refusals(&sb, SandboxState::Ready).await;
    sb.start().await.expect("Start");
    assert_eq!(sb.wait_process("cs", "cs").await.expect("cs exits"), 0);
    sb.pause_container("cp").await.expect("PauseContainer");
    sb.create_container(container("cr", "true")).await.expect("CreateContainer");
    refused += check_refusals(&sb, SandboxState::Running).await;
    sb.pause().await.expect("pause");
    refused += check_refusals(&sb, SandboxState::Paused).await;
    sb.resume().await.expect("resume");
    sb.stop(false).await.expect("Stop");
    refused += check_refusals(&sb, SandboxState::Stopped).await;
    eprintln!("{refused} calls refused by their rule");
    t.runtime.delete_sandbox("rules").await.expect("DeleteSandbox");
    t.assert_nothing_left("rules");
}

/// Calls every function its rule refuses in `sb`'s current state (which must be `expected`):
/// each must be a state error naming that state, and no state may change. Returns how many.
async fn check_refusals(sb: &Sandbox, expected: SandboxState) -> usize {
    let states = |s: &SandboxStatus| (s.state, s.containers.iter().map(|c| (c.id.clone(), c.state)).collect::<Vec<_>>());
    let before = states(&sb.status().await.expect("status"));
    assert_eq!(before.0, expected, "{before:?}");
    let first = before.1[..1].to_vec();
    let mut refused = 0;
    for rule in rules::ALL {
        let sandbox_refuses = !rule.sandbox.contains(&expected);
        let targets = match rule.container {
            _ if sandbox_refuses => first.clone(),
            Some(allowed) => before.1.iter().filter(|(_, s)| !allowed.contains(s)).cloned().collect(),
            None => continue,
        };
        for (c, c_state) in &targets {
            for (name, result) in integration_tests::rules::call(sb, rule, c).await {
                let e = match result {
                    Err(SandboxError::State(e)) => e.to_string(),
                    other => panic!("{name} in a {expected} sandbox on a {c_state} container {c}: expected a refusal, got {other:?}"),
                };
                let needle = if sandbox_refuses { format!("sandbox rules: it is {expected}") } else { format!("container {c}: it is {c_state}") };
                assert!(e.contains(&needle), "{name}: {needle:?} not in {e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(states(&sb.status().await.expect("status")), before, "a refused call changed a state");
    refused
}
