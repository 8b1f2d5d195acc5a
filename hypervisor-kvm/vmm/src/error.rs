//! Why a VMM run failed.

/// Errors of a VMM run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The vCPU count is out of range.
    #[error("{0} vCPUs requested, 1 to {max} are supported", max = vmm_api::limits::MAX_VCPUS)]
    Vcpus(u8),
    /// Too many devices for the interrupt lines.
    #[error("{0} devices requested, at most {max} are supported", max = vmm_api::limits::MAX_DEVICES)]
    TooManyDevices(usize),
    /// Creating the console log failed.
    #[error("creating the console log {0}")]
    ConsoleLog(String, #[source] std::io::Error),
    /// Guest memory.
    #[error("guest memory")]
    Memory(#[from] crate::vstate::memory::MemoryError),
    /// ACPI tables.
    #[error("writing the ACPI tables")]
    Acpi(#[from] crate::arch::acpi::AcpiError),
    /// Loading the boot images.
    #[error("loading the guest")]
    Boot(#[from] crate::boot::BootError),
    /// The VM.
    #[error("setting up the VM")]
    Vm(#[from] crate::vstate::vm::VmSetupError),
    /// The serial device.
    #[error("setting up the serial port")]
    Serial(#[from] crate::devices::legacy::serial::SerialError),
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
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    /// The run state.
    #[error("starting the vCPUs")]
    RunState(#[from] crate::vstate::runstate::RunStateError),
    /// Seccomp filters.
    #[error("seccomp")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// The control API.
    #[error("the control API")]
    Api(#[from] crate::api::ApiError),
    /// Restoring a saved VM failed; the string names the part.
    #[error("restoring {0}")]
    Restore(String, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// `--restore` without the saved VM's RAM.
    #[error("--restore needs --memory-file: the saved VM's RAM")]
    RestoreWithoutMemory,
    /// vCPU threads did not leave KVM_RUN.
    #[error("vCPU threads did not stop")]
    StuckVcpus,
}
