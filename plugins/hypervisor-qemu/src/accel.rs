//! KVM or TCG. The decision is a pure function of what the host shows ([`decide`]), so it can
//! be tested with made-up `/proc/cpuinfo` text; [`probe`] gathers the real inputs.
//!
//! Some hosts have a `/dev/kvm` that is not hardware virtualization (`kvm_pvm`, see
//! MACHINE-FACTS.md): it opens and answers ioctls but cannot boot a standard kernel. The CPU
//! flags tell them apart: hardware KVM needs `vmx` (Intel) or `svm` (AMD).

use crate::config::AccelChoice;
use serde::{Deserialize, Serialize};

/// The accelerator a VM runs with.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// `-accel kvm -cpu host`.
    Kvm,
    /// `-accel tcg -cpu max`.
    Tcg,
}

impl Accel {
    /// QEMU's `-accel` value.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// QEMU's `-cpu` value.
    pub fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// What opening `/dev/kvm` read-write gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmDevice {
    /// It opened.
    Openable,
    /// There is no `/dev/kvm`.
    Missing,
    /// It exists but did not open (the error text).
    Unopenable(String),
}

/// Why `accel = "kvm"` cannot be honoured.
#[derive(Debug, thiserror::Error)]
#[error("accel \"kvm\" was requested but KVM is unusable: {0}")]
pub struct AccelError(pub String);

/// The first hardware virtualization flag (`vmx` or `svm`) on a `flags` line of `cpuinfo`.
pub fn virtualization_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .flat_map(|(_, value)| value.split_whitespace());
    for flag in flags {
        match flag {
            "vmx" => return Some("vmx"),
            "svm" => return Some("svm"),
            _ => {}
        }
    }
    None
}

/// Decides the accelerator from the config and what the host shows; returns it with the
/// reason, for the log.
pub fn decide(choice: AccelChoice, kvm: &KvmDevice, cpuinfo: &str) -> Result<(Accel, String), AccelError> {
    if choice == AccelChoice::Tcg {
        return Ok((Accel::Tcg, "using TCG: the plugin config says accel = \"tcg\"".into()));
    }
    let unusable = match (kvm, virtualization_flag(cpuinfo)) {
        (KvmDevice::Openable, Some(flag)) => {
            let why = match choice {
                AccelChoice::Kvm => "the plugin config says accel = \"kvm\"".to_owned(),
                _ => format!("/dev/kvm opens read-write and the CPU has the {flag} flag"),
            };
            return Ok((Accel::Kvm, format!("using KVM: {why}")));
        }
        (KvmDevice::Missing, _) => "/dev/kvm does not exist".to_owned(),
        (KvmDevice::Unopenable(e), _) => format!("/dev/kvm cannot be opened read-write ({e})"),
        (KvmDevice::Openable, None) => {
            "/dev/kvm exists but the CPU has no vmx/svm flag (this /dev/kvm cannot boot a standard kernel)".to_owned()
        }
    };
    match choice {
        AccelChoice::Kvm => Err(AccelError(unusable)),
        _ => Ok((Accel::Tcg, format!("using TCG: {unusable}"))),
    }
}

/// Looks at this host: opens `/dev/kvm` read-write and reads `/proc/cpuinfo`.
pub fn probe() -> (KvmDevice, String) {
    let kvm = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => KvmDevice::Openable,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => KvmDevice::Missing,
        Err(e) => KvmDevice::Unopenable(e.to_string()),
    };
    (kvm, std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse vmx sse2\nbugs\t\t: spectre_v1\n\n\
        processor\t: 1\nflags\t\t: fpu vme de pse vmx sse2\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu svm lm\n";
    const PVM: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme hypervisor lm\nvmx flags\t: vnmi\n";

    #[test]
    fn flags() {
        assert_eq!(virtualization_flag(INTEL), Some("vmx"));
        assert_eq!(virtualization_flag(AMD), Some("svm"));
        // `vmx flags` is a different line; a `flags` line without vmx/svm is not enough.
        assert_eq!(virtualization_flag(PVM), None);
        assert_eq!(virtualization_flag(""), None);
        assert_eq!(virtualization_flag("flags: svmx vmxx\n"), None);
    }

    #[test]
    fn auto_uses_kvm_only_with_a_flag_and_an_openable_device() {
        let (accel, why) = decide(AccelChoice::Auto, &KvmDevice::Openable, INTEL).unwrap();
        assert_eq!(accel, Accel::Kvm);
        assert!(why.contains("vmx"), "{why}");
        assert_eq!(decide(AccelChoice::Auto, &KvmDevice::Openable, AMD).unwrap().0, Accel::Kvm);

        let (accel, why) = decide(AccelChoice::Auto, &KvmDevice::Openable, PVM).unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("no vmx/svm flag") && why.contains("cannot boot a standard kernel"), "{why}");

        let (accel, why) = decide(AccelChoice::Auto, &KvmDevice::Missing, INTEL).unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("does not exist"), "{why}");

        let denied = KvmDevice::Unopenable("Permission denied".into());
        let (accel, why) = decide(AccelChoice::Auto, &denied, INTEL).unwrap();
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("Permission denied"), "{why}");
    }

    #[test]
    fn kvm_requested_but_unusable_says_why() {
        let e = decide(AccelChoice::Kvm, &KvmDevice::Openable, PVM).unwrap_err().to_string();
        assert!(e.contains("\"kvm\"") && e.contains("no vmx/svm flag"), "{e}");
        let e = decide(AccelChoice::Kvm, &KvmDevice::Missing, INTEL).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert_eq!(decide(AccelChoice::Kvm, &KvmDevice::Openable, AMD).unwrap().0, Accel::Kvm);
    }

    #[test]
    fn tcg_is_always_possible() {
        for kvm in [KvmDevice::Openable, KvmDevice::Missing] {
            assert_eq!(decide(AccelChoice::Tcg, &kvm, INTEL).unwrap().0, Accel::Tcg);
        }
        assert_eq!((Accel::Kvm.cpu(), Accel::Tcg.cpu()), ("host", "max"));
    }
}
