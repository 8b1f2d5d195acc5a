//! Choosing the kernel modules the guest needs, with their dependencies, in load order.
//!
//! The `.deb` carries no `modules.dep` (depmod runs at install time), so dependencies are read
//! from each module's `.modinfo` section (`depends=` and `softdep=pre:`).

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSection};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The modules the agent loads at boot: virtio transports and devices, vsock, virtio-fs,
/// overlay and ext4. Their dependencies are added.
pub const WANTED: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "fuse",
    "virtiofs",
    "overlay",
    "ext4",
];

/// One module to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name (underscores).
    pub name: String,
    /// Path of the `.ko` on the host.
    pub path: PathBuf,
}

#[derive(Debug, Default)]
struct Info {
    depends: Vec<String>,
    pre_softdeps: Vec<String>,
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn index(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index(&path, out)?;
        } else if let Some(stem) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
            out.insert(canonical(stem), path);
        }
    }
    Ok(())
}

fn modinfo(path: &Path) -> Result<Info> {
    let data = std::fs::read(path)?;
    let file = object::File::parse(&*data).with_context(|| format!("{} is not an ELF module", path.display()))?;
    let section = file.section_by_name(".modinfo").with_context(|| format!("{} has no .modinfo", path.display()))?;
    Ok(parse_modinfo(section.data()?))
}

fn parse_modinfo(data: &[u8]) -> Info {
    let mut info = Info::default();
    for entry in data.split(|b| *b == 0).filter_map(|e| std::str::from_utf8(e).ok()) {
        if let Some(deps) = entry.strip_prefix("depends=") {
            info.depends.extend(deps.split(',').filter(|d| !d.is_empty()).map(canonical));
        } else if let Some(soft) = entry.strip_prefix("softdep=") {
            // "pre: a b post: c": only the `pre:` names must be loaded first.
            let mut pre = false;
            for word in soft.split_whitespace() {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    name if pre => info.pre_softdeps.push(canonical(name)),
                    _ => {}
                }
            }
        }
    }
    info
}

/// Resolves `wanted` and their dependencies under `modules_dir` (`lib/modules/<release>`),
/// dependencies first. A wanted module that is missing is an error; a soft dependency with
/// no module of its name, its algorithm's name or `<algorithm>_generic` (built in, say) is
/// skipped.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<Module>> {
    let mut all = BTreeMap::new();
    index(modules_dir, &mut all)?;
    let mut order = Vec::new();
    let mut done = HashSet::new();
    for name in wanted {
        if !all.contains_key(*name) {
            bail!("module {name} is not in {} (built in, or renamed?)", modules_dir.display());
        }
        visit(name, &all, &mut done, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    all: &BTreeMap<String, PathBuf>,
    done: &mut HashSet<String>,
    stack: &mut Vec<String>,
    order: &mut Vec<Module>,
) -> Result<()> {
    if done.contains(name) {
        return Ok(());
    }
    if stack.iter().any(|s| s == name) {
        bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
    }
    let path = all.get(name).with_context(|| format!("module {} needs {name}, which is missing", stack.join(" -> ")))?;
    let info = modinfo(path)?;
    stack.push(name.to_owned());
    for dep in &info.depends {
        visit(dep, all, done, stack, order)?;
    }
    for dep in &info.pre_softdeps {
        // A soft dependency often names a crypto algorithm by alias ("crypto-crc32c"); the
        // portable provider is `<algorithm>_generic`. Without it the kernel would ask
        // modprobe, which the initramfs does not have.
        let algorithm = dep.strip_prefix("crypto_").unwrap_or(dep);
        let provider = [dep.clone(), algorithm.to_owned(), format!("{algorithm}_generic")].into_iter().find(|d| all.contains_key(d));
        if let Some(provider) = provider {
            visit(&provider, all, done, stack, order)?;
        }
    }
    stack.pop();
    done.insert(name.to_owned());
    order.push(Module { name: name.to_owned(), path: path.clone() });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_depends_and_pre_softdeps() {
        let info = parse_modinfo(b"license=GPL\0depends=mbcache,jbd2,crc16\0softdep=pre: crc32c post: foo-bar\0");
        assert_eq!(info.depends, ["mbcache", "jbd2", "crc16"]);
        assert_eq!(info.pre_softdeps, ["crc32c"]);
        assert!(parse_modinfo(b"depends=\0").depends.is_empty());
    }
}
