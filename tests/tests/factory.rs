//! The VM factories end to end, on both hypervisor plugins (`::qemu` under QEMU/TCG, `::kvm`
//! on our vmm in the nested L1): a container runs in a sandbox from `new` and from `cache`;
//! sandboxes one after another from a cache of two are each a distinct VM; a request the
//! pool cannot serve cold-boots; a pooled VM that dies is replaced, never handed out; closing
//! the runtime stops the pool.

use integration_tests::qemu::GuestImage;
use integration_tests::sandbox::{container, read_until, sandbox, Hypervisor, TestRuntime};
use runtime_core::sandbox::{Runtime, SandboxState};
use std::path::Path;
use std::time::{Duration, Instant};

use factory_cache as _;
use hypervisor_kvm as _;
use hypervisor_qemu as _;
use storage_fs as _;

integration_tests::on_both_hypervisors!(
    a_container_runs_in_a_sandbox_from_each_factory,
    sandboxes_one_after_another_from_a_cache_of_two,
    a_pooled_vm_that_dies_is_replaced_and_closing_stops_the_pool,
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
    let sb = t.runtime.run_sandbox(sandbox(id, image, vec![container("c", &format!("echo hello from {id}"))])).await.expect("RunSandbox");
    assert_eq!(sb.state(), SandboxState::Running);
    let mut io = sb.io_stream("c", "c").await.expect("IOStream");
    read_until(&mut io.stdout, &format!("hello from {id}")).await;
    let (pid, _) = vm_of(t, id);
    if let Some(pooled) = pooled {
        assert_eq!(from_pool(t, id), pooled, "sandbox {id}: from the pool?");
    }
    let console = sb.console_log().expect("a console log");
    assert!(std::fs::read_to_string(&console).is_ok_and(|c| !c.is_empty()), "sandbox {id}'s console {} is empty", console.display());
    t.runtime.delete_sandbox(id).await.expect("DeleteSandbox");
    assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid), "sandbox {id}'s VM {pid} survived DeleteSandbox");
    t.assert_nothing_left(id);
    pid
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
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

async fn sandboxes_one_after_another_from_a_cache_of_two(hv: Hypervisor) {
    let Some(image) = hv.image_or_skip() else { return };
    let t = TestRuntime::with(&image, hv, &cache(&image, 2));
    wait_ready(&t.runtime, 2).await;
    let mut pids = Vec::new();
    let mut pooled = 0;
    for n in 0..10 {
        let id = format!("seq{n}");
        let pid = run_one(&t, &image, &id, if n < 2 { Some(true) } else { None }).await;
        assert!(!pids.contains(&pid), "sandbox {id} got the VM {pid} of an earlier sandbox");
        pids.push(pid);
        pooled += usize::from(n < 2);
    }
    eprintln!("10 sandboxes, {pooled} or more from the pool, pids {pids:?}");
    let status = t.runtime.factory_status().await.expect("status");
    assert!(status.vms.len() <= 2, "the pool holds at most its size: {status:?}");
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
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid), "pooled VM {pid} survived its runtime");
    }
    assert_eq!(work_dirs(), 1, "the closed factory's work directory is left");
}
