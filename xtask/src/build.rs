//! Building what the tasks need: cargo itself, the target directory, the plugin libraries
//! and the vmm. The tasks (`tasks.rs`) and the nested harness (`nested/`) both use these; this
//! module uses neither.

use crate::deps::run;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The plugin libraries the workspace builds; tests and the demo load them from the target
/// directory.
pub const PLUGIN_PACKAGES: &[&str] = &[
    "storage-fs-plugin",
    "storage-leveldb-plugin",
    "hypervisor-qemu-plugin",
    "hypervisor-kvm-plugin",
    "factory-new-plugin",
    "factory-cache-plugin",
    "factory-template-plugin",
    "panicky-plugin",
];

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

pub fn target_dir() -> Result<PathBuf> {
    let out = cargo().args(["metadata", "--format-version", "1", "--no-deps"]).output()?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata")?;
    Ok(PathBuf::from(meta["target_directory"].as_str().context("target_directory")?))
}

pub fn build_plugins(release: bool) -> Result<()> {
    build_plugins_and(release, &[])
}

/// The plugin libraries and the packages `also` in one cargo invocation (one feature
/// resolution, so what they share is built once).
pub fn build_plugins_and(release: bool, also: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    for p in PLUGIN_PACKAGES.iter().chain(also) {
        cmd.args(["-p", p]);
    }
    run(&mut cmd)
}

/// What the nested tier runs besides the test binaries: the vmm and the plugin libraries.
pub fn build_for_nested() -> Result<()> {
    run(cargo().args(["build", "-p", "vmm", "--bins"]))?;
    build_plugins(false)
}

/// The release vmm, for the benchmarks.
pub fn build_vmm_release() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "vmm", "--bin", "vmm"]))
}

/// Runs cargo with `args` (a `--no-run` build) and returns its `compiler-artifact` messages.
pub fn artifacts(args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let out = cargo().args(args).args(["--message-format=json", "--quiet"]).output().with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !out.status.success() {
        anyhow::bail!("cargo {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .collect())
}

/// The executable of the target named `name` among `artifacts` for which `wanted` holds.
pub fn find_executable(artifacts: &[serde_json::Value], name: &str, wanted: impl Fn(&serde_json::Value) -> bool) -> Option<PathBuf> {
    artifacts.iter().filter(|msg| msg["target"]["name"] == name && wanted(msg)).find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
}

/// Runs cargo with `args` (a `--no-run` build) and returns the executable of the target named
/// `name` among the artifacts for which `wanted` holds (cargo's JSON message).
pub fn executable(args: &[&str], name: &str, wanted: impl Fn(&serde_json::Value) -> bool) -> Result<PathBuf> {
    find_executable(&artifacts(args)?, name, wanted).with_context(|| format!("cargo {} did not name the executable of {name}", args.join(" ")))
}
