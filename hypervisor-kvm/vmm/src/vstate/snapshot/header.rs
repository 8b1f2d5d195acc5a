//! The header of a state file: its format, the vmm that wrote it and the CPU it ran on. A
//! state is restored only by the same vmm version on the same CPU model with the same CPUID
//! that KVM offers: anything else is refused, naming what differs, before any of the VM is
//! built from it.

use kvm_bindings::{kvm_cpuid_entry2, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};

use super::raw::Raw;
use super::SnapshotError;

/// The format this vmm writes and reads.
pub const FORMAT: &str = "sandbox-vmm-state/1";

/// The vmm's version, as a state file records it.
pub fn vmm_version() -> String {
    format!("vmm {}", env!("CARGO_PKG_VERSION"))
}

/// The host CPU: vendor and family/model/stepping, from CPUID leaves 0 and 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuModel {
    /// `GenuineIntel`, `AuthenticAMD`, ...
    pub vendor: String,
    /// Display family.
    pub family: u32,
    /// Display model.
    pub model: u32,
    /// Stepping.
    pub stepping: u32,
}

impl CpuModel {
    /// This machine's CPU.
    pub fn host() -> CpuModel {
        let (l0, l1) = (std::arch::x86_64::__cpuid(0), std::arch::x86_64::__cpuid(1));
        let vendor: Vec<u8> = [l0.ebx, l0.edx, l0.ecx].iter().flat_map(|r| r.to_le_bytes()).collect();
        let base_family = (l1.eax >> 8) & 0xf;
        let family = if base_family == 0xf { base_family + ((l1.eax >> 20) & 0xff) } else { base_family };
        let base_model = (l1.eax >> 4) & 0xf;
        let model = if base_family == 0x6 || base_family == 0xf { base_model | ((l1.eax >> 16) & 0xf) << 4 } else { base_model };
        CpuModel { vendor: String::from_utf8_lossy(&vendor).into_owned(), family, model, stepping: l1.eax & 0xf }
    }
}

impl std::fmt::Display for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} family {:#x} model {:#x} stepping {}", self.vendor, self.family, self.model, self.stepping)
    }
}

/// What a state file starts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// [`vmm_version`] of the vmm that saved it.
    pub vmm: String,
    /// The CPU it was saved on.
    pub cpu: CpuModel,
    /// KVM_GET_SUPPORTED_CPUID there: the CPUID every vCPU was given (plus its ids).
    pub cpuid: Vec<Raw<kvm_cpuid_entry2>>,
}

/// KVM's supported CPUID on this host, without the fields that name the host CPU the call
/// ran on (some KVMs, such as kvm_pvm, report its APIC ids: leaf 1 EBX bits 31:24, leaves 0xb
/// and 0x1f EDX, leaf 0x8000001e EAX), which the vmm sets per vCPU anyway: two calls on two
/// host CPUs give the same list.
pub fn supported_cpuid(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, SnapshotError> {
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(|e| SnapshotError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let mut entries = cpuid.as_slice().to_vec();
    for e in &mut entries {
        match e.function {
            1 => e.ebx &= 0x00ff_ffff,
            0xb | 0x1f => e.edx = 0,
            0x8000_001e => e.eax = 0,
            _ => {}
        }
    }
    Ok(entries)
}

impl Header {
    /// The header for a state saved here.
    pub fn here(kvm: &Kvm) -> Result<Header, SnapshotError> {
        Ok(Header { format: FORMAT.to_owned(), vmm: vmm_version(), cpu: CpuModel::host(), cpuid: supported_cpuid(kvm)?.into_iter().map(Raw).collect() })
    }

    /// Whether a state with this header can be restored by this vmm on this host: the first
    /// difference is the error.
    pub fn check(&self, here: &Header) -> Result<(), SnapshotError> {
        if self.format != here.format {
            return Err(SnapshotError::Format(format!("the state is in format {:?}; this vmm reads {:?}", self.format, here.format)));
        }
        if self.vmm != here.vmm {
            return Err(SnapshotError::OtherVmm { saved: self.vmm.clone(), running: here.vmm.clone() });
        }
        if self.cpu != here.cpu {
            return Err(SnapshotError::OtherCpu { saved: self.cpu.to_string(), here: here.cpu.to_string() });
        }
        let key = |e: &kvm_cpuid_entry2| (e.function, e.index);
        for saved in &self.cpuid {
            let found = here.cpuid.iter().find(|h| key(&h.0) == key(&saved.0));
            if found != Some(saved) {
                return Err(SnapshotError::Cpuid { function: saved.0.function, index: saved.0.index });
            }
        }
        if let Some(extra) = here.cpuid.iter().find(|h| !self.cpuid.iter().any(|s| key(&s.0) == key(&h.0))) {
            return Err(SnapshotError::Cpuid { function: extra.0.function, index: extra.0.index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        let entry = |function, eax| Raw(kvm_cpuid_entry2 { function, eax, ..Default::default() });
        Header {
            format: FORMAT.into(),
            vmm: vmm_version(),
            cpu: CpuModel { vendor: "AuthenticAMD".into(), family: 0x19, model: 0x1, stepping: 1 },
            cpuid: vec![entry(0, 0xd), entry(7, 0x1)],
        }
    }

    #[test]
    fn the_first_difference_is_named() {
        let here = header();
        header().check(&here).unwrap();
        let mut other = header();
        other.format = "sandbox-vmm-state/0".into();
        assert!(other.check(&here).unwrap_err().to_string().contains("format \"sandbox-vmm-state/0\""));
        let mut other = header();
        other.vmm = "vmm 0.0.9".into();
        let e = other.check(&here).unwrap_err().to_string();
        assert!(e.contains("vmm 0.0.9") && e.contains(&vmm_version()), "{e}");
        let mut other = header();
        other.cpu.model = 0x21;
        let e = other.check(&here).unwrap_err().to_string();
        assert!(e.contains("model 0x21") && e.contains("model 0x1 "), "{e}");
        let mut other = header();
        other.cpuid[1].0.eax = 3;
        assert!(other.check(&here).unwrap_err().to_string().contains("CPUID leaf 0x7 index 0"));
        let mut other = header();
        other.cpuid.pop();
        assert!(other.check(&here).unwrap_err().to_string().contains("CPUID leaf 0x7 index 0"));
    }

    #[test]
    fn the_cpuid_list_is_the_same_on_every_host_cpu() {
        let Ok(kvm) = Kvm::new() else { return eprintln!("skipped: this test needs /dev/kvm") };
        let on_cpu = |cpu: usize| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it
                    // for a CPU number below CPU_SETSIZE; the call pins only this thread.
                    let pinned = unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
                    };
                    pinned.then(|| supported_cpuid(&kvm).unwrap())
                })
                .join()
                .unwrap()
            })
        };
        let cpus = std::thread::available_parallelism().map_or(1, usize::from).min(4);
        let lists: Vec<_> = (0..cpus).filter_map(on_cpu).collect();
        assert!(lists.windows(2).all(|w| w[0] == w[1]), "KVM's CPUID differs between host CPUs once the APIC ids are out");
    }

    #[test]
    fn the_host_cpu_has_a_vendor() {
        let cpu = CpuModel::host();
        assert_eq!(cpu.vendor.len(), 12, "{cpu}");
        assert!(cpu.family > 0, "{cpu}");
    }
}
