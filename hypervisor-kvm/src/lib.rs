//! A minimal KVM micro-VMM: boots an ELF `vmlinux` through its PVH entry with an initrd and a
//! 16550 serial console written to a log file. [`plugin`] is the `kvm` hypervisor plugin that
//! runs it, one daemonized `vmm` per VM.
#![deny(missing_docs)]

pub mod acpi;
pub mod api;
pub mod boot;
pub mod bus;
pub mod bzimage;
pub mod daemon;
pub mod devices;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod host;
pub mod layout;
pub mod memory;
pub mod pio;
pub mod plugin;
pub mod runstate;
pub mod seccomp;
pub mod serial;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod vmm;

pub use vcpu::GuestExit;
pub use vmm::{run, VmConfig};

/// Errors of a VMM run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The vCPU count is out of range.
    #[error("{0} vCPUs requested, 1 to {max} are supported", max = layout::MAX_VCPUS)]
    Vcpus(u8),
    /// Too many devices for the interrupt lines.
    #[error("{0} devices requested, at most {max} are supported", max = layout::MAX_DEVICES)]
    TooManyDevices(usize),
    /// Creating the console log failed.
    #[error("creating the console log {0}")]
    ConsoleLog(String, #[source] std::io::Error),
    /// Guest memory.
    #[error("guest memory")]
    Memory(#[from] memory::MemoryError),
    /// ACPI tables.
    #[error("writing the ACPI tables")]
    Acpi(#[from] acpi::AcpiError),
    /// Loading the boot images.
    #[error("loading the guest")]
    Boot(#[from] boot::BootError),
    /// The VM.
    #[error("setting up the VM")]
    Vm(#[from] vm::VmError),
    /// The serial device.
    #[error("setting up the serial port")]
    Serial(#[from] serial::SerialError),
    /// A device's eventfds.
    #[error("setting up {0}")]
    Device(&'static str, #[source] std::io::Error),
    /// KVM_IOEVENTFD failed.
    #[error("registering the queue notify ioeventfds of {0}")]
    Ioeventfd(&'static str, #[source] kvm_ioctls::Error),
    /// Installing the vCPU kick signal handler failed.
    #[error("installing the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// Spawning a thread failed.
    #[error("spawning a vCPU thread")]
    Thread(#[source] std::io::Error),
    /// A vCPU.
    #[error("vCPU")]
    Vcpu(#[from] vcpu::VcpuError),
    /// The run state.
    #[error("starting the vCPUs")]
    RunState(#[from] runstate::RunStateError),
    /// Seccomp filters.
    #[error("seccomp")]
    Seccomp(#[from] seccomp::SeccompError),
    /// The control API.
    #[error("the control API")]
    Api(#[from] api::ApiError),
    /// vCPU threads did not leave KVM_RUN.
    #[error("vCPU threads did not stop")]
    StuckVcpus,
}
