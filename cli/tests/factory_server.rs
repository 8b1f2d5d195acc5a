//! The VM factory server through `sandboxctl` (tier 3, QEMU/TCG), as an operator uses it:
//! `factory init | status | destroy`, sandboxes taking pooled VMs from it, and its faults: a
//! second server on the socket, the server killed with SIGKILL (its pool's VMs are found and
//! stopped by `destroy`; the sandboxes it handed out keep running), a stale socket file, a
//! client that dies mid-hand-out (its VM is an orphan that `list` shows and `delete` stops).
//! A template factory served the same way: made by `init`, shown by `status`, cloned for a
//! sandbox, removed by `destroy`.

use hypervisor_framework::process::runs;
use integration_tests::qemu::image_or_skip;
use integration_tests::sandbox::write_config;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sandboxctl(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandboxctl")).arg("--config").arg(config).args(args).stdin(Stdio::null()).output().expect("running sandboxctl")
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = sandboxctl(config, args);
    assert!(out.status.success(), "sandboxctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(config: &Path, args: &[&str], needle: &str) {
    let out = sandboxctl(config, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "sandboxctl {args:?}: {err}");
    assert!(err.contains(needle) && !err.contains("panicked"), "sandboxctl {args:?}: {needle:?} not in {err}");
}

fn gone_within(pid: i64, time: Duration) -> bool {
    let began = Instant::now();
    while runs(pid as i32) {
        if began.elapsed() > time {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The pids of the pool's VMs, from `factory status --json`.
fn pool_pids(config: &Path) -> Vec<i64> {
    let status: serde_json::Value = serde_json::from_str(&ok(config, &["factory", "status", "--json"])).expect("JSON");
    status["vms"].as_array().expect("vms").iter().filter_map(|v| v["pid"].as_i64()).collect()
}

/// Waits until the pool has a VM again.
fn wait_for_pool(config: &Path) {
    let began = Instant::now();
    while pool_pids(config).is_empty() {
        assert!(began.elapsed() < Duration::from_secs(300), "the pool was not refilled");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs sandbox `web` in the background: container `c1` sleeps over the image's rootfs.
fn run_web(dir: &Path, config: &Path, image: &integration_tests::qemu::GuestImage) {
    let sandbox = dir.join("web.toml");
    std::fs::write(
        &sandbox,
        format!("id = 'web'\n[[disks]]\nname = 'rootfs'\npath = {:?}\n[[containers]]\nid = 'c1'\nrootfs = {{ disk = 'rootfs' }}\nprocess = {{ args = ['sleep', '1000'] }}\n", image.rootfs),
    )
    .expect("sandbox");
    ok(config, &["run", "-d", sandbox.to_str().expect("utf-8")]);
}

/// Kills, when dropped, every process whose command line names the test's directory (the
/// server, its pool's VMs, the sandbox's): a failed assertion leaves nothing running.
struct KillLeftovers(std::path::PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        let dir = self.0.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for pid in entries.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if pid != std::process::id() as i32 && String::from_utf8_lossy(&cmdline).contains(&dir) {
                // SAFETY: kill(2) on a process started for this test (its command line names the test's directory).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn the_factory_server_as_an_operator_uses_it() {
    let Some(image) = image_or_skip() else { return };
    let dir = integration_tests::private_dir();
    let _leftovers = KillLeftovers(dir.path().to_owned());
    let config = write_config(dir.path(), &image);
    let socket = dir.path().join("factory.sock");
    let base = std::fs::read_to_string(&config).expect("config");
    // Without a socket there is no server to start, and the error says what to add.
    std::fs::write(&config, format!("{base}[factory]\nplugin = \"cache\"\nsize = 1\n")).expect("config");
    refused(&config, &["factory", "init"], "table [factory]: no `server` socket");
    let factory = format!(
        "{base}[factory]\nplugin = \"cache\"\nsize = 1\nserver = {socket:?}\ndisks = [{{ name = \"rootfs\", path = {:?} }}]\n",
        image.rootfs
    );
    std::fs::write(&config, factory).expect("config");
    refused(&config, &["factory", "status"], &format!("no VM factory server answers on {}", socket.display()));

    // init starts the server in the background and waits for a full pool; a second one is refused.
    let said = ok(&config, &["factory", "init", "--wait"]);
    assert!(said.starts_with("factory server pid "), "{said}");
    let server: i64 = said.split_whitespace().nth(3).and_then(|p| p.parse().ok()).expect("the server's pid");
    refused(&config, &["factory", "init"], &format!("already runs on {} (pid {server})", socket.display()));
    refused(&config, &["factory", "serve"], &format!("already runs on {} (pid {server})", socket.display()));
    let table = ok(&config, &["factory", "status"]);
    assert!(table.starts_with(&format!("factory cache (size 1), server pid {server}")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("pool-") && l.contains(" ready ") && l.contains("running")), "{table}");
    let pooled = pool_pids(&config);
    assert_eq!(pooled.len(), 1, "a pool of one");

    // A sandbox takes the pooled VM (its VMM keeps running under the sandbox's directory).
    run_web(dir.path(), &config, &image);
    let copy: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("vms/web/vm-state.json")).expect("state copy")).expect("JSON");
    assert_eq!(copy["pid"].as_i64(), Some(pooled[0]), "the sandbox got the pooled VM");
    let hello = ok(&config, &["container", "exec", "web", "c1", "--", "echo", "from-pool"]);
    assert!(hello.contains("from-pool"), "{hello}");

    // The server killed with SIGKILL: the VMs of its pool are left running, the sandbox too.
    let began = Instant::now();
    let refilled = loop {
        let pids = pool_pids(&config);
        if !pids.is_empty() && !pids.contains(&pooled[0]) {
            break pids;
        }
        assert!(began.elapsed() < Duration::from_secs(300), "the pool was not refilled");
        std::thread::sleep(Duration::from_millis(250));
    };
    // SAFETY: kill(2) on the server this test started.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGKILL) }, 0);
    assert!(gone_within(server, Duration::from_secs(10)));
    assert!(refilled.iter().all(|p| runs(*p as i32)), "the pool's VMs outlive the server until destroy");
    assert!(socket.exists(), "a killed server leaves its socket");
    // destroy finds what the dead server left and stops it; the sandbox it handed out runs on.
    let said = ok(&config, &["factory", "destroy"]);
    assert!(said.contains("no factory server answers") && said.contains("stopped what 1 dead factory(ies) left"), "{said}");
    assert!(refilled.iter().all(|p| gone_within(*p, Duration::from_secs(30))), "the dead server's pool VMs were stopped");
    assert!(!socket.exists(), "destroy removes the stale socket");
    let hello = ok(&config, &["container", "exec", "web", "c1", "--", "echo", "still-here"]);
    assert!(hello.contains("still-here"), "{hello}");

    // A stale socket file does not stop the next server; destroy stops it and its pool.
    std::fs::write(&socket, "").expect("a stale socket file");
    let said = ok(&config, &["factory", "init", "--wait"]);
    let server: i64 = said.split_whitespace().nth(3).and_then(|p| p.parse().ok()).expect("the server's pid");
    // A client that dies mid-hand-out: it asked for a VM (the server moved it under the
    // sandbox's id) and never saved a record. The VM is not lost: it is an orphan that `list`
    // shows and `delete` stops.
    let runtime_config = runtime_core::config::RuntimeConfig::load(&config).expect("config");
    let section = runtime_config.hypervisor.as_ref().expect("[hypervisor]");
    let disks = runtime_config.factory.as_ref().expect("[factory]").disks.clone();
    let vm = runtime_core::factory::vm_config(section, None, None, disks, None);
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    let blob = tokio.block_on(runtime_core::factory::remote::Remote::new(&socket).new_vm("handed", &vm)).expect("a VM from the server");
    let handed = serde_json::from_slice::<serde_json::Value>(&blob).expect("JSON")["pid"].as_i64().expect("a pid");
    let list = ok(&config, &["list"]);
    assert!(list.lines().any(|l| l.starts_with("handed ") && l.contains(" orphan ")), "{list}");
    ok(&config, &["delete", "handed"]);
    assert!(gone_within(handed, Duration::from_secs(30)), "the orphaned VM was stopped");
    wait_for_pool(&config);
    let pooled = pool_pids(&config);
    let said = ok(&config, &["factory", "destroy"]);
    assert!(said.contains(&format!("stopped the factory server (pid {server}) and the 1 VM(s) it held")), "{said}");
    assert!(!runs(server as i32) && pooled.iter().all(|p| gone_within(*p, Duration::from_secs(30))));
    assert!(!socket.exists());
    ok(&config, &["delete", "web"]);
    let list = ok(&config, &["list", "--json"]);
    assert_eq!(list.trim(), "[]", "nothing left: {list}");
}

/// A template factory through the server: `init` makes the template (0700 directory, 0600
/// files), `status` shows it, `run` gets a clone of it, `destroy` removes it; with no server
/// answering, `destroy` removes it too.
#[test]
fn a_template_made_by_factory_init_is_cloned_and_destroyed() {
    let Some(image) = image_or_skip() else { return };
    let dir = integration_tests::private_dir();
    let _leftovers = KillLeftovers(dir.path().to_owned());
    let shm = tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm");
    let template = shm.path().join("template");
    let config = write_config(dir.path(), &image);
    let socket = dir.path().join("factory.sock");
    let base = std::fs::read_to_string(&config).expect("config");
    let factory = format!(
        "{base}[factory]\nplugin = \"template\"\npath = {template:?}\nserver = {socket:?}\ndisks = [{{ name = \"rootfs\", path = {:?} }}]\n",
        image.rootfs
    );
    std::fs::write(&config, factory).expect("config");
    ok(&config, &["factory", "init"]);
    use integration_tests::mode_of as mode;
    assert_eq!(mode(&template), 0o700);
    for f in std::fs::read_dir(&template).expect("the template's files") {
        let f = f.expect("entry").path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    let table = ok(&config, &["factory", "status"]);
    let line = format!("template {} (", template.display());
    assert!(table.lines().any(|l| l.starts_with(&line) && l.contains("hypervisor qemu") && l.contains("512 MiB") && l.contains("0 clone(s)")), "{table}");
    let status: serde_json::Value = serde_json::from_str(&ok(&config, &["factory", "status", "--json"])).expect("JSON");
    assert_eq!(status["template"]["path"].as_str(), template.to_str(), "{status}");

    run_web(dir.path(), &config, &image);
    let copy: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("vms/web/vm-state.json")).expect("state copy")).expect("JSON");
    assert!(copy["incoming"].as_str().is_some_and(|s| s.starts_with(template.to_str().expect("utf-8"))), "the sandbox's VM is a clone: {copy}");
    let hello = ok(&config, &["container", "exec", "web", "c1", "--", "echo", "from-a-clone"]);
    assert!(hello.contains("from-a-clone"), "{hello}");
    let console = ok(&config, &["console", "web"]);
    assert!(console.contains("is a clone of the QEMU VM template"), "{console}");
    let status: serde_json::Value = serde_json::from_str(&ok(&config, &["factory", "status", "--json"])).expect("JSON");
    assert_eq!(status["template"]["clones"], 1, "{status}");

    // destroy stops the server and removes the template; the clone runs on.
    let said = ok(&config, &["factory", "destroy"]);
    assert!(said.contains("stopped the factory server"), "{said}");
    assert!(!template.exists(), "destroy removes the template");
    let hello = ok(&config, &["container", "exec", "web", "c1", "--", "echo", "still-here"]);
    assert!(hello.contains("still-here"), "{hello}");
    ok(&config, &["delete", "web"]);

    // With no server answering, destroy still removes a template.
    ok(&config, &["factory", "init"]);
    assert!(template.join("template.json").exists());
    let server: i64 = serde_json::from_str::<serde_json::Value>(&ok(&config, &["factory", "status", "--json"])).expect("JSON")["server_pid"].as_i64().expect("pid");
    // SAFETY: kill(2) on the server this test started.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGKILL) }, 0);
    assert!(gone_within(server, Duration::from_secs(10)));
    let said = ok(&config, &["factory", "destroy"]);
    assert!(said.contains("no factory server answers"), "{said}");
    assert!(!template.exists(), "destroy without a server removes the template");
}

/// `sandboxctl conformance` picks the kit by the library's kind: the hypervisor kit boots the
/// config's guest image through the qemu library, the factory kit starts the cache library.
#[test]
fn conformance_runs_the_kit_of_the_library_kind() {
    let Some(image) = image_or_skip() else { return };
    let dir = integration_tests::private_dir();
    let config = write_config(dir.path(), &image);
    let _leftovers = KillLeftovers(dir.path().to_owned());
    let plugins = integration_tests::profile_dir();
    let qemu = plugins.join("libhypervisor_qemu_plugin.so");
    let said = ok(&config, &["conformance", qemu.to_str().expect("utf-8")]);
    assert!(said.starts_with("hypervisor conformance of \"qemu\"") && said.contains("8 passed, 0 failed"), "{said}");
    let cache = plugins.join("libfactory_cache_plugin.so");
    let said = ok(&config, &["conformance", cache.to_str().expect("utf-8"), "--plugin-config", r#"{"size": 1}"#]);
    assert!(said.starts_with("factory conformance of \"cache\"") && said.contains("6 passed, 0 failed"), "{said}");
    refused(&config, &["conformance", cache.to_str().expect("utf-8"), "--plugin-config", r#"{"size": 0}"#], "size = 0: must be 1 to 64");
}
