//! The tasks.

use crate::build::{build_plugins, build_plugins_and, cargo, target_dir};
use crate::deps::{ensure_nextest, ensure_packages, run, BUILD_PACKAGES, TEST_PACKAGES};
use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Debian packages the main job runs with: QEMU runs the sandbox's VM.
const DEMO_PACKAGES: &[&str] = &["qemu-system-x86"];

/// `cargo xtask guest`: builds the guest image, or finds it up to date.
pub fn guest() -> Result<()> {
    let image = crate::guest::build(&target_dir()?)?;
    println!("{}", serde_json::to_string_pretty(&image)?);
    Ok(())
}

/// `cargo xtask demo`: build (the guest image too), then list the plugins and round-trip a
/// record through the configured store, with the storage plugins loaded from a plugin
/// directory.
pub fn demo() -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_packages(DEMO_PACKAGES)?;
    let target = target_dir()?;
    let image = crate::guest::build(&target)?;
    println!("guest image: kernel {}, initramfs {}", image.vmlinuz.display(), image.initramfs.display());
    build_plugins_and(false, &["sandboxctl"])?;
    let demo = target.join("demo");
    let plugins = demo.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    for dir in [&demo, &plugins] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    for lib in ["storage_fs_plugin", "storage_leveldb_plugin", "hypervisor_qemu_plugin"] {
        let name = format!("lib{lib}.so");
        install(&target.join("debug").join(&name), &plugins.join(&name))?;
    }
    let config = demo.join("config.toml");
    std::fs::write(&config, demo_config(&image, &demo))?;
    let sandbox = demo.join("sandbox.toml");
    std::fs::write(&sandbox, demo_sandbox(&image))?;
    let sandboxctl = target.join("debug/sandboxctl");
    println!("$ sandboxctl --config {} plugins", config.display());
    run(Command::new(&sandboxctl).arg("--config").arg(&config).arg("plugins"))?;
    println!("\n$ sandboxctl --config {} run --rm {}", config.display(), sandbox.display());
    let started = std::time::Instant::now();
    run(Command::new(&sandboxctl).arg("--config").arg(&config).args(["run", "--rm"]).arg(&sandbox))?;
    println!("(VM booted, container ran, sandbox deleted in {:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// The runtime config of the main job: every plugin loaded from `plugins/` (none of those
/// linked into sandboxctl), metadata in LevelDB-family storage, QEMU with the guest image.
fn demo_config(image: &crate::guest::GuestImage, demo: &Path) -> String {
    format!(
        "# Written by `cargo xtask demo`.\n\
         [plugins]\ndirs = [\"plugins\"]\n# Use only the libraries in plugins/, not those linked into sandboxctl.\nstatic = false\n\n\
         [storage]\nplugin = \"leveldb\"\npath = \"metadata\"\n\n\
         [hypervisor]\nplugin = \"qemu\"\nkernel = {:?}\ninitrd = {:?}\nvcpus = 1\nmemory_mib = 512\nrun_dir = {:?}\n\n\
         [runtime]\nstate_dir = \"state\"\n",
        image.vmlinuz,
        image.initramfs,
        demo.join("vms")
    )
}

/// The sandbox of the main job: the busybox image as disk `rootfs`, one container.
fn demo_sandbox(image: &crate::guest::GuestImage) -> String {
    format!(
        "# Written by `cargo xtask demo`: one VM, one busybox container.\n\
         id = \"demo\"\n\n[[disks]]\nname = \"rootfs\"\npath = {:?}\n\n\
         [[containers]]\nid = \"hello\"\nrootfs = {{ disk = \"rootfs\" }}\n\
         process = {{ args = [\"sh\", \"-c\", \"echo Hello from a busybox container in a VM; echo kernel $(uname -r), hostname $(hostname), pid $$; ls /\"] }}\n",
        image.rootfs
    )
}

fn install(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("so.tmp");
    std::fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// `cargo xtask test`: the whole test suite.
pub fn test(extra: &[String]) -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_packages(TEST_PACKAGES)?;
    ensure_nextest()?;
    // With sandboxctl, as the demo builds them: after `cargo xtask demo` this is a no-op.
    build_plugins_and(false, &["sandboxctl"])?;
    // The host-tier agent tests run the debug agent; the QEMU tier boots the guest image.
    run(cargo().args(["build", "-p", "guest-agent"]))?;
    crate::guest::build(&target_dir()?)?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"]))?;
    run(cargo().args(["test", "--workspace", "--doc", "--quiet"]))?;
    let result = run(cargo()
        .args(["nextest", "run", "--workspace", "--no-fail-fast", "--cargo-quiet"])
        .args(extra));
    // Tier 4: without hardware KVM here, the ::kvm end-to-end tests run in a nested L1.
    let nested = match crate::nested::suite::hardware_kvm() {
        Ok(true) => Ok("nested KVM not needed (this /dev/kvm has vmx/svm: the ::kvm end-to-end tests ran directly above)".to_owned()),
        Ok(false) => crate::nested::suite::run_suites(&crate::nested::suite::Options::default()).map(|results| {
            for line in &results {
                println!("nested KVM: {line}");
            }
            format!(
                "nested KVM ran (the ::kvm end-to-end tests on our vmm, the VM factories' included, in an L1 under QEMU/TCG: {})",
                results.join("; ")
            )
        }),
        Err(e) => Err(e),
    };
    let nested_line = match &nested {
        Ok(line) => line.clone(),
        Err(e) => format!("nested KVM FAILED ({e:#})"),
    };
    // The size line, then the tiers line last (the contract: .ci/run ends with the runner's
    // summaries and the tiers line).
    println!("{}", crate::prune::prune(&target_dir()?));
    println!("{}", tiers_line(&nested_line));
    result?;
    nested.map(|_| ())
}

/// Which tiers ran, and why any was skipped. The tests themselves skip on the same conditions
/// (and fail instead under SANDBOX_TESTS_STRICT=1, which .ci/run sets as root).
fn tiers_line(nested: &str) -> String {
    let host = if crate::deps::is_root() { "host agent ran (as root, in namespaces)".to_owned() } else { "host agent skipped (needs root)".to_owned() };
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    let qemu = if qemu { "QEMU end to end ran (TCG: the agent, and the Sandbox API through the QEMU plugin, with busybox containers)" } else { "QEMU end to end skipped (no qemu-system-x86_64)" };
    format!("tiers: unit and plugin integration ran; {host}; {qemu}; {nested}")
}

/// `cargo xtask bench`: the criterion benchmarks (release plugin libraries; `extra` goes to
/// criterion), then the guest boot figures (5 QEMU boots).
pub fn bench(extra: &[String]) -> Result<()> {
    ensure_packages(BUILD_PACKAGES)?;
    ensure_packages(TEST_PACKAGES)?;
    build_plugins(true)?;
    run(cargo().args(["bench", "-p", "integration-tests", "--bench", "storage", "--"]).args(extra))?;
    crate::guest::build(&target_dir()?)?;
    run(cargo().args(["bench", "-p", "integration-tests", "--bench", "guest_boot"]))?;
    run(cargo().args(["bench", "-p", "integration-tests", "--bench", "sandbox_lifecycle"]))?;
    run(cargo().args(["bench", "-p", "integration-tests", "--bench", "factory"]))?;
    run(cargo().args(["bench", "-p", "integration-tests", "--bench", "template"]))
}
