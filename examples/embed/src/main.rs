//! Embedding `runtime-core`: what a container manager or a vendor daemon does with the
//! library, in one file.
//!
//! ```sh
//! cargo run -p embed-example -- CONFIG.toml ROOTFS.ext4
//! ```
//!
//! CONFIG is a runtime config (`[storage]`, `[hypervisor]`, see the README); ROOTFS an ext4
//! image with a busybox userland (`cargo xtask guest` builds one). The example builds a sandbox
//! config in code, runs it, streams the container's output, runs a second process in the
//! container, watches the VM with a monitor, and deletes the sandbox.

// The plugins this program links statically (a config with `static = false` loads `.so` files
// from its plugin directories instead).
use hypervisor_qemu as _;
use storage_fs as _;

use runtime_core::sandbox::{ContainerConfig, DiskConfig, ProcessConfig, RootfsConfig, Runtime, SandboxConfig};
use std::path::PathBuf;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    let colour = error_report::wants_colour(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(colour).with_max_level(tracing::Level::WARN).init();
    if let Err(e) = run().await {
        eprintln!("error: {}", runtime_core::plugins::error_chain(&*e));
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Error> {
    let mut args = std::env::args_os().skip(1);
    let (Some(config), Some(rootfs)) = (args.next(), args.next()) else {
        return Err("usage: embed-example CONFIG.toml ROOTFS.ext4".into());
    };
    let runtime = Runtime::from_file(PathBuf::from(config).as_ref())?;

    // A sandbox: one VM, one disk, one container that prints and then waits for input.
    let mut process = ProcessConfig::new(["sh", "-c", "echo container up: $(uname -sr); read name; echo hello, $name"]);
    process.env.push("GREETING=embedded".into());
    let sandbox = SandboxConfig {
        id: format!("embed-{}", std::process::id()),
        vcpus: Some(1),
        memory_mib: Some(512),
        disks: vec![DiskConfig { name: "rootfs".into(), path: PathBuf::from(rootfs), read_only: true }],
        containers: vec![ContainerConfig {
            id: "main".into(),
            rootfs: RootfsConfig::disk("rootfs"),
            process: Some(process),
            hostname: Some("embedded".into()),
            // OCI linux.resources: cgroup limits inside the VM.
            resources: Some(serde_json::json!({"pids": {"limit": 32}, "memory": {"limit": 64 << 20}})),
            oci_spec: None,
        }],
        annotations: [("owner".to_owned(), "embed-example".to_owned())].into(),
    };

    let started = std::time::Instant::now();
    let sb = runtime.run_sandbox(sandbox).await?;
    println!("sandbox {} running after {:.1} s", sb.id(), started.elapsed().as_secs_f64());
    let mut monitor = sb.monitor().await?;

    // Talk to the container's first process: its token is the container id.
    let mut io = sb.io_stream("main", "main").await?;
    io.stdin.write_all(b"library user\n").await?;
    while let Some(chunk) = io.stdout.next_chunk().await? {
        print!("main: {}", String::from_utf8_lossy(&chunk));
    }
    println!("main exited with {}", sb.wait_process("main", "main").await?);

    // The sandbox status, as a container manager would show it.
    let status = sb.status().await?;
    println!("status: sandbox {}, VM {}, containers {:?}", status.state, status.vm_status,
        status.containers.iter().map(|c| (c.id.as_str(), c.state, c.exit_status)).collect::<Vec<_>>());

    // Nothing went wrong behind our back while we worked.
    if let Ok(Some(event)) = tokio::time::timeout(std::time::Duration::from_millis(100), monitor.next()).await {
        return Err(format!("the monitor reported {event:?}").into());
    }

    let last = runtime.delete_sandbox(sb.id()).await?;
    println!("deleted sandbox {}", last.id);
    Ok(())
}
