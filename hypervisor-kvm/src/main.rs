//! `vmm`: boot a guest kernel on KVM with virtio-mmio devices and a control API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hypervisor_kvm::daemon::{daemonize, Readiness};
use hypervisor_kvm::seccomp::SeccompMode;
use hypervisor_kvm::{run, VmConfig};

/// Boot an ELF vmlinux (PVH) on KVM.
#[derive(Debug, Parser)]
#[command(name = "vmm", version)]
struct Args {
    /// ELF vmlinux with a PVH entry note.
    #[arg(long)]
    kernel: PathBuf,
    /// Initrd (initramfs) to pass as the PVH module.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    cmdline: String,
    /// Guest RAM in MiB (32..=3072).
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Number of vCPUs (1..=32).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// File receiving the guest's serial console (COM1).
    #[arg(long)]
    console_log: PathBuf,
    /// Unix socket for the control API (JSON lines: state, start, pause, resume, shutdown,
    /// devices).
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Build the VM but start the vCPUs only on the API's `start`.
    #[arg(long, requires = "api_socket")]
    paused: bool,
    /// Fork into the background once the VM is built (the parent exits 0 then, or 1 with
    /// the error).
    #[arg(long)]
    daemonize: bool,
    /// Write the vmm's pid here once the VM is built.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Seccomp filters on the vCPU and device threads: kill on a call outside the filter,
    /// log it, or no filters.
    #[arg(long, value_enum, default_value = "kill")]
    seccomp: SeccompMode,
}

fn message(e: &dyn std::error::Error) -> String {
    let mut msg = format!("vmm: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some library errors already include their source in their message.
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    msg
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread exists (the log subscriber starts none).
    let readiness: Option<Readiness> = if args.daemonize {
        match daemonize() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("vmm: daemonizing: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        console_log: args.console_log,
        api_socket: args.api_socket,
        start_paused: args.paused,
        seccomp: args.seccomp,
    };
    let pid_file = args.pid_file.clone();
    let mut readiness = readiness;
    let mut pid_error = None;
    let result = run(&config, Vec::new(), || {
        if let Some(path) = &pid_file {
            if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
                pid_error = Some(format!("vmm: writing the pid file {}: {e}", path.display()));
            }
        }
        if let Some(r) = readiness.take() {
            r.ready();
        }
    });
    if let Some(path) = &pid_file {
        let _ = std::fs::remove_file(path);
    }
    if let Some(e) = pid_error {
        eprintln!("{e}");
    }
    match result {
        Ok(exit) => {
            tracing::info!(?exit, "guest stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let msg = message(&e);
            eprintln!("{msg}");
            if let Some(r) = readiness.take() {
                r.failed(&msg);
            }
            ExitCode::FAILURE
        }
    }
}
