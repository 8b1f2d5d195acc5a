//! `cargo xtask guest`: the guest image, made from Debian packages and our agent.
//!
//! Outputs, in `<target>/guest/`:
//! - `vmlinuz`: Debian's bzImage; `vmlinux`: the ELF kernel inside it (booted through PVH);
//! - `initramfs.img`: gzip cpio whose `/init` is the agent, with the modules it loads
//!   (listed in load order in `/etc/agent/modules`);
//! - `busybox-rootfs.ext4`: a container rootfs for tests and the demo;
//! - `manifest.json`: what went in and what came out. When the inputs recorded there are
//!   unchanged and the outputs exist, a run does nothing.

pub mod initramfs;
pub mod kernel_deb;
pub mod modules;
mod rootfs;
mod vmlinux;

use crate::deps::{ensure_packages, run};
use anyhow::{bail, Context, Result};
use initramfs::Entry;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the guest build uses.
pub const GUEST_PACKAGES: &[&str] = &["busybox-static", "e2fsprogs"];
/// Bumped when the layout of the outputs changes, so old outputs are rebuilt.
const FORMAT: u32 = 4;
/// The agent package and binary.
const AGENT: &str = "guest-agent";
/// The agent is linked statically against glibc: it is PID 1 of an initramfs with no libc.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Paths of a built guest image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestImage {
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The ELF kernel with a PVH entry.
    pub vmlinux: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// The busybox container rootfs (ext4).
    pub rootfs: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Inputs {
    format: u32,
    kernel_package: String,
    kernel_sha256: String,
    agent_sha256: String,
    busybox_sha256: String,
    modules: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    inputs: Inputs,
    kernel_release: String,
    pvh_entry: String,
    modules_in_load_order: Vec<String>,
    sizes: std::collections::BTreeMap<String, u64>,
    image: GuestImage,
}

/// Builds the agent (static, release) and returns its path.
pub fn build_agent(target: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo)
        .args(["build", "--release", "-p", AGENT, "--target", AGENT_TARGET])
        // With an explicit --target these flags reach the target crates only, not build scripts.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // The guest needs no symbols; they are most of the binary.
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols"))?;
    let path = target.join(AGENT_TARGET).join("release").join(AGENT);
    check_static(&path)?;
    Ok(path)
}

fn check_static(path: &Path) -> Result<()> {
    use object::Object;
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = object::File::parse(&*data)?;
    if !file.imports()?.is_empty() || file.section_by_name(".interp").is_some() {
        bail!("{} is dynamically linked; the guest has no libc", path.display());
    }
    Ok(())
}

