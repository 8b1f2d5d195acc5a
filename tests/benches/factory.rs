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
use integration_tests::qemu::{qemu_available, GuestImage};
use integration_tests::sandbox::{container, read_until, sandbox, Hypervisor, TestRuntime};
use plugin_api::hypervisor::HypervisorHandle;
use runtime_core::config::RuntimeConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage_fs as _;

const RUNS: usize = 5;

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

fn line(name: &str, values: &[f64], unit: &str) -> f64 {
    let (m, lo, hi) = median(values.to_vec());
    println!("{name}: median {m:.3} {unit} (min {lo:.3}, max {hi:.3}, {} runs)", values.len());
    m
}

/// A progress line on stderr (the nested harness counts a run that prints nothing for minutes
/// as hung, and a stall is easier to place).
fn progress(what: &str, step: &str, since: Instant) {
    eprintln!("factory bench: {what}: {step} after {:.1} s", since.elapsed().as_secs_f64());
}

async fn wait_warm(t: &TestRuntime) {
    let began = Instant::now();
    loop {
        let status = t.runtime.factory_status().await.expect("factory status");
        if status.vms.iter().any(|v| v.state == "ready") {
            progress("pool", "warm", began);
            return;
        }
        assert!(began.elapsed() < Duration::from_secs(300), "the pool never warmed: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RunSandbox to the first output line, in seconds; the sandbox is deleted afterwards.
async fn run_to_output(t: &TestRuntime, image: &GuestImage, id: &str) -> f64 {
    let config = sandbox(id, image, vec![container("c1", "echo first line; sleep 1000")]);
    let started = Instant::now();
    let sb = t.runtime.run_sandbox(config).await.expect("RunSandbox");
    progress(id, "running", started);
    let mut io = sb.io_stream("c1", "c1").await.expect("IOStream");
    read_until(&mut io.stdout, "first line").await;
    let elapsed = started.elapsed().as_secs_f64();
    drop(io);
    sb.release().await;
    t.runtime.delete_sandbox(id).await.expect("DeleteSandbox");
    progress(id, "deleted", started);
    elapsed
}

/// The cache factory driven directly, as a runtime starts it: `RUNS` times, wait for a warm
/// pool, time `new_vm`, then the first agent health check; returns both in milliseconds.
async fn raw_handouts(image: &GuestImage, hv: Hypervisor, cache: &str) -> (Vec<f64>, Vec<f64>) {
    let t = TestRuntime::with(image, hv, cache);
    let mut config = RuntimeConfig::load(&t.config).expect("config");
    config.runtime.state_dir = t.dir.path().join("raw-state");
    let registry = runtime_core::plugins::discover(&config).expect("plugins");
    let section = config.hypervisor.clone().expect("[hypervisor]");
    let mut settings = section.settings_json();
    settings["run_dir"] = serde_json::json!(t.dir.path().join("raw-vms"));
    let hv: Arc<HypervisorHandle> = Arc::new(registry.open_hypervisor(&section.plugin, &settings).expect("hypervisor"));
    let disks = config.factory.as_ref().expect("[factory]").disks.clone();
    let vm = runtime_core::factory::vm_config(&section, None, None, disks, None);
    let handle = tokio::runtime::Handle::current();
    let factory = registry.open_vm_factory("cache", &serde_json::json!({"size": 1})).expect("cache");
    tokio::task::block_in_place(|| {
        runtime_core::factory::with_started(&config, &registry, &hv, factory, |f| {
            let (mut raw, mut first) = (Vec::new(), Vec::new());
            for run in 0..RUNS {
                let began = Instant::now();
                while !f.status().expect("status").vms.iter().any(|v| v.state == "ready") {
                    assert!(began.elapsed() < Duration::from_secs(300), "the pool never warmed");
                    std::thread::sleep(Duration::from_millis(100));
                }
                let started = Instant::now();
                let blob = f.new_vm(hv.raw(), &format!("raw{run}"), &vm).expect("new_vm");
                raw.push(started.elapsed().as_secs_f64() * 1e3);
                let endpoints = hv.agent_endpoint(&blob).expect("endpoint");
                let started = Instant::now();
                handle.block_on(runtime_core::agent::probe(&endpoints, 1, Duration::from_secs(60))).expect("the agent answers");
                first.push(started.elapsed().as_secs_f64() * 1e3);
                hv.stop_vm(&blob).expect("stop");
            }
            (raw, first)
        })
        .expect("starting the cache")
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let hv = match args.iter().position(|a| a == "--hypervisor").map(|i| args.get(i + 1).map(String::as_str)) {
        None | Some(Some("qemu")) => Hypervisor::Qemu,
        Some(Some("kvm")) => Hypervisor::Kvm,
        Some(other) => {
            eprintln!("factory: --hypervisor takes qemu or kvm, not {other:?}");
            std::process::exit(2);
        }
    };
    let ready = hv.image_or_skip().filter(|_| hv == Hypervisor::Kvm || qemu_available());
    let Some(image) = ready else {
        eprintln!("factory: needs `cargo xtask guest`, and qemu-system-x86_64 (qemu) or a /dev/kvm with vmx/svm and root (kvm)");
        std::process::exit(1);
    };
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
