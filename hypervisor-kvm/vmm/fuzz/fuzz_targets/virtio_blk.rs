//! `cargo fuzz run virtio_blk`: the harness is `vmm::fuzzing::blk` (its docs say
//! what an input holds); the unit tests run it on generated inputs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmm::fuzzing::blk::run(data));
