//! Sandbox API figures under QEMU/TCG, over 5 sandboxes (median, min, max): RunSandbox with
//! one container to the container's first output line, StopSandbox, DeleteSandbox, and the
//! host memory of a running sandbox (the RSS of its QEMU process; the runtime keeps no daemon).
//! A plain bench binary: each run boots a VM. Run: `cargo bench -p integration-tests --bench
//! sandbox_lifecycle` (or `cargo xtask bench`), after `cargo xtask guest`.

use hypervisor_qemu as _;
use integration_tests::qemu::{guest_image, qemu_available};
use integration_tests::sandbox::{container, qemu_pid, sandbox, TestRuntime};
use std::time::{Duration, Instant};
use storage_fs as _;

const RUNS: usize = 5;

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

fn summary(name: &str, mut values: Vec<f64>, unit: &str) {
    values.sort_by(f64::total_cmp);
    println!("{name}: median {:.2} {unit} (min {:.2}, max {:.2}, {} runs)", values[values.len() / 2], values[0], values[values.len() - 1], values.len());
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (Some(image), true) = (guest_image(), qemu_available()) else {
        eprintln!("sandbox_lifecycle: needs `cargo xtask guest` and qemu-system-x86_64");
        std::process::exit(1);
    };
    let tokio = tokio::runtime::Runtime::new().expect("tokio");
    let t = TestRuntime::new(&image);
    let (mut first_line, mut stop, mut delete, mut rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=RUNS {
        let id = format!("bench{run}");
        let config = sandbox(&id, &image, vec![container("c1", "trap 'exit 0' TERM; echo first line; while :; do sleep 0.1; done")]);
        tokio.block_on(async {
            let started = Instant::now();
            let sb = t.runtime.run_sandbox(config).await.expect("RunSandbox");
            let mut io = sb.io_stream("c1", "c1").await.expect("IOStream");
            let mut seen = String::new();
            while !seen.contains('\n') {
                let chunk = io.stdout.next_chunk().await.expect("output").expect("the container printed nothing");
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
            let to_output = started.elapsed();
            drop(io);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let kib = rss_kib(qemu_pid(&id).expect("QEMU runs"));
            sb.release().await;
            let started = Instant::now();
            t.runtime.stop_sandbox(&id, false).await.expect("StopSandbox");
            let to_stop = started.elapsed();
            let started = Instant::now();
            t.runtime.delete_sandbox(&id).await.expect("DeleteSandbox");
            let to_delete = started.elapsed();
            println!(
                "run {run}: RunSandbox to first line {:.2} s, StopSandbox {:.3} s, DeleteSandbox {:.3} s, QEMU RSS {kib} KiB",
                to_output.as_secs_f64(),
                to_stop.as_secs_f64(),
                to_delete.as_secs_f64()
            );
            first_line.push(to_output.as_secs_f64());
            stop.push(to_stop.as_secs_f64() * 1e3);
            delete.push(to_delete.as_secs_f64() * 1e3);
            rss.push(kib as f64 / 1024.0);
        });
    }
    println!("QEMU -M pc TCG, 1 vCPU, 512 MiB guest, busybox container, writable layer over a read-only ext4 disk:");
    summary("RunSandbox (1 container) to its first output line", first_line, "s");
    summary("StopSandbox (SIGTERM, container gone, VM quit)", stop, "ms");
    summary("DeleteSandbox (after stop)", delete, "ms");
    summary("host RSS of a running sandbox (its QEMU process)", rss, "MiB");
}
