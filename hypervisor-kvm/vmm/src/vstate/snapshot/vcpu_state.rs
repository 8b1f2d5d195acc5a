//! One vCPU's state: registers, special registers, FPU/SSE/AVX (XSAVE), XCRs, debug registers,
//! LAPIC, MSRs, pending events and MP state; with the TSC frequency it ran at.
//!
//! The order is KVM's: the MP state first (reading it settles pending LAPIC events), events
//! last; on restore the LAPIC before the MSRs (the TSC deadline needs the LAPIC's timer
//! mode) and the TSC before the TSC deadline (KVM's MSR list has that order).

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::raw::Raw;
use super::SnapshotError;

/// The x2APIC register MSRs: part of the LAPIC state, not restored as MSRs.
const X2APIC_MSRS: std::ops::RangeInclusive<u32> = 0x800..=0x8ff;
/// KVM_GET_MSRS / KVM_SET_MSRS take at most this many at once.
const MSR_CHUNK: usize = 255;

/// A vCPU's saved state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VcpuState {
    /// Running, halted, waiting for INIT/SIPI.
    pub mp_state: Raw<kvm_mp_state>,
    /// General registers.
    pub regs: Raw<kvm_regs>,
    /// Segments, control registers, descriptor tables, EFER, APIC base.
    pub sregs: Raw<kvm_sregs>,
    /// The XSAVE area (x87, SSE, AVX, ...).
    pub xsave: Raw<kvm_xsave>,
    /// Extended control registers (XCR0).
    pub xcrs: Raw<kvm_xcrs>,
    /// DR0-3, DR6, DR7.
    pub debugregs: Raw<kvm_debugregs>,
    /// The local APIC's registers.
    pub lapic: Raw<kvm_lapic_state>,
    /// Every MSR KVM could read, in KVM's order.
    pub msrs: Vec<Raw<kvm_msr_entry>>,
    /// Pending exceptions, interrupts, NMIs, SMM, interrupt shadow.
    pub events: Raw<kvm_vcpu_events>,
    /// The guest TSC's frequency in kHz, where KVM tells it.
    pub tsc_khz: Option<u32>,
}

fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, SnapshotError> {
    r.map_err(|e| SnapshotError::Kvm(what, e))
}

/// Whether this host's vCPU state fits the state file: KVM_GET_XSAVE holds 4 KiB, and a CPU
/// with more XSAVE state (AMX) would lose some.
pub fn check_host(kvm: &Kvm) -> Result<(), SnapshotError> {
    let xsave_size = kvm.check_extension_int(Cap::Xsave2);
    if xsave_size > std::mem::size_of::<kvm_xsave>() as i32 {
        return Err(SnapshotError::Shape(format!(
            "this CPU's XSAVE state is {xsave_size} bytes, more than KVM_GET_XSAVE's {} (AMX): not supported",
            std::mem::size_of::<kvm_xsave>()
        )));
    }
    Ok(())
}

/// The MSRs a vCPU's state covers: KVM's list of MSRs to save, without the x2APIC registers.
pub fn msr_indexes(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    let list = self::kvm("KVM_GET_MSR_INDEX_LIST", kvm.get_msr_index_list())?;
    Ok(list.as_slice().iter().copied().filter(|i| !X2APIC_MSRS.contains(i)).collect())
}

fn entries(indexes: impl Iterator<Item = u32>) -> Result<Msrs, SnapshotError> {
    let entries: Vec<kvm_msr_entry> = indexes.map(|index| kvm_msr_entry { index, ..Default::default() }).collect();
    Msrs::from_entries(&entries).map_err(|_| SnapshotError::Shape(format!("{} MSRs do not fit one KVM call", entries.len())))
}

