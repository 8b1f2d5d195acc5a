//! Round trips through KVM: these need `/dev/kvm` (any KVM: the ioctls, not a guest), and skip
//! without it unless `SANDBOX_TESTS_STRICT` is set.

use super::*;
use crate::vstate::{memory, vcpu, vm::Vm};

fn vm_or_skip() -> Option<(Vm, vm_memory::GuestMemoryMmap)> {
    let mem = memory::create_guest_memory_backed(64, memory::Backing::Memfd).expect("guest memory");
    match Vm::new(&mem) {
        Ok(vm) => Some((vm, mem)),
        Err(e) if std::env::var_os("SANDBOX_TESTS_STRICT").is_none() => {
            eprintln!("skipped: this test needs /dev/kvm ({e})");
            None
        }
        Err(e) => panic!("SANDBOX_TESTS_STRICT is set and /dev/kvm does not work: {e}"),
    }
}

#[test]
fn a_vcpu_and_the_chips_round_trip_through_a_state_file() {
    let Some((vm, _mem)) = vm_or_skip() else { return };
    let cpu = vcpu::create_vcpu(&vm, 0, 1, None).unwrap();
    let mut regs = cpu.get_regs().unwrap();
    (regs.rax, regs.rip, regs.r15) = (0x1234, 0xfff0, 0xdead_beef);
    cpu.set_regs(&regs).unwrap();
    let indexes = vcpu_state::msr_indexes(&vm.kvm).unwrap();
    vcpu_state::check_host(&vm.kvm).unwrap();
    let saved = VcpuState::capture(&cpu, &indexes).unwrap();
    assert!(!saved.msrs.is_empty());
    let state = StateFile { header: Header::here(&vm.kvm).unwrap(), kvm: KvmState { chip: ChipState::capture(&vm.fd).unwrap(), vcpus: vec![saved] }, devices: () };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    write(&path, &state).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    let back: StateFile<()> = read(&path, &Header::here(&vm.kvm).unwrap()).unwrap();
    let Some((vm2, _mem2)) = vm_or_skip() else { return };
    let cpu2 = vcpu::create_vcpu(&vm2, 0, 1, None).unwrap();
    back.kvm.chip.restore(&vm2.fd).unwrap();
    back.kvm.vcpus[0].restore(&cpu2).unwrap();
    let again = VcpuState::capture(&cpu2, &indexes).unwrap();
    let regs2 = again.regs.0;
    assert_eq!((regs2.rax, regs2.rip, regs2.r15), (0x1234, 0xfff0, 0xdead_beef));
    assert_eq!(again.sregs, back.kvm.vcpus[0].sregs);
    assert_eq!(again.lapic.0.regs[..0x400], back.kvm.vcpus[0].lapic.0.regs[..0x400]);
    assert_eq!(again.msrs.len(), back.kvm.vcpus[0].msrs.len());
    let chips = ChipState::capture(&vm2.fd).unwrap();
    assert_eq!(chips.ioapic, back.kvm.chip.ioapic);
}

#[test]
fn a_state_from_another_vmm_is_refused_before_it_is_decoded() {
    let Some((vm, _mem)) = vm_or_skip() else { return };
    let here = Header::here(&vm.kvm).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut other = here.clone();
    other.vmm = "vmm 0.0.1".into();
    // The rest is not a KVM state at all: the header's refusal comes first.
    std::fs::write(&path, serde_json::to_vec(&serde_json::json!({"header": other, "kvm": "garbage", "devices": null})).unwrap()).unwrap();
    let e = read::<()>(&path, &here).unwrap_err().to_string();
    assert!(e.contains("saved by vmm 0.0.1") && e.contains("make the template again"), "{e}");

    std::fs::write(&path, b"{\"header\": 7}").unwrap();
    let e = read::<()>(&path, &here).unwrap_err().to_string();
    assert!(e.starts_with("not a vmm state file"), "{e}");
    let e = read::<()>(&dir.path().join("missing"), &here).unwrap_err().to_string();
    assert!(e.contains("reading") && e.contains("missing"), "{e}");
}
