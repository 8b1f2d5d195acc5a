//! Tests of `hypervisor_kvm::vm` and of the shared operations over `hypervisor_kvm::control`
//! that need no KVM: `fake-vmm` (src/bin/fake-vmm.rs), a test double of the `vmm` that speaks
//! the same control API types (it daemonizes, writes the pid file and answers the API, but
//! runs no VM), drives the start, pause/resume, stop escalation, failure and dead-VM paths.

use hypervisor_kvm::config::{KvmConfig, Network};
use hypervisor_kvm::control::ApiError;
use hypervisor_kvm::error::KvmError;
use hypervisor_kvm::layout::VmDir;
use hypervisor_kvm::state::{Lifecycle, VmState};
use hypervisor_kvm::vm::{self, VmArgs};
use plugin_api::hypervisor::{DiskConfig, HypervisorConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use hypervisor_framework::ops::{self, OpError};
use hypervisor_framework::process;
use hypervisor_framework::spec::{DiskSpec, VmSpec};
use vmm_api::{Client, Request, RunState};

/// The test double of the vmm, built with this test.
const FAKE_VMM: &str = env!("CARGO_BIN_EXE_fake-vmm");

struct Setup {
    tmp: tempfile::TempDir,
    config: KvmConfig,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let vmm = Path::new(FAKE_VMM);
        std::fs::write(tmp.path().join("vmlinux"), b"\x7fELF fake").unwrap();
        let json =
            serde_json::json!({ "vmm": vmm, "run_dir": tmp.path().join("run"), "agent_ports": 1 });
        let config = KvmConfig::parse(json.to_string().as_bytes()).unwrap();
        Setup { tmp, config }
    }

    /// A created VM whose kernel parameters steer the fake (`fake.fail`, `fake.noapi`, ...).
    fn create(&self, id: &str, params: &str) -> VmState {
        let hv = HypervisorConfig {
            kernel_params: params.into(),
            console_log: Some(self.tmp.path().join("console.log")),
            ..hypervisor_framework::testing::hypervisor_config(self.tmp.path().join("vmlinux"))
        };
        vm::create_vm(&self.config, id, &hv).unwrap()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.tmp.path().join("run").join(id)
    }
}

/// Stops whatever a failed assertion may have left running.
struct Cleanup(VmState);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = ops::stop_vm(&self.0, Duration::from_millis(500));
    }
}

