//! `cargo xtask <task>`: the project's set-up and test entry points.
//!
//! - `guest`: builds the guest image (kernel, initramfs with the agent, busybox rootfs).
//! - `demo`: installs the Debian packages the build needs, builds the CLI and the plugin
//!   libraries, and runs the main job.
//! - `test`: installs what the tests need, builds the plugin libraries and runs the suite.
//! - `bench`: runs the benchmarks (release build).
//! - `nested`: boots a nested-KVM L1 under QEMU/TCG and runs a command in it.
//! - `nested-test`: runs the hypervisor-kvm end-to-end tests in that L1.
//! - `nested-bench`: our vmm against QEMU (`-M pc`, `-M microvm`), side by side in that L1;
//!   `--factory`, `--template`: the VM factory benchmarks on our vmm in that L1.

mod build;
mod deps;
mod guest;
mod nested;
mod prune;
mod tasks;

use anyhow::{bail, Result};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("guest") => tasks::guest(),
        Some("demo") => tasks::demo(),
        Some("test") => tasks::test(&args[1..]),
        Some("bench") => tasks::bench(&args[1..]),
        Some("nested") => nested::task(&args[1..]),
        Some("nested-test") => nested::suite::task(&args[1..]),
        Some("nested-bench") => nested::bench::task(&args[1..]),
        Some("nested-bench-inner") => nested::bench::inner(&args[1..]),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn usage() -> Result<()> {
    bail!("usage: cargo xtask guest | demo | test [nextest args] | bench [criterion args] | nested [--timeout SECS] [-- COMMAND...] | nested-test [--timeout SECS] | nested-bench [--rounds N] [--factory | --template]")
}
