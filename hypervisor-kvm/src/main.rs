//! `vmm`: boot a guest kernel on KVM with a serial console log.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
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
    /// Number of vCPUs (only 1 is supported).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// File receiving the guest's serial console (COM1).
    #[arg(long)]
    console_log: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .init();
    let args = Args::parse();
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        console_log: args.console_log,
    };
    match run(&config) {
        Ok(exit) => {
            tracing::info!(?exit, "guest stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = format!("vmm: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                let text = cause.to_string();
                // Some library errors already include their source in their message.
                if !msg.contains(&text) {
                    msg.push_str(&format!(": {text}"));
                }
                source = cause.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
