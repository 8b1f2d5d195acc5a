//! The `template` VM factory's figures, side by side in one run, on QEMU (TCG here) or, with
//! `-- --hypervisor kvm`, on our vmm (in the nested L1 here: `cargo xtask nested-bench
//! --template`), 5 of each (median, min, max):
//!
//! 1. to agent-ready: a cold boot (the `new` factory's `new_vm`, then the agent's first
//!    answer) against a clone (the `template` factory's `new_vm`, then the same);
//! 2. RunSandbox to the container's first output line from `new`, from `template`, and from a
//!    warm `cache` over `template`;
//! 3. memory: the sum of the PSS of ten idle clones against ten idle cold-booted VMs of the same
//!    size (every agent answered, then 3 s idle); four of each on kvm, whose nested L1 has one
//!    vCPU and 4 GiB.
//!
//! The template is made first (timed once, not part of the runs). Run: `cargo bench -p
//! integration-tests --bench template` (or `cargo xtask bench`), after `cargo xtask guest`.

use factory_cache as _;
use factory_template as _;
use hypervisor_kvm as _;
use hypervisor_qemu as _;
use integration_tests::factories::{line, pid_of, pss_kib, run_to_output, wait_warm, with_factory, Direct};
use integration_tests::sandbox::{Hypervisor, TestRuntime};
use std::time::{Duration, Instant};
use storage_fs as _;

const RUNS: usize = 5;
const AGENT_TIMEOUT: Duration = Duration::from_secs(600);

/// `RUNS` times: `new_vm` from `d`'s factory, then its agent's first answer at the endpoint a
/// pool probes (the last: a serial port), or with `first` at the one a sandbox uses (vsock
/// where the VM has it); seconds each.
fn to_agent_ready(d: &Direct<'_>, what: &str, first: bool, handle: &tokio::runtime::Handle) -> Vec<f64> {
    (0..RUNS)
        .map(|run| {
            let started = Instant::now();
            let blob = d.factory.new_vm(d.hypervisor.raw(), &format!("{what}{run}"), &d.vm).expect("new_vm");
            let endpoints = d.hypervisor.agent_endpoint(&blob).expect("endpoint");
            let nth = if first { endpoints.split(',').count() - 1 } else { 0 };
            handle.block_on(runtime_core::agent::probe(&endpoints, nth, AGENT_TIMEOUT)).expect("the agent answers");
            let took = started.elapsed().as_secs_f64();
            eprintln!("template bench: {what}{run} agent-ready after {took:.3} s");
            d.hypervisor.stop_vm(&blob).expect("stop");
            took
        })
        .collect()
}

