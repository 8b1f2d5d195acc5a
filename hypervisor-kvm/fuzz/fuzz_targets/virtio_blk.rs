//! `cargo fuzz run virtio_blk`: the harness is `hypervisor_kvm::fuzzing::blk` (its docs say
//! what an input holds); the unit tests run it on generated inputs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hypervisor_kvm::fuzzing::blk::run(data));
