//! The VM factories end to end, on both hypervisor plugins (`::qemu` under QEMU/TCG, `::kvm`
//! on our vmm in the nested L1): a container runs in a sandbox from `new` and from `cache`;
//! sandboxes one after another from a cache of two are each a distinct VM; a request the
//! pool cannot serve cold-boots; a pooled VM that dies is replaced, never handed out; closing
//! the runtime stops the pool; our plugins pass the hypervisor and factory conformance kits.
//! The `template` factory (on QEMU: our vmm cannot save templates yet): its clones run
//! containers, a second runtime loads the template, a template made for another VM is refused,
//! and a cache over a template pools clones.

use integration_tests::mode_of;
use integration_tests::qemu::GuestImage;
use integration_tests::sandbox::{container, read_until, sandbox, Hypervisor, TestRuntime};
use runtime_core::sandbox::{Runtime, SandboxState};
use runtime_core::config::RuntimeConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factory_cache as _;
use factory_template as _;
use hypervisor_kvm as _;
use hypervisor_qemu as _;
use storage_fs as _;

integration_tests::on_both_hypervisors!(
    a_container_runs_in_a_sandbox_from_each_factory,
    ten_sandboxes_one_after_another_from_a_cache,
    a_pooled_vm_that_dies_is_replaced_and_closing_stops_the_pool,
    our_plugins_pass_the_conformance_kits,
);

/// `[factory]` for a cache of `size` VMs that have the image's rootfs as disk `rootfs`.
fn cache(image: &GuestImage, size: u32) -> String {
    format!("[factory]\nplugin = \"cache\"\nsize = {size}\ndisks = [{{ name = \"rootfs\", path = {:?} }}]\n", image.rootfs)
}

/// The VM of sandbox `id` as its plugin's state copy names it: pid and command line.
fn vm_of(t: &TestRuntime, id: &str) -> (i32, String) {
    let copy = std::fs::read(t.vm_dir(id).join("vm-state.json")).unwrap_or_else(|e| panic!("the state copy of {id}: {e}"));
    let copy: serde_json::Value = serde_json::from_slice(&copy).expect("JSON");
    let pid = copy["pid"].as_i64().expect("a started VM has a pid") as i32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    (pid, String::from_utf8_lossy(&cmdline).replace('\0', " "))
}

/// Whether sandbox `id`'s VM was booted in the factory's pool (its VMM was started with
/// paths in the factory's work directory).
fn from_pool(t: &TestRuntime, id: &str) -> bool {
    vm_of(t, id).1.contains("/state/factory/cache-")
}