/// Builds (or finds up to date) the guest image under `<target>/guest`.
pub fn build(target: &Path) -> Result<GuestImage> {
    ensure_packages(GUEST_PACKAGES)?;
    let agent = build_agent(target)?;
    let dir = target.join("guest");
    std::fs::create_dir_all(&dir)?;
    let pkg = kernel_deb::resolve()?;
    let inputs = Inputs {
        format: FORMAT,
        kernel_package: format!("{}={}", pkg.name, pkg.version),
        kernel_sha256: pkg.sha256.clone(),
        agent_sha256: kernel_deb::sha256_file(&agent)?,
        busybox_sha256: kernel_deb::sha256_file(Path::new("/bin/busybox"))?,
        modules: modules::WANTED.iter().map(|m| (*m).to_owned()).collect(),
    };
    let manifest_path = dir.join("manifest.json");
    if let Some(image) = up_to_date(&manifest_path, &inputs) {
        eprintln!("xtask: guest image up to date in {}", dir.display());
        return Ok(image);
    }

    let deb = kernel_deb::download(&pkg, &dir.join("debs"))?;
    let unpacked = kernel_deb::unpack(&deb, &dir.join(format!("kernel-{}", pkg.version)))?;
    let image = GuestImage {
        vmlinuz: dir.join("vmlinuz"),
        vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.img"),
        rootfs: dir.join("busybox-rootfs.ext4"),
    };
    let mut sizes = std::collections::BTreeMap::new();

    let bzimage = std::fs::read(&unpacked.bzimage)?;
    let elf = vmlinux::extract(&bzimage).context("extracting vmlinux from the bzImage")?;
    let entry = vmlinux::pvh_entry(&elf)?;
    write_atomic(&image.vmlinuz, &bzimage)?;
    write_atomic(&image.vmlinux, &elf)?;
    sizes.insert("vmlinuz".to_owned(), bzimage.len() as u64);
    sizes.insert("vmlinux".to_owned(), elf.len() as u64);

    let mods = modules::resolve(&unpacked.modules, modules::WANTED)?;
    let agent_bytes = std::fs::read(&agent)?;
    sizes.insert("agent".to_owned(), agent_bytes.len() as u64);
    let entries = initramfs_entries(&unpacked.release, &mods, agent_bytes)?;
    sizes.insert("initramfs".to_owned(), initramfs::write(&entries, &image.initramfs)?);

    rootfs::build(&image.rootfs)?;
    sizes.insert("busybox-rootfs".to_owned(), std::fs::metadata(&image.rootfs)?.len());

    let manifest = Manifest {
        inputs,
        kernel_release: unpacked.release,
        pvh_entry: format!("{entry:#x}"),
        modules_in_load_order: mods.iter().map(|m| m.name.clone()).collect(),
        sizes,
        image: image.clone(),
    };
    write_atomic(&manifest_path, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    eprintln!(
        "xtask: guest image in {}: kernel {} (PVH entry {}), {} modules, sizes {:?}",
        dir.display(),
        manifest.kernel_release,
        manifest.pvh_entry,
        manifest.modules_in_load_order.len(),
        manifest.sizes
    );
    Ok(image)
}

fn up_to_date(manifest: &Path, inputs: &Inputs) -> Option<GuestImage> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let old: Manifest = serde_json::from_str(&text).ok()?;
    let image = old.image;
    let all_there = [&image.vmlinuz, &image.vmlinux, &image.initramfs, &image.rootfs].iter().all(|p| p.is_file());
    (old.inputs == *inputs && all_there).then_some(image)
}

fn initramfs_entries(release: &str, mods: &[modules::Module], agent: Vec<u8>) -> Result<Vec<Entry>> {
    let (mut entries, list) = skeleton(&["/mnt", "/etc/agent"], release, mods)?;
    entries.push(Entry::File { path: "/etc/agent/modules".into(), mode: 0o644, data: list.into_bytes() });
    entries.push(Entry::File { path: "/init".into(), mode: 0o755, data: agent });
    Ok(entries)
}

/// The start of an initramfs: the usual directories plus `extra_dirs`, `/dev/console` and
/// `/dev/null`, and the `.ko` files of `mods` under `/lib/modules/<release>`. Also returns the
/// modules' paths, one per line in load order (what an init reads to load them).
pub fn skeleton(extra_dirs: &[&str], release: &str, mods: &[modules::Module]) -> Result<(Vec<Entry>, String)> {
    let moddir = format!("/lib/modules/{release}");
    let dirs = ["/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/lib", "/lib/modules"];
    let mut entries: Vec<Entry> = dirs.iter().chain(extra_dirs).map(|p| Entry::Dir { path: (*p).to_owned() }).collect();
    entries.push(Entry::Dir { path: moddir.clone() });
    entries.push(Entry::CharDev { path: "/dev/console".into(), mode: 0o600, major: 5, minor: 1 });
    entries.push(Entry::CharDev { path: "/dev/null".into(), mode: 0o666, major: 1, minor: 3 });
    let mut list = String::new();
    for m in mods {
        let path = format!("{moddir}/{}.ko", m.name);
        list.push_str(&path);
        list.push('\n');
        let data = std::fs::read(&m.path).with_context(|| format!("reading {}", m.path.display()))?;
        entries.push(Entry::File { path, mode: 0o644, data });
    }
    Ok((entries, list))
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