/// `many` VMs from `d`'s factory at once, every agent answering, then idle: the sum of their
/// VMMs' PSS, in MiB.
fn pss_of_many(d: &Direct<'_>, what: &str, many: usize, handle: &tokio::runtime::Handle) -> f64 {
    let blobs: Vec<Vec<u8>> = (0..many).map(|n| d.factory.new_vm(d.hypervisor.raw(), &format!("{what}-many{n}"), &d.vm).expect("new_vm")).collect();
    let began = Instant::now();
    handle.block_on(async {
        let mut waits = tokio::task::JoinSet::new();
        for blob in &blobs {
            let endpoints = d.hypervisor.agent_endpoint(blob).expect("endpoint");
            waits.spawn(async move { runtime_core::agent::probe(&endpoints, 0, AGENT_TIMEOUT).await });
        }
        while let Some(done) = waits.join_next().await {
            done.expect("a wait").expect("every agent answers");
        }
    });
    eprintln!("template bench: {many} {what} VMs agent-ready after {:.1} s", began.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));
    let kib: u64 = blobs.iter().map(|b| pss_kib(pid_of(b))).sum();
    for blob in &blobs {
        d.hypervisor.stop_vm(blob).expect("stop");
    }
    kib as f64 / 1024.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (hv, image) = integration_tests::factories::bench_target("template");
    // How many VMs the memory figure holds at once, of each kind.
    let many: usize = if hv == Hypervisor::Kvm { 4 } else { 10 };
    // The template's RAM on a tmpfs: /dev/shm, or /tmp in the nested L1, which has no /dev/shm.
    let shm = match hv {
        Hypervisor::Qemu => tempfile::tempdir_in("/dev/shm").expect("a directory on /dev/shm"),
        Hypervisor::Kvm => tempfile::tempdir().expect("a temporary directory"),
    };
    let path = shm.path().join("template");
    let disks = format!("disks = [{{ name = \"rootfs\", path = {:?} }}]\n", image.rootfs);
    let new_config = format!("[factory]\nplugin = \"new\"\n{disks}");
    let template_config = format!("[factory]\nplugin = \"template\"\npath = {path:?}\n{disks}");
    let cache_config = format!("[factory]\nplugin = \"cache\"\nbase = \"template\"\nsize = 1\n{disks}[factory.template]\npath = {path:?}\n");
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    let handle = tokio.handle().clone();
    let (mut made_in, mut cold_ready, mut clone_ready, mut clone_first) = (0.0, Vec::new(), Vec::new(), Vec::new());
    let (mut run_new, mut run_template, mut run_cache) = (Vec::new(), Vec::new(), Vec::new());
    let (mut pss_cold, mut pss_clones) = (0.0, 0.0);
    tokio.block_on(async {
        let templated = TestRuntime::with(&image, hv, &template_config);
        let began = Instant::now();
        templated.runtime.factory_status().await.expect("the template is made");
        made_in = began.elapsed().as_secs_f64();
        let new = TestRuntime::with(&image, hv, &new_config);
        cold_ready = with_factory(&new, "new", serde_json::json!({}), |d| to_agent_ready(d, "cold", false, &handle));
        clone_ready = with_factory(&templated, "template", serde_json::json!({ "path": path }), |d| to_agent_ready(d, "clone", false, &handle));
        clone_first = with_factory(&templated, "template", serde_json::json!({ "path": path }), |d| to_agent_ready(d, "clone-first", true, &handle));
        let cached = TestRuntime::with(&image, hv, &cache_config);
        for run in 1..=RUNS {
            wait_warm(&cached).await;
            run_new.push(run_to_output(&new, &image, &format!("new{run}")).await);
            wait_warm(&cached).await;
            run_template.push(run_to_output(&templated, &image, &format!("clone{run}")).await);
            wait_warm(&cached).await;
            run_cache.push(run_to_output(&cached, &image, &format!("cache{run}")).await);
        }
        drop(cached);
        pss_clones = with_factory(&templated, "template", serde_json::json!({ "path": path }), |d| pss_of_many(d, "clone", many, &handle));
        pss_cold = with_factory(&new, "new", serde_json::json!({}), |d| pss_of_many(d, "cold", many, &handle));
    });
    match hv {
        Hypervisor::Qemu => println!("QEMU -M pc TCG, 1 vCPU, 512 MiB guest, busybox container over a read-only ext4 disk, template on /dev/shm:"),
        Hypervisor::Kvm => println!("our vmm on KVM, 1 vCPU, 512 MiB guest, busybox container over a read-only ext4 disk, template on a tmpfs:"),
    }
    println!("the template made (a cold boot, 2 s for the agent to settle, pause, save) in {made_in:.1} s, once");
    let cold = line("to agent-ready, cold boot (new)", &cold_ready, "s");
    let clone = line("to agent-ready, clone of the template", &clone_ready, "s");
    line("to agent-ready, clone, at the sandbox's endpoint (vsock where there is one)", &clone_first, "s");
    let n = line("RunSandbox to first output, factory new", &run_new, "s");
    let t = line("RunSandbox to first output, factory template", &run_template, "s");
    let c = line("RunSandbox to first output, factory cache over template (warm pool)", &run_cache, "s");
    println!("to agent-ready: a clone is {:.1}x faster than a cold boot", cold / clone);
    println!("RunSandbox: template {:.1}x faster than new, cache over template {:.1}x", n / t, n / c);
    // The template's RAM file lives on a tmpfs: its pages no clone maps are in no PSS, so the
    // clones' side counts the whole file's allocated pages on top.
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::metadata(path.join("memory")).map_or(0.0, |m| (m.blocks() * 512) as f64 / (1024.0 * 1024.0));
    println!(
        "memory, {many} idle VMs of 512 MiB: PSS {pss_clones:.0} MiB for clones (+ {file:.0} MiB of the template's RAM file on tmpfs) against {pss_cold:.0} MiB cold-booted: {:.0}% saved",
        100.0 * (1.0 - (pss_clones + file) / pss_cold)
    );
}
