//! The busybox container rootfs the tests and the demo use: Debian's `busybox-static` with
//! its applet links, as an ext4 image made with `mkfs.ext4 -d` (attached to the VM as
//! virtio-blk).

use crate::deps::run;
use anyhow::{Context, Result};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

const BUSYBOX: &str = "/bin/busybox";
const IMAGE_MIB: u64 = 32;

/// Builds the image at `out` from the busybox on the host (through a temporary tree and file).
pub fn build(out: &Path) -> Result<()> {
    let tree = out.with_extension("d");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run"] {
        std::fs::create_dir_all(tree.join(dir))?;
    }
    std::fs::copy(BUSYBOX, tree.join("bin/busybox")).with_context(|| format!("copying {BUSYBOX}"))?;
    let list = Command::new(BUSYBOX).arg("--list-full").output().context("running busybox --list-full")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|l| !l.is_empty()) {
        let link = tree.join(applet);
        if link.exists() {
            continue;
        }
        let depth = applet.matches('/').count();
        symlink(format!("{}bin/busybox", "../".repeat(depth)), &link)?;
    }
    std::fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")?;
    std::fs::write(tree.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::write(tree.join("etc/hostname"), "busybox\n")?;
    let tmp = out.with_extension("tmp");
    std::fs::File::create(&tmp)?.set_len(IMAGE_MIB << 20)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "busybox", "-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .arg(&tmp))?;
    std::fs::rename(&tmp, out)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(())
}
