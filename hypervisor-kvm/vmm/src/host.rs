//! Whether this host's `/dev/kvm` can run the vmm's guests: it must open read-write and the
//! CPU must have hardware virtualization (`vmx` or `svm`). A `/dev/kvm` without it (such as
//! kvm_pvm, MACHINE-FACTS.md) cannot boot a standard Linux kernel. `vmm --check-host` prints
//! the verdict; the end-to-end tests and `cargo xtask test` use it to pick their tier.

use std::io;

/// The KVM device.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Why this host cannot run the vmm's guests.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// `/dev/kvm` is missing or not accessible.
    #[error("{KVM_DEVICE} cannot be opened read-write (load kvm_intel or kvm_amd, or run as a user with access to it)")]
    Open(#[source] io::Error),
    /// `/proc/cpuinfo` could not be read.
    #[error("/proc/cpuinfo cannot be read")]
    CpuInfo(#[source] io::Error),
    /// The CPU offers no hardware virtualization.
    #[error("the CPU has no hardware virtualization (no vmx or svm flag in /proc/cpuinfo): this {KVM_DEVICE} cannot boot a standard Linux guest")]
    NoVirtualization,
}

/// Checks that this host can run the vmm's guests.
pub fn check() -> Result<(), HostError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
        .map_err(HostError::Open)?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").map_err(HostError::CpuInfo)?;
    if has_virtualization(&cpuinfo) {
        Ok(())
    } else {
        Err(HostError::NoVirtualization)
    }
}

/// Whether a `/proc/cpuinfo` text lists `vmx` or `svm` among the CPU flags.
pub fn has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::has_virtualization;

    #[test]
    fn vmx_or_svm_among_the_flags_is_virtualization() {
        assert!(has_virtualization(
            "processor\t: 0\nflags\t\t: fpu vme svm lm\n"
        ));
        assert!(has_virtualization("flags\t\t: fpu vmx\n"));
        assert!(!has_virtualization("flags\t\t: fpu vme lm hypervisor\n"));
        // Only the flags line counts.
        assert!(!has_virtualization(
            "model name\t: svm vmx\nflags\t\t: fpu\n"
        ));
        assert!(!has_virtualization(""));
    }
}
