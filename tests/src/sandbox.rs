//! A runtime for the Sandbox API tests: a config file in a private temporary directory
//! (filesystem metadata store, QEMU hypervisor, state and VM directories inside it) that a
//! second process can load too, and checks that a deleted sandbox left nothing behind.

use crate::qemu::GuestImage;
use runtime_core::sandbox::{ContainerConfig, DiskConfig, ProcessConfig, RootfsConfig, Runtime, SandboxConfig};
use std::path::{Path, PathBuf};

/// A runtime and the directory holding its config, store and state.
pub struct TestRuntime {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The runtime.
    pub runtime: Runtime,
}

/// Writes the config for `image` under `dir`.
pub fn write_config(dir: &Path, image: &GuestImage) -> PathBuf {
    let config = dir.join("config.toml");
    let text = format!(
        "[storage]\nplugin = \"fs\"\npath = \"metadata\"\n\n\
         [hypervisor]\nplugin = \"qemu\"\nkernel = {:?}\ninitrd = {:?}\nmemory_mib = 512\nrun_dir = {:?}\n\n\
         [runtime]\nstate_dir = \"state\"\nboot_timeout_s = 300\nstop_timeout_s = 5\n",
        image.vmlinuz,
        image.initramfs,
        dir.join("vms"),
    );
    std::fs::write(&config, text).expect("writing the config");
    config
}

impl TestRuntime {
    /// A fresh runtime for `image`.
    pub fn new(image: &GuestImage) -> TestRuntime {
        let dir = crate::private_dir();
        let config = write_config(dir.path(), image);
        let runtime = Runtime::from_file(&config).unwrap_or_else(|e| panic!("runtime from {}: {e}", config.display()));
        TestRuntime { dir, config, runtime }
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
        if let Some(pid) = qemu_pid(id) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            panic!("QEMU of sandbox {id} still runs: {stat}");
        }
    }
}

impl Drop for TestRuntime {
    /// Kills the VMs a failed test left running (their QEMU runs from this runtime's
    /// directory), so one failure does not leave processes behind.
    fn drop(&mut self) {
        let needle = self.dir.path().to_string_lossy().into_owned();
        for pid in processes_mentioning(&needle) {
            // SAFETY: kill(2) with plain integers, on a QEMU this runtime started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            (text.starts_with("/") && text.contains("qemu-system") && text.contains(needle)).then_some(pid)
        })
        .collect()
}

/// Sends one QMP command to sandbox `id`'s QEMU behind the runtime's back (the test's own
/// client: greeting, `qmp_capabilities`, the command); returns the reply line.
pub fn qmp(t: &TestRuntime, id: &str, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let socket = t.dir.path().join("vms").join(id).join("qmp.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    let mut reply = |stream: &mut std::os::unix::net::UnixStream, json: &str| {
        stream.write_all(json.as_bytes()).expect("QMP write");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("QMP read");
            if line.contains("\"return\"") || line.contains("\"error\"") || line.is_empty() {
                return line.clone();
            }
        }
    };
    reply(&mut stream, "{\"execute\": \"qmp_capabilities\"}\n");
    reply(&mut stream, &format!("{{\"execute\": \"{command}\"}}\n"))
}

/// The pid of the QEMU process running sandbox `id` (`-name sandbox-<id>`), if any.
pub fn qemu_pid(id: &str) -> Option<i32> {
    let wanted = format!("sandbox-{id}");
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z')) {
            continue;
        }
        if cmdline.split(|b| *b == 0).any(|arg| arg == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
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
