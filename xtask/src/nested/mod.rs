//! The nested-KVM harness (test tier 4): QEMU with TCG and `-cpu max` boots a Linux L1 whose
//! CPU has AMD SVM; L1 loads `kvm_amd`, so it has a working `/dev/kvm` although this host's
//! does not boot standard kernels (MACHINE-FACTS.md). The host's root is shared into L1
//! read-only over 9p; a command runs there, chrooted into the host's tree, and its output and
//! exit status come back over the serial console.
//!
//! `cargo xtask nested [--timeout SECS] [-- COMMAND...]`: without a command, checks that L1
//! has `/dev/kvm`. Every step has a timeout; a hung L1 is retried once, and the report says
//! which step hung (`nested-test` boots up to three L1s, each resuming the suites where the
//! last one stopped).

pub mod bench;
mod l1;
mod progress;
mod run;
pub mod suite;

pub use run::run;

use anyhow::{bail, Result};
use std::time::Duration;

/// The value of a `--timeout SECS` option.
pub fn timeout_arg(value: Option<&String>) -> Result<Duration> {
    match value.and_then(|s| s.parse::<u64>().ok()).filter(|s| *s > 0) {
        Some(secs) => Ok(Duration::from_secs(secs)),
        None => bail!("--timeout needs a number of seconds"),
    }
}

/// `cargo xtask nested ...`
pub fn task(args: &[String]) -> Result<()> {
    let mut timeout = Duration::from_secs(600);
    let mut command: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--timeout" => timeout = timeout_arg(it.next())?,
            "--" => {
                command = it.by_ref().cloned().collect();
            }
            other => bail!("unknown argument {other:?}; usage: cargo xtask nested [--timeout SECS] [-- COMMAND...]"),
        }
    }
    if command.is_empty() {
        command = vec!["sh".into(), "-c".into(), "ls -l /dev/kvm && grep -c svm /proc/cpuinfo".into()];
    }
    let target = crate::build::target_dir()?;
    let image = l1::build_with(&target, &command)?;
    let outcome = run(&image, timeout)?;
    println!("nested: L1 up in {:.1} s, /dev/kvm {}", outcome.boot.as_secs_f64(), if outcome.kvm { "works" } else { "MISSING" });
    println!("nested: command exited with {} after {:.1} s", outcome.status, outcome.ran.as_secs_f64());
    if outcome.status != 0 {
        bail!("the command failed in L1 (exit status {})", outcome.status);
    }
    Ok(())
}
