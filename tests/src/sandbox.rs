//! A runtime for the Sandbox API tests: a config file in a private temporary directory
//! (filesystem metadata store, the QEMU or the KVM hypervisor plugin, state and VM directories
//! inside it) that a second process can load too, and checks that a deleted sandbox left
//! nothing behind.

use crate::qemu::GuestImage;
use runtime_core::sandbox::{ContainerConfig, DiskConfig, OutputReader, ProcessConfig, RootfsConfig, Runtime, SandboxConfig};
use std::time::Duration;
use std::path::{Path, PathBuf};

/// A runtime and the directory holding its config, store and state.
pub struct TestRuntime {
    /// The runtime (dropped first: closing its factory removes a work directory in `dir`).
    pub runtime: Runtime,
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// Its hypervisor plugin.
    pub hypervisor: Hypervisor,
}

/// The hypervisor plugin a test runs on: the end-to-end suite runs once on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    /// `qemu` (TCG here), booting the bzImage.
    Qemu,
    /// `kvm`, our vmm, booting the ELF vmlinux through PVH.
    Kvm,
}

impl Hypervisor {
    /// The guest image for this hypervisor's tests, or `None` after saying why they skip.
    pub fn image_or_skip(self) -> Option<GuestImage> {
        match self {
            Hypervisor::Qemu => crate::qemu::image_or_skip(),
            Hypervisor::Kvm => crate::kvm::image_or_skip(),
        }
    }
}

/// A tap name of at most 15 characters, unique to the runtime directory `dir` (the vmm
/// creates the tap and it goes away with the vmm), so that the guest has an `eth0` as it has
/// under QEMU's user networking.
fn tap_name(dir: &Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tail: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("sbt{}", &tail[tail.len().saturating_sub(12)..])
}

/// Writes the config for `image` under `dir`, on the QEMU plugin.
pub fn write_config(dir: &Path, image: &GuestImage) -> PathBuf {
    write_config_for(dir, image, Hypervisor::Qemu)
}

/// Writes the config for `image` under `dir`, on hypervisor `hv`.
pub fn write_config_for(dir: &Path, image: &GuestImage, hv: Hypervisor) -> PathBuf {
    write_config_full(dir, image, hv, "", true)
}

/// [`write_config_for`] with `extra` (whole TOML tables, such as `[factory]`) appended;
/// without `network`, the `kvm` plugin's VMs get no NIC (its
/// `tap:<name>` is one tap, so only one VM at a time can have it: a factory's pool and the
/// sandboxes it serves run several VMs at once).
pub fn write_config_full(dir: &Path, image: &GuestImage, hv: Hypervisor, extra: &str, network: bool) -> PathBuf {
    let config = dir.join("config.toml");
    let hypervisor = match hv {
        Hypervisor::Qemu => format!("plugin = \"qemu\"\nkernel = {:?}", image.vmlinuz),
        Hypervisor::Kvm => format!(
            "plugin = \"kvm\"\nkernel = {:?}\nvmm = {:?}\nnetwork = \"{}\"",
            image.vmlinux,
            crate::kvm::vmm_binary(),
            if network { format!("tap:{}", tap_name(dir)) } else { "none".into() }
        ),
    };
    let text = format!(
        "[storage]\nplugin = \"fs\"\npath = \"metadata\"\n\n\
         [hypervisor]\n{hypervisor}\ninitrd = {:?}\nmemory_mib = 512\nrun_dir = {:?}\n\n\
         [runtime]\nstate_dir = \"state\"\nboot_timeout_s = 300\nstop_timeout_s = 5\n\n{extra}",
        image.initramfs,
        dir.join("vms"),
    );
    std::fs::write(&config, text).expect("writing the config");
    config
}

impl TestRuntime {
    /// A fresh runtime for `image` on the QEMU plugin.
    pub fn new(image: &GuestImage) -> TestRuntime {
        TestRuntime::on(image, Hypervisor::Qemu)
    }

    /// A fresh runtime for `image` on hypervisor `hv`.
    pub fn on(image: &GuestImage, hv: Hypervisor) -> TestRuntime {
        let dir = crate::private_dir();
        let config = write_config_for(dir.path(), image, hv);
        TestRuntime::open(dir, config, hv)
    }

    /// A fresh runtime for `image` on hypervisor `hv`, its config ending with `extra`, its
    /// VMs without a NIC on `kvm` (see [`write_config_full`]): for VM factories.
    pub fn with(image: &GuestImage, hv: Hypervisor, extra: &str) -> TestRuntime {
        let dir = crate::private_dir();
        let config = write_config_full(dir.path(), image, hv, extra, false);
        TestRuntime::open(dir, config, hv)
    }

    fn open(dir: tempfile::TempDir, config: PathBuf, hv: Hypervisor) -> TestRuntime {
        crate::log_warnings();
        let runtime = Runtime::from_file(&config).unwrap_or_else(|e| panic!("runtime from {}: {e}", config.display()));
        TestRuntime { dir, config, runtime, hypervisor: hv }
    }

