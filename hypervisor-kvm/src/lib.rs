//! A minimal KVM micro-VMM: boots an ELF `vmlinux` through its PVH entry with an initrd and a
//! 16550 serial console written to a log file.
#![deny(missing_docs)]

pub mod boot;
pub mod memory;
pub mod pio;
pub mod serial;
pub mod vcpu;
pub mod virtio;
pub mod vm;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

pub use vcpu::GuestExit;

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// ELF vmlinux with a PVH note.
    pub kernel: PathBuf,
    /// Optional initrd/initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs (only 1 for now).
    pub vcpus: u8,
    /// Where the serial console output goes.
    pub console_log: PathBuf,
}

/// Errors of a VMM run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Only one vCPU is supported so far.
    #[error("{0} vCPUs requested, only 1 is supported")]
    Vcpus(u8),
    /// Creating the console log failed.
    #[error("creating the console log {0}")]
    ConsoleLog(String, #[source] std::io::Error),
    /// Guest memory.
    #[error("guest memory")]
    Memory(#[from] memory::MemoryError),
    /// Loading the boot images.
    #[error("loading the guest")]
    Boot(#[from] boot::BootError),
    /// The VM.
    #[error("setting up the VM")]
    Vm(#[from] vm::VmError),
    /// The serial device.
    #[error("setting up the serial port")]
    Serial(#[from] serial::SerialError),
    /// The vCPU.
    #[error("vCPU 0")]
    Vcpu(#[from] vcpu::VcpuError),
}

/// Boots the guest and runs it until it shuts down or resets.
pub fn run(config: &VmConfig) -> Result<GuestExit, VmmError> {
    if config.vcpus != 1 {
        return Err(VmmError::Vcpus(config.vcpus));
    }
    let log = File::create(&config.console_log)
        .map_err(|e| VmmError::ConsoleLog(config.console_log.display().to_string(), e))?;
    let mem = memory::create_guest_memory(config.memory_mib)?;
    let boot = boot::load(
        &mem,
        &config.kernel,
        config.initrd.as_deref(),
        &config.cmdline,
    )?;
    let vm = vm::Vm::new(&mem)?;
    let (serial, serial_evt) = serial::SerialPort::new(log)?;
    vm.register_irqfd(&serial_evt, serial::COM1_IRQ)?;
    let mut vcpu = vcpu::create_boot_vcpu(&vm, boot)?;
    let mut bus = pio::PioBus::new(serial);
    tracing::info!(entry = boot.entry, "starting vCPU 0");
    let result = vcpu::run(&mut vcpu, &mut bus);
    let total: u64 = bus.exits.values().sum();
    tracing::info!(total, busiest = ?bus.busiest_ports(8), "port I/O exits");
    if let Err(e) = bus.serial.writer_mut().flush() {
        tracing::warn!(error = %e, "flushing the console log");
    }
    // `mem` must outlive the VM's memory slot: drop the vCPU and VM first.
    drop(vcpu);
    drop(vm);
    drop(mem);
    Ok(result?)
}
