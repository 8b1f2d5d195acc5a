//! VM factory figures, side by side in one run, 5 of each (median, min, max): RunSandbox with
//! one container to its first output line from the `new` factory (a cold boot) and from a
//! warm `cache` (a pooled VM handed over); the hand-out alone: the cache factory's `new_vm` on
//! a warm pool (adopt: one rename of the VM's directory, its state copy and its console), then
//! the first health check its agent answers; and CreateSandbox without containers from a warm
//! cache (hand-out, agent connection, clock, records).
//! Before each timed run the pool is full (waited for, not timed): a cold boot never shares
//! the CPUs with a refill boot, while a cached run does with the refill its hand-out starts,
//! as it would in use. A plain bench binary: each run
//! boots a VM. Run: `cargo bench -p integration-tests --bench factory` (or `cargo xtask
//! bench`), after `cargo xtask guest`: QEMU (TCG here). `-- --hypervisor kvm` runs it on our
//! vmm, which needs a `/dev/kvm` with vmx/svm and root; `cargo xtask nested-bench --factory`
//! runs it that way inside the nested L1.

use factory_cache as _;
use hypervisor_kvm as _;
use hypervisor_qemu as _;
use integration_tests::qemu::GuestImage;
use integration_tests::factories::{line, run_to_output, wait_warm};
use integration_tests::sandbox::{sandbox, Hypervisor, TestRuntime};
use std::time::{Duration, Instant};
use storage_fs as _;

const RUNS: usize = 5;

/// The cache factory driven directly, as a runtime starts it: `RUNS` times, wait for a warm
/// pool, time `new_vm`, then the first agent health check; returns both in milliseconds.
async fn raw_handouts(image: &GuestImage, hv: Hypervisor, cache: &str) -> (Vec<f64>, Vec<f64>) {
    let t = TestRuntime::with(image, hv, cache);
    let handle = tokio::runtime::Handle::current();
    integration_tests::factories::with_factory(&t, "cache", serde_json::json!({"size": 1}), |d| {
        let (f, hv) = (d.factory, &d.hypervisor);
        let (mut raw, mut first) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            let began = Instant::now();
            while !f.status().expect("status").vms.iter().any(|v| v.state == "ready") {
                assert!(began.elapsed() < Duration::from_secs(300), "the pool never warmed");
                std::thread::sleep(Duration::from_millis(100));
            }
            let started = Instant::now();
            let blob = f.new_vm(hv.raw(), &format!("raw{run}"), &d.vm).expect("new_vm");
            raw.push(started.elapsed().as_secs_f64() * 1e3);
            let endpoints = hv.agent_endpoint(&blob).expect("endpoint");
            let started = Instant::now();
            handle.block_on(runtime_core::agent::probe(&endpoints, 1, Duration::from_secs(60))).expect("the agent answers");
            first.push(started.elapsed().as_secs_f64() * 1e3);
            hv.stop_vm(&blob).expect("stop");
        }
        (raw, first)
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (hv, image) = integration_tests::factories::bench_target("factory");
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    let cache = format!("[factory]\nplugin = \"cache\"\nsize = 1\ndisks = [{{ name = \"rootfs\", path = {:?} }}]\n", image.rootfs);
    let (mut cold, mut warm, mut handout, mut raw, mut first_call) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    tokio.block_on(async {
        let new = TestRuntime::with(&image, hv, "[factory]\nplugin = \"new\"\n");
        let cached = TestRuntime::with(&image, hv, &cache);
        for run in 1..=RUNS {
            wait_warm(&cached).await;
            let c = run_to_output(&new, &image, &format!("new{run}")).await;
            wait_warm(&cached).await;
            let w = run_to_output(&cached, &image, &format!("cache{run}")).await;
            wait_warm(&cached).await;
            let id = format!("handout{run}");
            let started = Instant::now();
            let sb = cached.runtime.create_sandbox(sandbox(&id, &image, vec![])).await.expect("CreateSandbox");
            let h = started.elapsed().as_secs_f64() * 1e3;
            sb.release().await;
            cached.runtime.delete_sandbox(&id).await.expect("DeleteSandbox");
            println!("run {run}: RunSandbox to first output: new {c:.2} s, warm cache {w:.3} s; CreateSandbox from the cache {h:.1} ms");
            cold.push(c);
            warm.push(w);
            handout.push(h);
        }
        drop(cached);
        let (r, f) = raw_handouts(&image, hv, &cache).await;
        raw = r;
        first_call = f;
    });
    match hv {
        Hypervisor::Qemu => println!("QEMU -M pc TCG, 1 vCPU, 512 MiB guest, busybox container over a read-only ext4 disk, cache size 1:"),
        Hypervisor::Kvm => println!(
            "our vmm ({}), 1 vCPU, 512 MiB guest, busybox container over a read-only ext4 disk, cache size 1:",
            integration_tests::kvm::vmm_binary().display()
        ),
    }
    let c = line("RunSandbox to first output, factory new (cold boot)", &cold, "s");
    let w = line("RunSandbox to first output, factory cache (warm pool)", &warm, "s");
    line("hand-out: the cache's new_vm on a warm pool (adopt and console rename)", &raw, "ms");
    line("then the handed-out VM's agent answering a health check (new connection)", &first_call, "ms");
    line("CreateSandbox without containers from a warm cache (hand-out, agent connection, clock, records)", &handout, "ms");
    println!("warm cache vs new, RunSandbox to first output: {:.1}x faster", c / w);
}
