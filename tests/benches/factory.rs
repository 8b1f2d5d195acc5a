//! VM factory figures under QEMU/TCG, side by side in one run, 5 of each (median, min, max):
//! RunSandbox with one container to its first output line from the `new` factory (a cold
//! boot) and from a warm `cache` (a pooled VM handed over), and the hand-out alone: a
//! CreateSandbox without containers from a warm cache, that is the request, the hand-over of a
//! pooled VM (rename of its directory and console) and the first call its agent answers.
//! Before each cached run the pool is refilled (not timed). A plain bench binary: each run
//! boots a VM. Run: `cargo bench -p integration-tests --bench factory` (or `cargo xtask
//! bench`), after `cargo xtask guest`.

use factory_cache as _;
use hypervisor_qemu as _;
use integration_tests::qemu::{guest_image, qemu_available, GuestImage};
use integration_tests::sandbox::{container, read_until, sandbox, Hypervisor, TestRuntime};
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

async fn wait_warm(t: &TestRuntime) {
    let began = Instant::now();
    loop {
        let status = t.runtime.factory_status().await.expect("factory status");
        if status.vms.iter().any(|v| v.state == "ready") {
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
    let mut io = sb.io_stream("c1", "c1").await.expect("IOStream");
    read_until(&mut io.stdout, "first line").await;
    let elapsed = started.elapsed().as_secs_f64();
    drop(io);
    sb.release().await;
    t.runtime.delete_sandbox(id).await.expect("DeleteSandbox");
    elapsed
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (Some(image), true) = (guest_image(), qemu_available()) else {
        eprintln!("factory: needs `cargo xtask guest` and qemu-system-x86_64");
        std::process::exit(1);
    };
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    let cache = format!("[factory]\nplugin = \"cache\"\nsize = 1\ndisks = [{{ name = \"rootfs\", path = {:?} }}]\n", image.rootfs);
    let (mut cold, mut warm, mut handout) = (Vec::new(), Vec::new(), Vec::new());
    tokio.block_on(async {
        let new = TestRuntime::with(&image, Hypervisor::Qemu, "[factory]\nplugin = \"new\"\n");
        let cached = TestRuntime::with(&image, Hypervisor::Qemu, &cache);
        for run in 1..=RUNS {
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
            println!("run {run}: RunSandbox to first output: new {c:.2} s, warm cache {w:.3} s; hand-out {h:.1} ms");
            cold.push(c);
            warm.push(w);
            handout.push(h);
        }
    });
    println!("QEMU -M pc TCG, 1 vCPU, 512 MiB guest, busybox container over a read-only ext4 disk, cache size 1:");
    let c = line("RunSandbox to first output, factory new (cold boot)", &cold, "s");
    let w = line("RunSandbox to first output, factory cache (warm pool)", &warm, "s");
    line("hand-out: CreateSandbox without containers from a warm cache (adopt, console, first agent call)", &handout, "ms");
    println!("warm cache vs new, RunSandbox to first output: {:.1}x faster", c / w);
}
