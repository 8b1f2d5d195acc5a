//! What the VM factory benches share: factory plugins driven directly (not through a runtime),
//! started as a runtime starts them; RunSandbox timed to a container's first output; what a
//! VM's process costs in memory; medians.

use crate::qemu::GuestImage;
use crate::sandbox::{container, read_until, sandbox, TestRuntime};
use std::time::{Duration, Instant};
use plugin_api::factory::VmFactoryHandle;
use plugin_api::hypervisor::{HypervisorConfig, HypervisorHandle};
use runtime_core::config::RuntimeConfig;
use std::sync::Arc;

/// The `--hypervisor qemu|kvm` of a bench's command line (`qemu` without one) and its guest
/// image; a bench `name` that cannot run here says why and exits.
pub fn bench_target(name: &str) -> (crate::sandbox::Hypervisor, GuestImage) {
    use crate::sandbox::Hypervisor;
    let args: Vec<String> = std::env::args().collect();
    let hv = match args.iter().position(|a| a == "--hypervisor").map(|i| args.get(i + 1).map(String::as_str)) {
        None | Some(Some("qemu")) => Hypervisor::Qemu,
        Some(Some("kvm")) => Hypervisor::Kvm,
        Some(other) => {
            eprintln!("{name}: --hypervisor takes qemu or kvm, not {other:?}");
            std::process::exit(2);
        }
    };
    let ready = hv.image_or_skip().filter(|_| hv == Hypervisor::Kvm || crate::qemu::qemu_available());
    let Some(image) = ready else {
        eprintln!("{name}: needs `cargo xtask guest`, and qemu-system-x86_64 (qemu) or a /dev/kvm with vmx/svm and root (kvm)");
        std::process::exit(1);
    };
    (hv, image)
}

/// A started factory, the hypervisor instance its VMs are made for, and the VM the config
/// describes.
pub struct Direct<'a> {
    /// The factory.
    pub factory: &'a VmFactoryHandle,
    /// The hypervisor instance (its own run directory under the test's).
    pub hypervisor: Arc<HypervisorHandle>,
    /// The VM of the config's `[hypervisor]` and `[factory] disks`.
    pub vm: HypervisorConfig,
}

/// Starts factory plugin `name` with `settings` as a runtime of `t`'s config would (its own
/// state and run directories under `t`'s), runs `run` on it off the async threads, and closes
/// it.
pub fn with_factory<R>(t: &TestRuntime, name: &str, settings: serde_json::Value, run: impl FnOnce(&Direct<'_>) -> R) -> R {
    let mut config = RuntimeConfig::load(&t.config).expect("config");
    config.runtime.state_dir = t.dir.path().join(format!("direct-{name}-state"));
    let registry = runtime_core::plugins::discover(&config).expect("plugins");
    let section = config.hypervisor.clone().expect("[hypervisor]");
    let mut hv_settings = section.settings_json();
    hv_settings["run_dir"] = serde_json::json!(t.dir.path().join(format!("direct-{name}-vms")));
    let hypervisor = Arc::new(registry.open_hypervisor(&section.plugin, &hv_settings).expect("hypervisor"));
    let disks = config.factory.as_ref().map(|f| f.disks.clone()).unwrap_or_default();
    let vm = runtime_core::factory::vm_config(&section, None, None, disks, None);
    let factory = registry.open_vm_factory(name, &settings).unwrap_or_else(|e| panic!("factory {name}: {e}"));
    tokio::task::block_in_place(|| {
        runtime_core::factory::with_started(&config, &registry, &hypervisor.clone(), factory, |f| run(&Direct { factory: f, hypervisor, vm }))
            .unwrap_or_else(|e| panic!("starting factory {name}: {e}"))
    })
}

/// The proportional set size of process `pid` (its private pages, plus its share of the pages
/// it shares), in KiB: `Pss` of `/proc/<pid>/smaps_rollup`.
pub fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no Pss in smaps_rollup of {pid}"))
}

/// The VMM pid a state blob names.
pub fn pid_of(blob: &[u8]) -> i32 {
    let state: serde_json::Value = serde_json::from_slice(blob).expect("a JSON state blob");
    state["pid"].as_i64().expect("a started VM's pid") as i32
}

/// The median, min and max of `values`.
pub fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[0], values[values.len() - 1])
}

/// Prints `name: median M unit (min, max, n runs)`; returns the median.
pub fn line(name: &str, values: &[f64], unit: &str) -> f64 {
    let (m, lo, hi) = median(values.to_vec());
    println!("{name}: median {m:.3} {unit} (min {lo:.3}, max {hi:.3}, {} runs)", values.len());
    m
}

/// A progress line on stderr (the nested harness counts a run that prints nothing for minutes
/// as hung, and a stall is easier to place).
pub fn progress(what: &str, step: &str, since: Instant) {
    eprintln!("factory bench: {what}: {step} after {:.1} s", since.elapsed().as_secs_f64());
}

/// Waits until `t`'s factory has a ready VM (a cache's pool is warm).
pub async fn wait_warm(t: &TestRuntime) {
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
pub async fn run_to_output(t: &TestRuntime, image: &GuestImage, id: &str) -> f64 {
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