/// Reads the MSRs among `indexes` that this vCPU has: KVM stops a read at the first MSR it
/// does not know (one a CPU feature the guest lacks), which is left out.
fn read_msrs(vcpu: &VcpuFd, indexes: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out = Vec::with_capacity(indexes.len());
    let mut rest: Vec<u32> = indexes.to_vec();
    while !rest.is_empty() {
        let take = rest.len().min(MSR_CHUNK);
        let mut msrs = entries(rest[..take].iter().copied())?;
        let read = kvm("KVM_GET_MSRS", vcpu.get_msrs(&mut msrs))?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // MSR `read` failed (when fewer than asked were read): skip it.
        let skip = if read < take { read + 1 } else { take };
        if read < take {
            tracing::debug!(msr = rest[read], "MSR not readable on this vCPU; not saved");
        }
        rest.drain(..skip);
    }
    Ok(out)
}

impl VcpuState {
    /// Reads the state of a vCPU that is not running (its thread parked, out of KVM_RUN), on a
    /// host that passed [`check_host`].
    pub fn capture(vcpu: &VcpuFd, msr_indexes: &[u32]) -> Result<VcpuState, SnapshotError> {
        let mp_state = Raw(self::kvm("KVM_GET_MP_STATE", vcpu.get_mp_state())?);
        let regs = Raw(self::kvm("KVM_GET_REGS", vcpu.get_regs())?);
        let sregs = Raw(self::kvm("KVM_GET_SREGS", vcpu.get_sregs())?);
        let xsave = Raw(self::kvm("KVM_GET_XSAVE", vcpu.get_xsave())?);
        let xcrs = Raw(self::kvm("KVM_GET_XCRS", vcpu.get_xcrs())?);
        let debugregs = Raw(self::kvm("KVM_GET_DEBUGREGS", vcpu.get_debug_regs())?);
        let lapic = Raw(self::kvm("KVM_GET_LAPIC", vcpu.get_lapic())?);
        let msrs = read_msrs(vcpu, msr_indexes)?.into_iter().map(Raw).collect();
        let events = Raw(self::kvm("KVM_GET_VCPU_EVENTS", vcpu.get_vcpu_events())?);
        let tsc_khz = vcpu.get_tsc_khz().ok();
        Ok(VcpuState { mp_state, regs, sregs, xsave, xcrs, debugregs, lapic, msrs, events, tsc_khz })
    }

    /// Loads the state into a vCPU created with the same CPUID, before it first runs.
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), SnapshotError> {
        if let Some(khz) = self.tsc_khz {
            let here = vcpu.get_tsc_khz().ok();
            if here != Some(khz) {
                kvm("KVM_SET_TSC_KHZ", vcpu.set_tsc_khz(khz)).map_err(|_| SnapshotError::Tsc { saved: khz, here })?;
            }
        }
        kvm("KVM_SET_MP_STATE", vcpu.set_mp_state(self.mp_state.0))?;
        kvm("KVM_SET_REGS", vcpu.set_regs(&self.regs.0))?;
        kvm("KVM_SET_SREGS", vcpu.set_sregs(&self.sregs.0))?;
        kvm("KVM_SET_XSAVE", {
            // SAFETY: the buffer is a `kvm_xsave` read by KVM_GET_XSAVE on a vCPU with the
            // same CPUID (the header check), so it is as large as KVM expects.
            unsafe { vcpu.set_xsave(&self.xsave.0) }
        })?;
        kvm("KVM_SET_XCRS", vcpu.set_xcrs(&self.xcrs.0))?;
        kvm("KVM_SET_DEBUGREGS", vcpu.set_debug_regs(&self.debugregs.0))?;
        kvm("KVM_SET_LAPIC", vcpu.set_lapic(&self.lapic.0))?;
        for chunk in self.msrs.chunks(MSR_CHUNK) {
            let msrs = Msrs::from_entries(&chunk.iter().map(|m| m.0).collect::<Vec<_>>()).map_err(|_| SnapshotError::Shape("MSR chunk".into()))?;
            let written = kvm("KVM_SET_MSRS", vcpu.set_msrs(&msrs))?;
            if written < chunk.len() {
                return Err(SnapshotError::Msr(chunk[written].0.index));
            }
        }
        let mut events = self.events.0;
        events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
        kvm("KVM_SET_VCPU_EVENTS", vcpu.set_vcpu_events(&events))?;
        Ok(())
    }
}
