//! Installing what the build and the tests need: Debian packages and cargo-nextest.

use anyhow::{bail, Context, Result};
use std::process::Command;

/// Debian packages the build needs: a C++ compiler for RocksDB and libclang for bindgen.
pub const BUILD_PACKAGES: &[&str] = &["g++", "libclang-dev", "zlib1g"];

/// Debian packages the tests need: QEMU for the end-to-end tier, busybox for the container
/// rootfs, e2fsprogs for its ext4 image, util-linux's unshare for the host agent tier,
/// bsdutils' script(1) for the CLI's interactive terminal test.
pub const TEST_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "e2fsprogs", "util-linux", "bsdutils"];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Installs the missing packages with apt-get (as root) or says how to.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages; run: sudo apt-get install -y {}", missing.join(" "));
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Installs cargo-nextest from crates.io if it is missing.
pub fn ensure_nextest() -> Result<()> {
    let present = Command::new("cargo").args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("xtask: installing cargo-nextest (once)");
        run(Command::new("cargo").args(["install", "--locked", "cargo-nextest"]))?;
    }
    Ok(())
}

/// Runs a command, failing if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