#[test]
fn a_vm_through_its_life() {
    let s = Setup::new();
    let created = s.create("sb1", "");
    let running = ops::start_vm(&created).unwrap();
    let _cleanup = Cleanup(running.clone());
    let (pid, start) = running.process().unwrap();
    assert!(process::is_alive(pid, start));
    assert_eq!(running.lifecycle, Lifecycle::Running);
    assert_eq!(
        ops::vm_status(&running),
        "running",
        "start_vm started the paused vmm"
    );
    let mode = std::fs::metadata(s.dir("sb1").join("vmm.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let paused = ops::pause_vm(&running).unwrap();
    assert_eq!(
        (paused.lifecycle, ops::vm_status(&paused)),
        (Lifecycle::Paused, "paused")
    );
    let e = ops::pause_vm(&paused).unwrap_err();
    assert!(
        e.to_string().contains("cannot pause (it is not running)"),
        "{e}"
    );
    let resumed = ops::resume_vm(&paused).unwrap();
    assert_eq!(ops::vm_status(&resumed), "running");

    // Another create or start of the same VM finds the live vmm.
    let e = ops::start_vm(&created).unwrap_err();
    assert!(
        matches!(e, OpError::AlreadyRunning { pid: p, .. } if p == pid),
        "{e:?}"
    );
    let e = vm::create_vm(
        &s.config,
        "sb1",
        &HypervisorConfig {
            kernel: s.tmp.path().join("vmlinux"),
            ..base()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, KvmError::Op(OpError::AlreadyRunning { .. })),
        "{e:?}"
    );

    let stopped = ops::stop_vm(&resumed, Duration::from_secs(5)).unwrap();
    assert_eq!(stopped.lifecycle, Lifecycle::Stopped);
    assert!(!process::is_alive(pid, start));
    assert!(!s.dir("sb1").exists());
    assert!(
        s.tmp.path().join("console.log").parent().unwrap().exists(),
        "the console log's directory stays"
    );
}

fn base() -> HypervisorConfig {
    hypervisor_framework::testing::hypervisor_config(PathBuf::new())
}

#[test]
fn a_failing_start_carries_the_vmm_log() {
    let s = Setup::new();
    let e = ops::start_vm(&s.create("sb1", "fake.fail")).unwrap_err();
    assert!(matches!(e, OpError::StartFailed { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("no PVH entry note")
            && text.contains("sb1")
            && text.contains("exit status: 1"),
        "{text}"
    );
    let log = std::fs::read_to_string(s.dir("sb1").join("vmm.log")).unwrap();
    assert!(log.contains("no PVH entry note"), "{log}");
}

#[test]
fn a_start_without_an_api_fails_and_kills_what_it_started() {
    let s = Setup::new();
    let e = ops::start_vm(&s.create("sb1", "fake.noapi")).unwrap_err();
    let text = error_report::chain(&e);
    assert!(
        matches!(
            e,
            OpError::Control {
                source: ApiError { op: Request::State, .. },
                ..
            }
        ) && text.contains("api.sock"),
        "{text}"
    );
    let pid = process::read_pidfile(&s.dir("sb1").join("vmm.pid")).unwrap();
    assert!(process::wait_gone(
        pid,
        process::stat(pid).map_or(0, |st| st.start_time),
        Duration::from_secs(5)
    ));
    let stat = process::stat(pid);
    assert!(
        stat.is_none_or(|st| st.state == 'Z'),
        "the fake vmm {pid} was left running: {stat:?}"
    );
}

#[test]
fn a_vmm_that_went_away_is_dead_and_stop_still_cleans_up() {
    let s = Setup::new();
    let running = ops::start_vm(&s.create("sb1", "")).unwrap();
    let (pid, start) = running.process().unwrap();
    // The guest shut down: the vmm exits by itself.
    let client = Client::new(VmDir::new(s.dir("sb1")).control_socket(), Duration::from_secs(5));
    assert_eq!(client.run_state(Request::Shutdown).unwrap(), RunState::Stopping);
    assert!(process::wait_gone(pid, start, Duration::from_secs(5)));
    assert_eq!(ops::vm_status(&running), "dead");
    let e = ops::pause_vm(&running).unwrap_err();
    assert!(e.to_string().contains("sb1 is dead"), "{e}");
    // What the vmm said last is kept for the log (stop_vm logs it before the directory goes),
    // at most 4 KiB of it, from a line start.
    let log = s.dir("sb1").join("vmm.log");
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&"filler line\n".repeat(1000));
    text.push_str("vmm: KVM_CREATE_VM failed: out of memory\n");
    std::fs::write(&log, text).unwrap();
    let tail = ops::vmm_log_tail(&running).expect("the vmm log's tail");
    assert!(tail.ends_with("vmm: KVM_CREATE_VM failed: out of memory") && tail.len() <= 4096 && tail.starts_with("filler line"), "{tail}");
    ops::stop_vm(&running, Duration::from_secs(1)).unwrap();
    assert!(!s.dir("sb1").exists());
}

#[test]
fn stop_kills_a_vmm_that_does_not_quit() {
    let s = Setup::new();
    let running = ops::start_vm(&s.create("sb1", "fake.deaf")).unwrap();
    let _cleanup = Cleanup(running.clone());
    let (pid, start) = running.process().unwrap();
    let began = std::time::Instant::now();
    ops::stop_vm(&running, Duration::from_millis(300)).unwrap();
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert!(!process::is_alive(pid, start));
    assert!(!s.dir("sb1").exists());
}

#[test]
fn a_recorded_pid_with_another_start_time_is_never_signalled() {
    let s = Setup::new();
    let running = ops::start_vm(&s.create("sb1", "")).unwrap();
    let _cleanup = Cleanup(running.clone());
    let (pid, start) = running.process().unwrap();
    let stale = VmState {
        start_time: Some(start + 1),
        ..running.clone()
    };
    assert_eq!(ops::vm_status(&stale), "dead");
    // Stopping the stale record must not reach the live vmm (its API socket goes with the dir).
    ops::stop_vm(&stale, Duration::from_millis(100)).unwrap();
    assert!(
        process::is_alive(pid, start),
        "a process that is not the VM's was signalled"
    );
    process::signal("fake-vmm", pid, start, libc::SIGKILL).unwrap();
    assert!(process::wait_gone(pid, start, Duration::from_secs(5)));
}

#[test]
fn the_vmm_command_line() {
    let spec = VmSpec {
        kernel: "/img/vmlinux".into(),
        initrd: Some("/img/initramfs.img".into()),
        kernel_params: "agent.log=debug".into(),
        vcpus: 2,
        memory_mib: 512,
        console_log: Some("/logs/console.log".into()),
        disks: vec![
            DiskSpec {
                name: "rootfs".into(),
                path: "/img/root.ext4".into(),
                read_only: true,
            },
            DiskSpec {
                name: "data".into(),
                path: "/img/data.img".into(),
                read_only: false,
            },
        ],
        memory_file: None,
    };
    let dir = VmDir::new("/run/k/sb1");
    let tap = Network::Tap("tap0".into());
    let args = VmArgs {
        vmm: "/usr/bin/vmm".as_ref(),
        dir: &dir,
        agent_ports: 2,
        vsock: true,
        network: &tap,
        spec: &spec,
        restore: None,
    };
    let a = vm::build(&args);
    let has = |pair: [&str; 2]| a.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
    assert_eq!(a[0], "/usr/bin/vmm");
    assert!(has(["--kernel", "/img/vmlinux"]) && has(["--initrd", "/img/initramfs.img"]));
    assert!(has([
        "--cmdline",
        "console=ttyS0 panic=-1 quiet agent.channels=vsock:1024,serial:agent.0,serial:agent.1 reboot=k pci=off agent.log=debug"
    ]));
    assert!(has(["--memory-mib", "512"]) && has(["--vcpus", "2"]));
    assert!(has(["--console-log", "/logs/console.log"]));
    assert!(has(["--api-socket", "/run/k/sb1/api.sock"]) && a.iter().any(|x| x == "--paused"));
    assert!(
        has(["--disk", "path=/img/root.ext4,ro=on,id=rootfs"])
            && has(["--disk", "path=/img/data.img,ro=off,id=data"])
    );
    assert!(has(["--vsock", "cid=3,socket=/run/k/sb1/vsock.sock"]));
    assert!(has([
        "--serial-port",
        "name=agent.0,socket=/run/k/sb1/agent-0.sock"
    ]));
    assert!(has([
        "--serial-port",
        "name=agent.1,socket=/run/k/sb1/agent-1.sock"
    ]));
    assert!(has(["--net", "tap=tap0"]));
    assert!(a.iter().any(|x| x == "--daemonize") && has(["--pid-file", "/run/k/sb1/vmm.pid"]));

    let bare = VmSpec {
        initrd: None,
        console_log: None,
        kernel_params: String::new(),
        disks: vec![],
        ..spec.clone()
    };
    let none = Network::None;
    let a = vm::build(&VmArgs {
        vsock: false,
        network: &none,
        agent_ports: 1,
        spec: &bare,
        ..args
    });
    let has = |pair: [&str; 2]| a.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
    assert!(has(["--console-log", "/dev/null"]));
    assert!(has([
        "--cmdline",
        "console=ttyS0 panic=-1 quiet agent.channels=serial:agent.0 reboot=k pci=off"
    ]));
    assert!(!a
        .iter()
        .any(|x| ["--initrd", "--disk", "--vsock", "--net"].contains(&x.as_str())));
}

#[test]
fn disks_from_the_config_become_disk_flags() {
    let s = Setup::new();
    std::fs::write(s.tmp.path().join("root.img"), b"r").unwrap();
    let hv = HypervisorConfig {
        kernel: s.tmp.path().join("vmlinux"),
        disks: vec![DiskConfig {
            name: "rootfs".into(),
            path: s.tmp.path().join("root.img"),
            read_only: false,
        }],
        ..base()
    };
    let state = vm::create_vm(&s.config, "sb1", &hv).unwrap();
    let want = format!(
        "path={},ro=off,id=rootfs",
        std::fs::canonicalize(s.tmp.path().join("root.img"))
            .unwrap()
            .display()
    );
    assert!(
        state
            .argv
            .windows(2)
            .any(|w| w[0] == "--disk" && w[1] == want),
        "{:?}",
        state.argv
    );
    ops::stop_vm(&state, Duration::from_secs(1)).unwrap();
}
