//! The vmm's devices seen from a real guest, beyond what the Sandbox API suite uses (that suite
//! already boots through the kvm plugin with virtio-blk, virtio-vsock, virtio-console and
//! virtio-net): a container whose rootfs is a host directory shared over virtio-fs by a real
//! virtiofsd, reached through the vhost-user frontend. Needs a `/dev/kvm` that boots Linux,
//! so here it runs in the nested L1 (`cargo xtask nested-test`); the test name carries `kvm`
//! for that tier's filter.

use integration_tests::agent::{cref, create, spawn_reader, wait};
use integration_tests::host_agent::busybox_tree;
use integration_tests::kvm::{self, Killed};
use integration_tests::oci;
use runtime_core::agent::{AgentClient, Dialer, YamuxSession};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// QEMU 7.2's virtiofsd (Debian package qemu-system-common).
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

async fn wait_for(path: &Path, what: &str) {
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not create {}", path.display());
}

async fn connect(socket: &Path, console: &Path) -> AgentClient {
    let attempt = async {
        loop {
            if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
                let session = YamuxSession::client(stream, &socket.display().to_string());
                return AgentClient::connect(Dialer::Yamux(session)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let console = || std::fs::read_to_string(console).unwrap_or_default();
    match tokio::time::timeout(Duration::from_secs(120), attempt).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("the agent did not answer: {e:?}\nconsole:\n{}", console()),
        Err(_) => panic!("the agent was not ready within 120 s\nconsole:\n{}", console()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kvm_container_rootfs_over_virtio_fs() {
    let Some(image) = kvm::image_or_skip() else { return };
    if integration_tests::skip_unless(Path::new(VIRTIOFSD).exists(), "no /usr/lib/qemu/virtiofsd (Debian package qemu-system-common)") {
        return;
    }
    let dir = integration_tests::private_dir();
    let shared: PathBuf = busybox_tree(&dir.path().join("shared"));
    std::fs::write(shared.join("etc/marker"), "shared over virtio-fs\n").expect("marker");
    let fs_socket = dir.path().join("virtiofsd.sock");
    let _virtiofsd = Killed(
        Command::new(VIRTIOFSD)
            .arg(format!("--socket-path={}", fs_socket.display()))
            .args(["-o", &format!("source={}", shared.display()), "-o", "cache=none", "-o", "sandbox=chroot"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning virtiofsd"),
    );
    wait_for(&fs_socket, "virtiofsd").await;

    let (agent_socket, console) = (dir.path().join("agent-0.sock"), dir.path().join("console.log"));
    let _vmm = Killed(
        Command::new(kvm::vmm_binary())
            .arg("--kernel")
            .arg(&image.vmlinux)
            .arg("--initrd")
            .arg(&image.initramfs)
            .args(["--cmdline", "console=ttyS0 panic=-1 quiet reboot=k pci=off agent.channels=serial:agent.0"])
            .args(["--memory-mib", "256", "--vcpus", "2"])
            .arg("--console-log")
            .arg(&console)
            .arg("--serial-port")
            .arg(format!("name=agent.0,socket={}", agent_socket.display()))
            .arg("--fs")
            .arg(format!("tag=rootfs,socket={}", fs_socket.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning the vmm"),
    );
    let agent = connect(&agent_socket, &console).await;
    let mut c = agent.raw();
    let rootfs = agent_protocol::pb::Storage { driver: "virtiofs".into(), source: "rootfs".into(), read_only: true, ..Default::default() };
    let spec = oci::spec(&["sh", "-c", "cat /etc/marker; ls /bin | grep -c ."], false);
    let console_text = || std::fs::read_to_string(&console).unwrap_or_default();
    create(&mut c, "fs", &spec, rootfs).await.unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", console_text()));
    let out = spawn_reader(&c, "fs", "", false);
    c.start_container(cref("fs")).await.expect("start");
    assert_eq!(wait(&mut c, "fs", "").await.expect("wait"), 0);
    let text = String::from_utf8(out.await.expect("reader").expect("output")).expect("utf-8");
    assert_eq!(text, "shared over virtio-fs\n15\n", "the container sees the host directory");
}
