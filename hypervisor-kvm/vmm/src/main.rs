//! `vmm`: boot a guest kernel on KVM with virtio-mmio devices and a control API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::daemon::{daemonize, Readiness};
use vmm::devices::{self, DeviceConfig};
use vmm::seccomp::SeccompMode;
use vmm::{run, VmConfig};

/// Boot a Linux guest on KVM: an ELF vmlinux through PVH, or a bzImage.
#[derive(Debug, Parser)]
#[command(name = "vmm", version)]
struct Args {
    /// The kernel: an ELF vmlinux with a PVH entry note, or (the fallback) a bzImage booted
    /// through the Linux 64-bit boot protocol.
    #[arg(long, required_unless_present_any = ["check_host", "restore"])]
    kernel: Option<PathBuf>,
    /// Initrd (initramfs) to pass as the PVH module.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    cmdline: String,
    /// Guest RAM in MiB (32..=3072).
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Back guest RAM by this file, mapped shared (created with mode 0600, or truncated to the
    /// RAM's size): the RAM of a VM that a template will be saved from. Default: a memfd.
    #[arg(long)]
    memory_file: Option<PathBuf>,
    /// Where the API's `save` writes the VM's state (with `--memory-file`, which holds its RAM).
    #[arg(long, requires = "memory_file")]
    state_file: Option<PathBuf>,
    /// Start from a saved state (the API's `save` of a VM with the same vCPUs and devices)
    /// instead of booting: the guest goes on where it was saved. `--memory-file` is then the
    /// saved VM's RAM, mapped copy-on-write (private): the file is not changed.
    #[arg(long, requires = "memory_file", conflicts_with_all = ["kernel", "initrd", "state_file"])]
    restore: Option<PathBuf>,
    /// Number of vCPUs (1..=32).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// File receiving the guest's serial console (COM1).
    #[arg(long, required_unless_present = "check_host")]
    console_log: Option<PathBuf>,
    /// Unix socket for the control API (JSON lines: state, start, pause, resume, stop, shutdown,
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
    /// A virtio-blk disk: `path=IMAGE[,ro=on|off][,id=SERIAL]` (repeatable).
    #[arg(long = "disk", value_parser = DeviceConfig::disk)]
    disks: Vec<DeviceConfig>,
    /// A virtio-vsock device with a hybrid-vsock Unix socket: `cid=N,socket=PATH`.
    #[arg(long, value_parser = DeviceConfig::vsock)]
    vsock: Option<DeviceConfig>,
    /// A named virtio-console port on a listening Unix socket: `name=NAME,socket=PATH`
    /// (repeatable; the guest sees /sys/class/virtio-ports/*/name).
    #[arg(long = "serial-port", value_parser = DeviceConfig::serial_port)]
    serial_ports: Vec<DeviceConfig>,
    /// A virtio-net device on a tap: `tap=NAME[,mac=aa:bb:cc:dd:ee:ff]`.
    #[arg(long, value_parser = DeviceConfig::net)]
    net: Option<DeviceConfig>,
    /// A virtio-fs device served by a vhost-user backend (virtiofsd) listening on PATH:
    /// `tag=TAG,socket=PATH` (repeatable; the guest mounts it with `mount -t virtiofs TAG`).
    #[arg(long = "fs", value_parser = DeviceConfig::fs)]
    fs: Vec<DeviceConfig>,
    /// Seccomp filters on the vCPU and device threads: kill on a call outside the filter,
    /// log it, or no filters.
    #[arg(long, value_enum, default_value = "kill")]
    seccomp: SeccompMode,
    /// Only check that this host's /dev/kvm can run guests (hardware virtualization), say so
    /// and exit 0, or say why not and exit 1.
    #[arg(long, exclusive = true)]
    check_host: bool,
}

fn message(e: &dyn std::error::Error) -> String {
    format!("vmm: {}", error_report::Report(e))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check_host {
        return match vmm::host::check() {
            Ok(()) => {
                println!("vmm: this host can run guests ({} with hardware virtualization)", vmm::host::KVM_DEVICE);
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{}", message(&e));
                ExitCode::FAILURE
            }
        };
    }
    let boot = match (args.kernel, args.restore) {
        (Some(kernel), None) => vmm::vmm::Start::Boot { kernel, initrd: args.initrd },
        (None, Some(state)) => vmm::vmm::Start::Restore(state),
        _ => {
            eprintln!("vmm: one of --kernel and --restore is required");
            return ExitCode::FAILURE;
        }
    };
    let Some(console_log) = args.console_log else {
        eprintln!("vmm: --console-log is required");
        return ExitCode::FAILURE;
    };
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
    vmm::logger::init();
    let config = VmConfig {
        start: boot,
        cmdline: args.cmdline,
        memory_mib: args.memory_mib,
        memory_file: args.memory_file,
        state_file: args.state_file,
        vcpus: args.vcpus,
        console_log,
        api_socket: args.api_socket,
        start_paused: args.paused,
        seccomp: args.seccomp,
    };
    let configs: Vec<DeviceConfig> =
        args.disks.into_iter().chain(args.vsock).chain(args.serial_ports).chain(args.net).chain(args.fs).collect();
    let devices = match devices::build(&configs) {
        Ok(d) => d,
        Err(e) => {
            let msg = message(&e);
            eprintln!("{msg}");
            if let Some(r) = readiness {
                r.failed(&msg);
            }
            return ExitCode::FAILURE;
        }
    };
    let pid_file = args.pid_file.clone();
    let mut readiness = readiness;
    let mut pid_error = None;
    let result = run(&config, devices, || {
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
