//! `cargo fuzz run virtio_vsock`: the harness is `hypervisor_kvm::fuzzing::vsock` (its docs say
//! what an input holds); the unit tests run it on generated inputs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hypervisor_kvm::fuzzing::vsock::run(data));
