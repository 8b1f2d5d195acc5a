//! `cargo fuzz run virtio_console`: the harness is `vmm::fuzzing::console` (its docs say
//! what an input holds); the unit tests run it on generated inputs too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vmm::fuzzing::console::run(data));
