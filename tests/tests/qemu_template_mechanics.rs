//! QEMU's template mechanics, checked on this machine's QEMU under TCG by hand (QMP and argv
//! written here, not through our plugin): the recipe the `template` VM factory (issue 16) is to
//! use, as Kata 1.x did (docs/FACTORY-SHIMV2-HOTPLUG.md's facts). A VM boots with its RAM in a
//! `memory-backend-file` with `share=on` on a tmpfs; once its agent answered, it is paused and
//! its device state saved with `x-ignore-shared` (the RAM stays in the file, out of the
//! stream); then clones start with the same file `share=off` (copy-on-write) and `-incoming
//! defer`, restore the state with `migrate-incoming`, continue, and their agent answers. Also
//! shows what the factory will have to undo in each clone: the same agent uptime (clock) in
//! every clone, as their RNG state is the same.

use hypervisor_qemu::qmp;
use integration_tests::qemu::image_or_skip;
use runtime_core::agent::{AgentClient, Dialer, YamuxSession};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const MIB: u64 = 512;

/// A QEMU process, killed if the test ends before it quits.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn qemu(dir: &Path, mem: &Path, share: bool, incoming: bool, image: &integration_tests::qemu::GuestImage) -> Qemu {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "pc", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", &MIB.to_string()]);
    c.arg("-object").arg(format!("memory-backend-file,id=ram,size={MIB}M,mem-path={},share={}", mem.display(), if share { "on" } else { "off" }));
    c.args(["-machine", "memory-backend=ram"]);
    c.args(["-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults"]);
    c.arg("-kernel").arg(&image.vmlinuz).arg("-initrd").arg(&image.initramfs);
    c.args(["-append", "console=ttyS0 panic=-1 quiet agent.channels=serial:agent.0"]);
    c.arg("-serial").arg(format!("file:{}", dir.join("console.log").display()));
    c.arg("-qmp").arg(format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()));
    c.args(["-device", "virtio-serial-pci"]);
    c.arg("-chardev").arg(format!("socket,id=agent,path={},server=on,wait=off", dir.join("agent.sock").display()));
    c.args(["-device", "virtserialport,chardev=agent,name=agent.0"]);
    if incoming {
        c.args(["-incoming", "defer"]);
    }
    Qemu(c.spawn().expect("qemu"))
}

async fn connect(dir: &Path, timeout: Duration) -> AgentClient {
    let socket = dir.join("agent.sock");
    let began = Instant::now();
    loop {
        if let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
            let session = YamuxSession::client(stream, "spike");
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(5), AgentClient::connect(Dialer::Yamux(session))).await {
                return c;
            }
        }
        assert!(began.elapsed() < timeout, "agent not ready\n{}", std::fs::read_to_string(dir.join("console.log")).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn qmp_run(dir: &Path, cmd: &str, args: Option<serde_json::Value>) -> serde_json::Value {
    let mut s = qmp::connect(&dir.join("qmp.sock"), &dir.join("qmp.lock"), Duration::from_secs(10)).expect("qmp");
    s.execute(cmd, args).unwrap_or_else(|e| panic!("{cmd}: {e:?}"))
}

fn wait_migration(dir: &Path, what: &str) {
    let began = Instant::now();
    loop {
        let v = qmp_run(dir, "query-migrate", None);
        let status = v["status"].as_str().unwrap_or("").to_owned();
        if status == "completed" {
            eprintln!("{what}: completed after {:?}: {v}", began.elapsed());
            return;
        }
        assert!(status != "failed", "{what} failed: {v}");
        assert!(began.elapsed() < Duration::from_secs(60), "{what}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_vm_saved_with_shared_memory_restores_into_clones_whose_agent_answers() {
    let Some(image) = image_or_skip() else { return };
    let tpl = tempfile::tempdir_in("/dev/shm").expect("tmp");
    let mem = tpl.path().join("memory");
    let state = tpl.path().join("state");
    assert!(!state.display().to_string().contains(['\'', ' ']), "the state path goes into a shell command");
    let t0 = tempfile::tempdir().expect("tmp");
    let template = qemu(t0.path(), &mem, true, false, &image);
    let began = Instant::now();
    let agent = connect(t0.path(), Duration::from_secs(120)).await;
    eprintln!("template agent ready after {:?}", began.elapsed());
    agent.health().await.expect("health");
    drop(agent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    qmp_run(t0.path(), "stop", None);
    qmp_run(t0.path(), "migrate-set-capabilities", Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})));
    qmp_run(t0.path(), "migrate", Some(json!({"uri": format!("exec:cat > {}", state.display())})));
    wait_migration(t0.path(), "save");
    let _ = qmp_run(t0.path(), "quit", None);
    drop(template);
    eprintln!("state file {} bytes; memory file {} bytes", std::fs::metadata(&state).unwrap().len(), std::fs::metadata(&mem).unwrap().len());

    let mut uptimes = Vec::new();
    for n in 0..3 {
        let d = tempfile::tempdir().expect("tmp");
        let began = Instant::now();
        let clone = qemu(d.path(), &mem, false, true, &image);
        while !d.path().join("qmp.sock").exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        qmp_run(d.path(), "migrate-set-capabilities", Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})));
        qmp_run(d.path(), "migrate-incoming", Some(json!({"uri": format!("exec:cat {}", state.display())})));
        wait_migration(d.path(), "restore");
        qmp_run(d.path(), "cont", None);
        let agent = connect(d.path(), Duration::from_secs(30)).await;
        let h = agent.health().await.expect("health after restore");
        eprintln!("clone {n}: agent answered after {:?}: {h:?}", began.elapsed());
        assert_eq!(h.status(), agent_protocol::pb::health_response::Status::Serving);
        uptimes.push(h.uptime_ms);
        let _ = qmp_run(d.path(), "quit", None);
        drop(clone);
    }
    // Each clone resumes the template's guest: its monotonic clock is the template's (plus
    // the moments since), so the factory must set the clock (and reseed the RNG) per clone.
    assert!(uptimes.iter().all(|u| u.abs_diff(uptimes[0]) < 1000), "the clones' agent uptimes: {uptimes:?}");
}
