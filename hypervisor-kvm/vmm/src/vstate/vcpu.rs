//! The boot vCPU: CPUID, LAPIC, PVH entry registers (32-bit protected mode, paging off), and
//! the run loop.

use kvm_bindings::{
    kvm_segment, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::{BootInfo, BootMode, CODE_SELECTOR, DATA_SELECTOR, GDT, GDT_ADDR, TSS_SELECTOR};
use crate::boot::bzimage::{BOOT_STACK, GDT64, PML4_ADDR};
use crate::devices::bus::Bus;
use crate::devices::legacy::pio::PioAction;
use crate::logger::RateLimit;
use crate::vstate::runstate::RunControl;
use crate::vstate::snapshot::VcpuState;
use crate::vstate::vm::Vm;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;
const CPUID_HYPERVISOR_BIT: u32 = 1 << 31;

/// Errors of the vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed; the string names it.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// KVM could not enter the guest.
    #[error("KVM_EXIT_FAIL_ENTRY, hardware reason {0:#x}")]
    FailEntry(u64),
    /// KVM reported an internal error (for example emulation failure).
    #[error("KVM_EXIT_INTERNAL_ERROR")]
    InternalError,
    /// The vCPU thread could not install its seccomp filter.
    #[error("installing the vCPU seccomp filter")]
    Seccomp(#[source] crate::seccomp::SeccompError),
}

/// Why the guest stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// Triple fault or an ACPI/PSCI-style shutdown.
    Shutdown,
    /// The guest asked for a reset (`reboot=k`, triple fault on some paths).
    Reset,
    /// HLT reached userspace (only without an in-kernel LAPIC).
    Halted,
    /// The vmm stopped the vCPU (shutdown through the control API).
    Stopped,
}

fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuError> {
    r.map_err(|e| VcpuError::Kvm(what, e))
}

/// A flat 4 GiB segment from a GDT entry (`type_` 0xb: code, 0x3: data).
pub fn flat_segment(selector: u16, entry: u64) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        ..Default::default()
    }
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (dst, src) in raw.iter_mut().zip(&regs[offset..offset + 4]) {
        *dst = *src as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (dst, src) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *dst = src as std::os::raw::c_char;
    }
}

/// Creates vCPU `id` of `count`. The boot vCPU (`boot` given) starts at the PVH entry
/// point; the others wait for the INIT/SIPI the guest sends through the in-kernel LAPIC.
pub fn create_vcpu(
    vm: &Vm,
    id: u8,
    count: u8,
    boot: Option<BootInfo>,
) -> Result<VcpuFd, VcpuError> {
    let vcpu = kvm("KVM_CREATE_VCPU", vm.fd.create_vcpu(u64::from(id)))?;

    let mut cpuid = kvm(
        "KVM_GET_SUPPORTED_CPUID",
        vm.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
    )?;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            // Initial APIC ID, logical CPU count; we run under a hypervisor (enables kvmclock).
            1 => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                entry.ecx |= CPUID_HYPERVISOR_BIT;
            }
            // x2APIC ID in the topology leaves.
            0xb | 0x1f => entry.edx = u32::from(id),
            _ => {}
        }
    }
    kvm("KVM_SET_CPUID2", vcpu.set_cpuid2(&cpuid))?;

    // Virtual-wire mode until the guest programs the LAPIC: PIC on LINT0, NMI on LINT1.
    let mut lapic = kvm("KVM_GET_LAPIC", vcpu.get_lapic())?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT_LINT1, APIC_MODE_NMI);
    kvm("KVM_SET_LAPIC", vcpu.set_lapic(&lapic))?;

    let Some(boot) = boot else { return Ok(vcpu) };
    let gdt = if boot.mode == BootMode::Pvh { &GDT } else { &GDT64 };
    let mut sregs = kvm("KVM_GET_SREGS", vcpu.get_sregs())?;
    sregs.cs = flat_segment(CODE_SELECTOR, gdt[1]);
    let data = flat_segment(DATA_SELECTOR, gdt[2]);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        limit: 0x67,
        ..flat_segment(TSS_SELECTOR, gdt[3])
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    let mut regs = kvm("KVM_GET_REGS", vcpu.get_regs())?;
    regs.rflags = 0x2;
    regs.rip = boot.entry;
    match boot.mode {
        BootMode::Pvh => {
            sregs.cr0 = CR0_PE;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = boot.start_info;
        }
        BootMode::Linux64 => {
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rsi = boot.start_info;
            regs.rsp = BOOT_STACK;
            regs.rbp = BOOT_STACK;
        }
    }
    kvm("KVM_SET_SREGS", vcpu.set_sregs(&sregs))?;
    kvm("KVM_SET_REGS", vcpu.set_regs(&regs))?;
    Ok(vcpu)
}

/// Runs vCPU `id` until the guest stops or `control` stops it; parks while the VM is created
/// or paused, and reads its state (with the MSRs in `msrs`) when a save asks while parked.
/// Guest-triggerable oddities are logged (rate-limited) and ignored.
pub fn run(vcpu: &mut VcpuFd, id: usize, msrs: &[u32], bus: &Bus, control: &RunControl) -> Result<GuestExit, VcpuError> {
    let mut other = RateLimit::default();
    loop {
        let saving = &mut || VcpuState::capture(vcpu, msrs).map_err(|e| error_report::chain(&e));
        if !control.checkpoint_saving(id, saving) {
            return Ok(GuestExit::Stopped);
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Err(VcpuError::Kvm("KVM_RUN", e)),
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                if bus.pio_write(port, data) == PioAction::Reset {
                    return Ok(GuestExit::Reset);
                }
            }
            VcpuExit::IoIn(port, data) => bus.pio_read(port, data),
            VcpuExit::MmioRead(addr, data) => bus.mmio_read(addr, data),
            VcpuExit::MmioWrite(addr, data) => bus.mmio_write(addr, data),
            VcpuExit::Hlt => return Ok(GuestExit::Halted),
            VcpuExit::Shutdown => return Ok(GuestExit::Shutdown),
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => return Ok(GuestExit::Reset),
            VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => return Ok(GuestExit::Shutdown),
            VcpuExit::FailEntry(reason, _) => return Err(VcpuError::FailEntry(reason)),
            VcpuExit::InternalError => return Err(VcpuError::InternalError),
            VcpuExit::Intr => {}
            exit => {
                if other.hit() {
                    tracing::warn!(?exit, "unhandled vCPU exit ignored");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_from_the_gdt() {
        let cs = flat_segment(CODE_SELECTOR, GDT[1]);
        assert_eq!(
            (cs.type_, cs.present, cs.s, cs.db, cs.g, cs.l, cs.dpl),
            (0xb, 1, 1, 1, 1, 0, 0)
        );
        let ds = flat_segment(DATA_SELECTOR, GDT[2]);
        assert_eq!((ds.type_, ds.s, ds.db, ds.limit), (0x3, 1, 1, 0xffff_ffff));
        let tr = flat_segment(TSS_SELECTOR, GDT[3]);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
    }

    #[test]
    fn lvt_delivery_mode() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT_LINT0 + 2] = 1; // mask bit 16
        set_lvt_mode(&mut regs, APIC_LVT_LINT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT_LINT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT_LINT0 + 2], 1);
    }
}
