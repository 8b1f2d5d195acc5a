//! A QEMU (TCG) guest for the end-to-end tests, booted from the image `cargo xtask guest`
//! builds, with the agent reached over a virtio-serial port and Yamux. (The QEMU hypervisor
//! plugin is issue #4; this is a test helper only.)

use runtime_core::agent::{AgentClient, Dialer, YamuxSession};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest image paths, from `<target>/guest/manifest.json`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GuestImage {
    /// bzImage.
    pub vmlinuz: PathBuf,
    /// ELF kernel (PVH).
    pub vmlinux: PathBuf,
    /// The initramfs with the agent.
    pub initramfs: PathBuf,
    /// busybox ext4 rootfs.
    pub rootfs: PathBuf,
}

/// The guest image, if it was built.
pub fn guest_image() -> Option<GuestImage> {
    let manifest = crate::profile_dir().parent()?.join("guest/manifest.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest).ok()?).ok()?;
    serde_json::from_value(json.get("image")?.clone()).ok()
}

/// The guest image for a tier-3 test, or `None` after saying why the test skips (a missing
/// QEMU or image; under SANDBOX_TESTS_STRICT=1 that fails instead).
pub fn image_or_skip() -> Option<GuestImage> {
    if crate::skip_unless(qemu_available(), "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)") {
        return None;
    }
    let image = guest_image();
    if crate::skip_unless(image.is_some(), "no guest image: run `cargo xtask guest`") {
        return None;
    }
    image
}

/// Whether QEMU is installed.
pub fn qemu_available() -> bool {
    Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// A running guest; killed when dropped.
pub struct Guest {
    child: Child,
    dir: tempfile::TempDir,
    /// When QEMU was spawned.
    pub spawned: Instant,
}

/// Memory of the test guests.
pub const MEMORY_MIB: u32 = 512;

impl Guest {
    /// Boots the image with its busybox rootfs (a private copy) as virtio-blk `/dev/vda`.
    pub fn boot(image: &GuestImage) -> Guest {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs.ext4");
        std::fs::copy(&image.rootfs, &rootfs).expect("copy rootfs");
        let log = std::fs::File::create(dir.path().join("qemu.log")).expect("qemu log");
        let spawned = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args(["-M", "pc", "-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &MEMORY_MIB.to_string()])
            .args(["-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults"])
            .arg("-kernel")
            .arg(&image.vmlinuz)
            .arg("-initrd")
            .arg(&image.initramfs)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-serial")
            .arg(format!("file:{}", dir.path().join("console.log").display()))
            .args(["-device", "virtio-serial-pci"])
            .arg("-chardev")
            .arg(format!("socket,id=agent,path={},server=on,wait=off", dir.path().join("agent.sock").display()))
            .args(["-device", &format!("virtserialport,chardev=agent,name={}", agent_protocol::SERIAL_PORT_NAME)])
            .arg("-drive")
            .arg(format!("file={},if=none,id=rootfs,format=raw", rootfs.display()))
            .args(["-device", "virtio-blk-pci,drive=rootfs"])
            // A NIC (QEMU's user networking) for the agent's network calls: eth0 in the guest.
            .args(["-nic", "user,model=virtio-net-pci"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning qemu-system-x86_64");
        Guest { child, dir, spawned }
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects to the agent (waiting for it to come up), within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> AgentClient {
        let socket = self.dir.path().join("agent.sock");
        let attempt = async {
            loop {
                if let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
                    let session = YamuxSession::client(stream, &socket.display().to_string());
                    return AgentClient::connect(Dialer::Yamux(session)).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("agent did not answer: {e:?}\nconsole:\n{}", self.console()),
            Err(_) => panic!("agent not ready within {timeout:?}\nconsole:\n{}", self.console()),
        }
    }

    /// The guest's directory (sockets, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
