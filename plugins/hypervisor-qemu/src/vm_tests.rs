//! Tests of [`crate::vm`] and of the shared operations over [`crate::control`] that need no
//! QEMU: fake `qemu` scripts and plain processes stand in for it, to drive the start failure,
//! QMP-less start, stop escalation and busy-directory paths.

use crate::config::QemuConfig;
use crate::process;
use crate::state::{Lifecycle, QemuFields, VmState};
use crate::vm::{self, QemuError};
use hypervisor_framework::ops::{self, OpError};
use plugin_api::hypervisor::HypervisorConfig;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Setup {
    tmp: tempfile::TempDir,
    config: QemuConfig,
}

impl Setup {
    /// A run directory and a fake `qemu` that runs `script` (a `/bin/sh` body).
    fn new(script: &str) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let qemu = tmp.path().join("fake-qemu");
        std::fs::write(&qemu, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(tmp.path().join("vmlinuz"), b"k").unwrap();
        let json = serde_json::json!({ "qemu": qemu, "run_dir": tmp.path().join("run"), "accel": "tcg", "agent_ports": 1 });
        let config = QemuConfig::parse(json.to_string().as_bytes()).unwrap();
        Setup { tmp, config }
    }

    fn hv_config(&self) -> HypervisorConfig {
        hypervisor_framework::testing::hypervisor_config(self.tmp.path().join("vmlinuz"))
    }

    fn create(&self, id: &str) -> VmState {
        vm::create_vm(&self.config, id, &self.hv_config()).unwrap()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.tmp.path().join("run").join(id)
    }
}

/// A running VM state for `pid`, as if QEMU had started.
fn running(state: &VmState, pid: u32) -> VmState {
    let start = process::stat(pid as i32).unwrap().start_time;
    VmState { lifecycle: Lifecycle::Running, pid: Some(pid as i32), start_time: Some(start), ..state.clone() }
}

/// `sh -c SCRIPT -name NAME`. Scripts block in a builtin (`read` on a pipe) or `exec`, so
/// killing sh leaves no orphan holding the test's output.
fn spawn_sh(script: &str, name: &str) -> std::process::Child {
    let child = Command::new("sh").args(["-c", script, "-name", name]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    assert!(process::wait_for_exec(child.id() as i32));
    child
}

#[test]
fn a_failing_start_carries_qemu_stderr() {
    let s = Setup::new("echo 'qemu-system-x86_64: -kernel /x: could not load kernel' >&2\nexit 1");
    let state = s.create("sb1");
    let e = ops::start_vm(&state).unwrap_err();
    assert!(matches!(e, OpError::StartFailed { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("could not load kernel") && text.contains("sb1") && text.contains("exit status: 1"), "{text}");
}

#[test]
fn a_start_without_qmp_fails_and_kills_what_it_started() {
    // "Daemonizes": a background process named in the pid file, no QMP socket.
    let s = Setup::new(
        r#"while [ $# -gt 0 ]; do [ "$1" = -pidfile ] && pidfile=$2; shift; done
sleep 30 </dev/null >/dev/null 2>&1 &
echo $! > "$pidfile""#,
    );
    let state = s.create("sb1");
    let e = ops::start_vm(&state).unwrap_err();
    let text = error_report::chain(&e);
    assert!(text.contains("connecting to QMP") && text.contains("qmp.sock"), "{text}");
    let pid: i32 = std::fs::read_to_string(s.dir("sb1").join("qemu.pid")).unwrap().trim().parse().unwrap();
    let stat = process::stat(pid);
    assert!(stat.is_none_or(|st| st.state == 'Z'), "the fake QEMU {pid} was left running: {stat:?}");
}

#[test]
fn stop_escalates_to_sigterm_then_sigkill_and_removes_the_dir() {
    let s = Setup::new("exit 1");
    let state = s.create("sb1");
    std::fs::write(s.dir("sb1").join("agent-0.sock"), b"").unwrap();

    // No QMP: SIGTERM ends it.
    let mut child = spawn_sh("read line", "sandbox-sb1");
    let stopped = ops::stop_vm(&running(&state, child.id()), Duration::from_secs(5)).unwrap();
    assert_eq!(stopped.lifecycle, Lifecycle::Stopped);
    assert!(!s.dir("sb1").exists());
    assert!(child.wait().unwrap().code().is_none(), "killed by a signal");

    // SIGTERM ignored: SIGKILL after the stop timeout.
    let state = s.create("sb2");
    let mut child = spawn_sh("trap '' TERM; exec sleep 30", "sandbox-sb2");
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    ops::stop_vm(&running(&state, child.id()), Duration::from_millis(300)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(!s.dir("sb2").exists());
}

#[test]
fn a_recorded_pid_with_another_start_time_is_never_signalled() {
    let s = Setup::new("exit 1");
    let state = s.create("sb1");
    let mut child = spawn_sh("read line", "sandbox-sb1");
    let mut stale = running(&state, child.id());
    stale.start_time = stale.start_time.map(|t| t + 1);
    assert_eq!(ops::vm_status(&stale), "dead");
    ops::stop_vm(&stale, Duration::from_millis(100)).unwrap();
    assert!(child.try_wait().unwrap().is_none(), "a process that is not the VM's was signalled");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_dir_with_a_live_qemu_is_busy() {
    let s = Setup::new("exit 1");
    s.create("sb1");
    let mut child = spawn_sh("read line", "sandbox-sb1");
    std::fs::write(s.dir("sb1").join("qemu.pid"), format!("{}\n", child.id())).unwrap();
    let e = vm::create_vm(&s.config, "sb1", &s.hv_config()).unwrap_err();
    assert!(matches!(e, QemuError::Op(OpError::AlreadyRunning { .. })), "{e:?}");
    assert!(e.to_string().contains(&child.id().to_string()));
    // The same live process in the pid file of a VM that was never started: stop ends it.
    let state = VmState::decode(&s.create_blob_for_existing("sb1")).unwrap();
    ops::stop_vm(&state, Duration::from_secs(5)).unwrap();
    assert!(child.wait().unwrap().code().is_none());
    assert!(!s.dir("sb1").exists());
}

impl Setup {
    /// A created-state blob for a VM directory that already exists (as a host would hold).
    fn create_blob_for_existing(&self, id: &str) -> Vec<u8> {
        let dir: &Path = &self.dir(id);
        let fields = QemuFields { accel: crate::accel::Accel::Tcg, agent_ports: 1, vsock_cid: None, template: None, incoming: None };
        let state = VmState::created(id, dir.to_owned(), vec!["/bin/false".into()], fields);
        state.encode()
    }
}