/// Waits until the factory of `rt` reports `ready` VMs ready.
async fn wait_ready(rt: &Runtime, ready: usize) {
    let began = Instant::now();
    loop {
        let status = rt.factory_status().await.expect("factory status");
        if status.vms.iter().filter(|v| v.state == "ready").count() >= ready {
            return;
        }
        assert!(began.elapsed() < Duration::from_secs(300), "the pool never had {ready} ready VMs: {status:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs a sandbox `id` whose container echoes `id`, reads it, and deletes the sandbox after
/// checking its VM was `pooled` (or not); returns the VM's pid.
async fn run_one(t: &TestRuntime, image: &GuestImage, id: &str, pooled: Option<bool>) -> i32 {
    run_one_vm(t, image, id, pooled).await.0
}

/// [`run_one`], returning the VM's pid and command line.
async fn run_one_vm(t: &TestRuntime, image: &GuestImage, id: &str, pooled: Option<bool>) -> (i32, String) {
    let sb = t.runtime.run_sandbox(sandbox(id, image, vec![container("c", &format!("echo hello from {id}"))])).await.expect("RunSandbox");
    assert_eq!(sb.state(), SandboxState::Running);
    let mut io = sb.io_stream("c", "c").await.expect("IOStream");
    read_until(&mut io.stdout, &format!("hello from {id}")).await;
    let (pid, cmdline) = vm_of(t, id);
    if let Some(pooled) = pooled {
        assert_eq!(from_pool(t, id), pooled, "sandbox {id}: from the pool?");
    }
    let console = sb.console_log().expect("a console log");
    assert!(std::fs::read_to_string(&console).is_ok_and(|c| !c.is_empty()), "sandbox {id}'s console {} is empty", console.display());
    t.runtime.delete_sandbox(id).await.expect("DeleteSandbox");
    assert!(!hypervisor_framework::process::runs(pid), "sandbox {id}'s VM {pid} survived DeleteSandbox");
    t.assert_nothing_left(id);
    (pid, cmdline)
}

async fn a_container_runs_in_a_sandbox_from_each_factory(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::with(&image, hv, "[factory]\nplugin = \"new\"\n");
    run_one(&t, &image, "from-new", Some(false)).await;
    drop(t);

    let t = TestRuntime::with(&image, hv, &cache(&image, 1));
    wait_ready(&t.runtime, 1).await;
    run_one(&t, &image, "from-cache", Some(true)).await;
    // A sandbox the pool's VMs cannot serve (more memory) cold-boots through the base.
    wait_ready(&t.runtime, 1).await;
    let mut config = sandbox("bigger", &image, vec![container("c", "echo hello from bigger")]);
    config.memory_mib = Some(640);
    let sb = t.runtime.run_sandbox(config).await.expect("RunSandbox with other memory");
    let mut io = sb.io_stream("c", "c").await.expect("IOStream");
    read_until(&mut io.stdout, "hello from bigger").await;
    assert!(!from_pool(&t, "bigger"), "a VM of another size came from the pool");
    assert_eq!(t.runtime.factory_status().await.expect("status").vms.len(), 1, "the pool kept its VM");
    t.runtime.delete_sandbox("bigger").await.expect("DeleteSandbox");
    t.assert_nothing_left("bigger");
}

/// Ten sandboxes one after another from a cache of two, each a distinct VM, the first ones
/// from the pool. (On `kvm` the nested L1 kept this to a cache of one while it had two vCPUs:
/// with three L2 VMs at once it wedged; docs/MACHINE-FACTS.md.)
async fn ten_sandboxes_one_after_another_from_a_cache(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let size: u32 = 2;
    let t = TestRuntime::with(&image, hv, &cache(&image, size));
    wait_ready(&t.runtime, size as usize).await;
    let mut pids = Vec::new();
    for n in 0..10 {
        let id = format!("seq{n}");
        let pid = run_one(&t, &image, &id, if n < size { Some(true) } else { None }).await;
        assert!(!pids.contains(&pid), "sandbox {id} got the VM {pid} of an earlier sandbox");
        pids.push(pid);
    }
    eprintln!("10 sandboxes from a cache of {size}, the first {size} from the pool, pids {pids:?}");
    let status = t.runtime.factory_status().await.expect("status");
    assert!(status.vms.len() <= size as usize, "the pool holds at most its size: {status:?}");
}

async fn a_pooled_vm_that_dies_is_replaced_and_closing_stops_the_pool(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::with(&image, hv, &cache(&image, 1));
    wait_ready(&t.runtime, 1).await;
    let status = t.runtime.factory_status().await.expect("status");
    let (doomed, pid) = (status.vms[0].id.clone(), status.vms[0].pid.expect("a pid") as i32);
    // SAFETY: kill(2) on the VMM of a pooled VM this test's runtime started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let began = Instant::now();
    loop {
        let status = t.runtime.factory_status().await.expect("status");
        if status.vms.iter().any(|v| v.state == "ready" && v.id != doomed) && !status.vms.iter().any(|v| v.id == doomed) {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(300), "the dead pooled VM was not replaced: {status:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let served = run_one(&t, &image, "after-death", Some(true)).await;
    assert_ne!(served, pid);

    // Closing a runtime stops what its pool holds and removes its work directory.
    let rt = Runtime::from_file(&t.config).expect("a second runtime");
    wait_ready(&rt, 1).await;
    let status = rt.factory_status().await.expect("status");
    let pooled: Vec<i32> = status.vms.iter().filter_map(|v| v.pid).map(|p| p as i32).collect();
    let work_dirs = || std::fs::read_dir(t.dir.path().join("state/factory")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(work_dirs(), 2, "one work directory per runtime");
    drop(rt);
    for pid in pooled {
        assert!(!hypervisor_framework::process::runs(pid), "pooled VM {pid} survived its runtime");
    }
    assert_eq!(work_dirs(), 1, "the closed factory's work directory is left");
}

/// The hypervisor kit on the hypervisor plugin, and the factory kit on `new`, `cache` and
/// (on QEMU) `template` (started as a runtime starts them), all through the library as `sandboxctl conformance`
/// runs them: our plugins pass the kits vendors are asked to pass.
async fn our_plugins_pass_the_conformance_kits(hv: Hypervisor) {
    use plugin_api::conformance;
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::with(&image, hv, &cache(&image, 1));
    let mut config = RuntimeConfig::load(&t.config).expect("config");
    config.runtime.state_dir = t.dir.path().join("kit-state");
    let registry = runtime_core::plugins::discover(&config).expect("plugins");
    let section = config.hypervisor.clone().expect("[hypervisor]");
    let mut settings = section.settings_json();
    settings["run_dir"] = serde_json::json!(t.dir.path().join("kit-vms"));
    let hypervisor = Arc::new(registry.open_hypervisor(&section.plugin, &settings).expect("the hypervisor plugin"));
    let boot_timeout = Duration::from_secs(300);
    let handle = tokio::runtime::Handle::current();
    let nth = std::sync::atomic::AtomicUsize::new(0);
    let probe = |endpoints: &str, timeout: Duration| {
        let n = nth.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        handle.block_on(runtime_core::agent::probe(endpoints, n, timeout))
    };
    tokio::task::block_in_place(|| {
        let guest = conformance::hypervisor::Guest {
            config: runtime_core::factory::vm_config(&section, None, None, vec![], None),
            work_dir: t.dir.path().to_owned(),
            boot_timeout,
        };
        let report = conformance::hypervisor::run(&hypervisor, &guest, &probe);
        assert!(report.passed(), "the hypervisor kit on {}:\n{report}", section.plugin);
        let disks = config.factory.as_ref().expect("[factory]").disks.clone();
        let request = conformance::factory::Request {
            config: runtime_core::factory::vm_config(&section, None, None, disks, None),
            work_dir: t.dir.path().to_owned(),
            boot_timeout,
        };
        let home = template_home(hv);
        let kits = vec![
            ("new", serde_json::json!({})),
            ("cache", serde_json::json!({"size": 1})),
            ("template", serde_json::json!({"path": home.path().join("template")})),
        ];
        for (name, settings) in kits {
            let factory = registry.open_vm_factory(name, &settings).expect("the factory plugin");
            let report = runtime_core::factory::with_started(&config, &registry, &hypervisor, factory, |f| conformance::factory::run(f, &hypervisor, &request, &probe))
                .expect("starting the factory");
            assert!(report.passed(), "the factory kit on {name}:\n{report}");
        }
    });
}

integration_tests::on_both_hypervisors!(template_clones_run_containers, clones_are_distinct_and_a_broken_template_falls_back);

/// Where a test's template lives: the default's tmpfs, `/dev/shm`, where there is one (the
/// nested L1, where the `kvm` tests run, has none: its `/tmp` is a tmpfs too).
fn template_home(hv: Hypervisor) -> tempfile::TempDir {
    match hv {
        Hypervisor::Qemu => tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm"),
        Hypervisor::Kvm => tempfile::tempdir().expect("a temporary directory"),
    }
}

/// The template's saved device state, as each plugin names it.
fn state_file(hv: Hypervisor, path: &std::path::Path) -> std::path::PathBuf {
    path.join(match hv {
        Hypervisor::Qemu => "qemu-device-state",
        Hypervisor::Kvm => "vmm-state.json",
    })
}

/// What one clone's container said: 16 random bytes, its wall clock, its hostname.
#[derive(Debug)]
struct CloneReport {
    random: String,
    clock: i64,
    hostname: String,
}

/// Runs sandbox `id` whose container reports from `/dev/urandom`, `date` and `hostname`;
/// returns its report and the host's clock (seconds) around it.
async fn report_from(rt: &Runtime, image: &GuestImage, id: String) -> (CloneReport, i64, i64) {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let script = "echo R=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); echo T=$(date +%s); echo H=$(hostname); echo END; sleep 1000";
    let mut c = container("c", script);
    c.hostname = Some(format!("host-{id}"));
    let sb = rt.run_sandbox(sandbox(&id, image, vec![c])).await.unwrap_or_else(|e| panic!("RunSandbox {id}: {e}"));
    let before = now();
    let mut io = sb.io_stream("c", "c").await.expect("IOStream");
    let text = read_until(&mut io.stdout, "END").await;
    let after = now();
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in {text:?}")).trim().to_owned();
    // Under TCG `-cpu max` the guest has RDRAND, which alone keeps the clones' output apart;
    // the reseed is what a CPU without it relies on, so its happening is checked too.
    let console = std::fs::read_to_string(sb.console_log().expect("a console log")).unwrap_or_default();
    assert!(console.contains("reseeded the RNG from the host"), "sandbox {id}'s agent was not reseeded: {console}");
    let report = CloneReport { random: field("R="), clock: field("T=").parse().expect("date +%s"), hostname: field("H=") };
    drop(io);
    sb.release().await;
    (report, before - 1, after)
}

/// Clone safety (issue items 4 to 6): ten clones started at once each run a container; their
/// random bytes all differ (the core reseeds every guest's RNG), their clocks are the host's
/// (within 1 s), each has its own hostname. A template whose device state is corrupt or
/// whose RAM file is truncated gives every sandbox a cold boot instead (logged), never a hung
/// guest.
async fn clones_are_distinct_and_a_broken_template_falls_back(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let home = template_home(hv);
    let path = home.path().join("template");
    let t = TestRuntime::with(&image, hv, &template(&image, &path));
    t.runtime.factory_status().await.expect("the template is made");
    // Ten on QEMU; three on kvm, whose VMs all share the nested L1's one vCPU.
    let clones: usize = if hv == Hypervisor::Kvm { 3 } else { 10 };
    let mut set = tokio::task::JoinSet::new();
    for n in 0..clones {
        let (rt, image) = (t.runtime.clone(), image.clone());
        set.spawn(async move { report_from(&rt, &image, format!("safe{n}")).await });
    }
    let mut reports = Vec::new();
    while let Some(done) = set.join_next().await {
        reports.push(done.expect("a clone's task"));
    }
    for n in 0..clones {
        assert!(is_clone(hv, &vm_of(&t, &format!("safe{n}")).1, &path), "safe{n} is no clone");
    }
    let mut randoms: Vec<&str> = reports.iter().map(|(r, _, _)| r.random.as_str()).collect();
    randoms.sort_unstable();
    randoms.dedup();
    assert_eq!(randoms.len(), clones, "the clones' /dev/urandom gave the same bytes: {reports:?}");
    for (r, before, after) in &reports {
        assert!(r.random.len() == 32, "16 bytes in hex: {r:?}");
        assert!((*before..=*after).contains(&r.clock), "a clone's clock is {} s, the host's was {before} to {after}: {r:?}", r.clock);
    }
    let mut hostnames: Vec<&str> = reports.iter().map(|(r, _, _)| r.hostname.as_str()).collect();
    hostnames.sort_unstable();
    hostnames.dedup();
    assert_eq!(hostnames.len(), clones, "{reports:?}");
    for n in 0..clones {
        t.runtime.delete_sandbox(&format!("safe{n}")).await.expect("DeleteSandbox");
    }
    eprintln!("{clones} clones at once: {reports:?}");

    // A corrupt device state: every sandbox still starts, by a cold boot.
    let state = state_file(hv, &path);
    let mut bytes = std::fs::read(&state).expect("the device state");
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&state, &bytes).expect("corrupting the state");
    let (_, cmdline) = run_one_vm(&t, &image, "after-corruption", None).await;
    assert!(!is_clone(hv, &cmdline, &path), "a clone of a corrupt template was kept: {cmdline}");
    // A truncated RAM file: refused before QEMU runs, and a cold boot again.
    let memory = path.join("memory");
    std::fs::OpenOptions::new().write(true).open(&memory).and_then(|f| f.set_len(1 << 20)).expect("truncating the RAM file");
    let (_, cmdline) = run_one_vm(&t, &image, "after-truncation", None).await;
    assert!(!is_clone(hv, &cmdline, &path), "{cmdline}");
    assert_eq!(std::fs::metadata(&memory).expect("the RAM file").len(), 1 << 20, "nothing extended the template's file");
    let status = t.runtime.factory_status().await.expect("status");
    assert_eq!(status.template.map(|i| i.clones), Some(clones as u64), "only the good clones count");
}

/// `[factory]` for a template in `path`, the image's rootfs as disk `rootfs`.
fn template(image: &GuestImage, path: &std::path::Path) -> String {
    format!("[factory]\nplugin = \"template\"\npath = {path:?}\ndisks = [{{ name = \"rootfs\", path = {:?} }}]\n", image.rootfs)
}

/// Whether a VM's command line is a template's clone's: the template's RAM mapped private, its
/// state restored.
fn is_clone(hv: Hypervisor, cmdline: &str, path: &std::path::Path) -> bool {
    match hv {
        Hypervisor::Qemu => cmdline.contains("-incoming defer") && cmdline.contains(&format!("mem-path={}/memory,share=off", path.display())),
        Hypervisor::Kvm => {
            cmdline.contains(&format!("--restore {}", state_file(hv, path).display())) && cmdline.contains(&format!("--memory-file {}/memory", path.display()))
        }
    }
}

async fn template_clones_run_containers(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let home = template_home(hv);
    let path = home.path().join("template");
    let t = TestRuntime::with(&image, hv, &template(&image, &path));
    // The first sandbox's VM makes the template (the factory starts with the first VM).
    for n in 0..3 {
        let id = format!("clone{n}");
        let (_, cmdline) = run_one_vm(&t, &image, &id, None).await;
        assert!(is_clone(hv, &cmdline, &path), "sandbox {id}'s VM is no clone of the template: {cmdline}");
    }
    let status = t.runtime.factory_status().await.expect("status");
    let info = status.template.clone().expect("the template in the status");
    let plugin = match hv {
        Hypervisor::Qemu => "qemu",
        Hypervisor::Kvm => "kvm",
    };
    assert_eq!((status.factory.as_str(), info.path.as_path(), info.hypervisor.as_str(), info.clones), ("template", path.as_path(), plugin, 3), "{status:?}");
    assert!(info.disk_bytes > 1 << 20 && info.config.memory_mib == 512, "{info:?}");
    assert_eq!(mode_of(&path), 0o700);
    for f in std::fs::read_dir(&path).expect("the template's files") {
        let f = f.expect("entry").path();
        assert_eq!(mode_of(&f), 0o600, "{}", f.display());
    }
    // A sandbox that asks for another VM cold-boots.
    let mut config = sandbox("bigger", &image, vec![container("c", "echo hello from bigger")]);
    config.memory_mib = Some(640);
    let sb = t.runtime.run_sandbox(config).await.expect("RunSandbox with other memory");
    let mut io = sb.io_stream("c", "c").await.expect("IOStream");
    read_until(&mut io.stdout, "hello from bigger").await;
    assert!(!is_clone(hv, &vm_of(&t, "bigger").1, &path), "a VM of another size was cloned");
    t.runtime.delete_sandbox("bigger").await.expect("DeleteSandbox");

    // Another runtime (another process, as each sandboxctl call is) loads the template.
    let other = TestRuntime::with(&image, hv, &template(&image, &path));
    let (_, cmdline) = run_one_vm(&other, &image, "loaded", None).await;
    assert!(is_clone(hv, &cmdline, &path), "{cmdline}");
    drop(other);
    assert!(path.join("template.json").exists(), "closing a runtime keeps the template");

    // A runtime whose VM differs from the template's (no disks) is refused, naming the key.
    let stranger = TestRuntime::with(&image, hv, &format!("[factory]\nplugin = \"template\"\npath = {path:?}\n"));
    let e = stranger.runtime.run_sandbox(sandbox("stranger", &image, vec![])).await.expect_err("a template of another VM");
    let e = error_report::chain(&e);
    assert!(e.contains("HypervisorConfig.disks") && e.contains("sandboxctl factory destroy"), "{e}");
    drop(stranger);
    drop(t);

    // A cache over the template pools clones.
    let pooled = format!(
        "[factory]\nplugin = \"cache\"\nbase = \"template\"\nsize = 1\ndisks = [{{ name = \"rootfs\", path = {:?} }}]\n[factory.template]\npath = {path:?}\n",
        image.rootfs
    );
    let t = TestRuntime::with(&image, hv, &pooled);
    wait_ready(&t.runtime, 1).await;
    let (_, cmdline) = run_one_vm(&t, &image, "pooled-clone", Some(true)).await;
    assert!(is_clone(hv, &cmdline, &path), "the pool's VM is no clone: {cmdline}");
    let status = t.runtime.factory_status().await.expect("status");
    assert_eq!(status.template.map(|i| i.path), Some(path.clone()), "a cache shows its base's template");
}
