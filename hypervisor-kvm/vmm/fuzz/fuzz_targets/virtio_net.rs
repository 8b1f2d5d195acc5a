//! `cargo fuzz run virtio_net`: the harness is `vmm::fuzzing::net` (its docs say
//! what an input holds); the unit tests run it on generated inputs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmm::fuzzing::net::run(data));