    /// The VM directory of sandbox `id` (the plugins' `run_dir` is `<dir>/vms`).
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("vms").join(id)
    }

    /// The pid of the process running sandbox `id`'s VM (QEMU or vmm): the live process
    /// whose arguments name a file in its VM directory.
    pub fn vm_pid(&self, id: &str) -> Option<i32> {
        let wanted = format!("{}/", self.vm_dir(id).display());
        live_processes().into_iter().find(|(_, args)| args.iter().any(|a| a.contains(&wanted))).map(|(pid, _)| pid)
    }

    /// Freezes sandbox `id`'s vCPUs behind the runtime's back (QMP `stop`, or the vmm API's
    /// `pause`): the VM lives, its agent cannot answer.
    pub fn freeze_behind_the_runtime(&self, id: &str) {
        match self.hypervisor {
            Hypervisor::Qemu => {
                qmp(self, id, "stop").expect("QMP stop");
            }
            Hypervisor::Kvm => {
                let socket = self.vm_dir(id).join("api.sock");
                vmm_api::Client::new(socket, std::time::Duration::from_secs(10)).run_state(vmm_api::Request::Pause).expect("vmm API pause");
            }
        }
    }

    /// Asserts that nothing of sandbox `id` remains: no record, no state or VM directory, no
    /// lock file, no QEMU process.
    pub fn assert_nothing_left(&self, id: &str) {
        let state = self.dir.path().join("state");
        for path in [state.join("sandboxes").join(id), state.join("locks").join(format!("{id}.lock")), self.dir.path().join("vms").join(id)] {
            assert!(!path.exists(), "{} is left behind", path.display());
        }
        let records: Vec<String> = std::fs::read_dir(self.dir.path().join("metadata"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert!(!records.iter().any(|r| r.contains(id)), "records left: {records:?}");
        if let Some(pid) = self.vm_pid(id) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            panic!("the VM of sandbox {id} still runs: {stat}");
        }
    }
}

impl Drop for TestRuntime {
    /// Kills the VMs a failed test left running (their QEMU or vmm runs from this runtime's
    /// directory), so one failure does not leave processes behind.
    fn drop(&mut self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let vmm = |a: &String| a.contains("qemu-system") || a.ends_with("/vmm");
        let ours = |args: &Vec<String>| args.first().is_some_and(vmm) && args.iter().any(|a| a.contains(&dir));
        for (pid, _) in live_processes().into_iter().filter(|(_, args)| ours(args)) {
            // SAFETY: kill(2) with plain integers, on a QEMU this runtime started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Sends one QMP command to sandbox `id`'s QEMU behind the runtime's back, with the QEMU
/// plugin's own client; returns QEMU's `return` value.
pub fn qmp(t: &TestRuntime, id: &str, command: &str) -> Result<serde_json::Value, hypervisor_qemu::qmp::QmpError> {
    let dir = t.dir.path().join("vms").join(id);
    hypervisor_qemu::qmp::execute(&dir.join("qmp.sock"), &dir.join("qmp.lock"), command, std::time::Duration::from_secs(10))
}

/// Every process that has not exited (zombies excluded), with its arguments.
fn live_processes() -> Vec<(i32, Vec<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            if stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z')) {
                return None;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            Some((pid, args))
        })
        .collect()
}

/// The pid of the QEMU process running sandbox `id` (`-name sandbox-<id>`), if any.
pub fn qemu_pid(id: &str) -> Option<i32> {
    let wanted = format!("sandbox-{id}");
    live_processes().into_iter().find(|(_, args)| args.contains(&wanted)).map(|(pid, _)| pid)
}

/// A busybox container running `script` with `sh -c`.
pub fn container(id: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        rootfs: RootfsConfig::disk("rootfs"),
        process: Some(ProcessConfig::new(["sh", "-c", script])),
        hostname: None,
        resources: None,
        oci_spec: None,
    }
}

/// A sandbox with the image's busybox rootfs as disk `rootfs` and `containers`.
pub fn sandbox(id: &str, image: &GuestImage, containers: Vec<ContainerConfig>) -> SandboxConfig {
    SandboxConfig {
        id: id.into(),
        vcpus: None,
        memory_mib: None,
        disks: vec![DiskConfig { name: "rootfs".into(), path: image.rootfs.clone(), read_only: true }],
        containers,
        annotations: Default::default(),
    }
}

/// Reads `reader` until `needle` appears (within 60 s); returns everything read.
pub async fn read_until(reader: &mut OutputReader, needle: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(needle) {
            match reader.next_chunk().await.expect("reading output") {
                Some(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.unwrap_or_else(|_| panic!("no {needle:?} in {seen:?} within 60 s"));
    assert!(seen.contains(needle), "output ended without {needle:?}: {seen:?}");
    seen
}


/// Runs each async test function `$name(hv)` once per hypervisor plugin, as `$name::qemu`
/// (QEMU/TCG, tier 3) and `$name::kvm` (our vmm: a `/dev/kvm` that boots Linux, here the
/// nested L1 of `cargo xtask nested-test`, tier 4).
#[macro_export]
macro_rules! on_both_hypervisors {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn qemu() {
                super::$name($crate::sandbox::Hypervisor::Qemu).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn kvm() {
                super::$name($crate::sandbox::Hypervisor::Kvm).await
            }
        }
    )*};
}
