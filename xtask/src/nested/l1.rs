//! The L1 image: Debian's kernel (the guest image's) and an initramfs with static busybox, the
//! KVM and 9p modules, and an `/init` script.

use crate::guest::{initramfs, initramfs::Entry, kernel_deb, modules};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Modules L1 loads, dependencies resolved from their `.modinfo`.
const WANTED: &[&str] = &["kvm_amd", "9p", "9pnet_virtio", "virtio_pci", "tun"];

/// The L1 kernel and initramfs.
#[derive(Debug, Clone)]
pub struct L1Image {
    /// bzImage.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
}

/// The init script. It prints markers the host waits for, and a heartbeat on the second serial
/// port; the command (written per run into
/// the initramfs) runs chrooted into the host's tree, with fresh /proc, /sys, /dev, /tmp, /run.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
while read -r m; do insmod "$m" || echo "nested: insmod $m failed"; done < /etc/nested/modules
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 host /host || echo "nested: mounting the host share failed"
for d in proc sys dev; do mount --rbind /$d /host/$d; done
for d in tmp run; do mount -t tmpfs tmpfs /host/$d; done
if [ -c /dev/kvm ]; then echo "NESTED-READY kvm=yes"; else echo "NESTED-READY kvm=no"; fi
cp /etc/nested/command /host/tmp/nested-command
# The heartbeat the host watches (nested/run.rs): a line on the second serial port every 5 s.
( while :; do echo alive > /dev/ttyS1; sleep 5; done ) &
cd /host && chroot /host /bin/sh /tmp/nested-command < /dev/null
echo "NESTED-EXIT $?"
poweroff -f
"#;

/// Builds the L1 image for `command` under `<target>/nested`.
pub fn build_with(target: &Path, command: &[String]) -> Result<L1Image> {
    let guest = target.join("guest");
    let pkg = kernel_deb::resolve()?;
    let deb = kernel_deb::download(&pkg, &guest.join("debs"))?;
    let unpacked = kernel_deb::unpack(&deb, &guest.join(format!("kernel-{}", pkg.version)))?;
    let dir = target.join("nested");
    std::fs::create_dir_all(&dir)?;
    let mods = modules::resolve(&unpacked.modules, WANTED)?;
    let (mut entries, list) = crate::guest::skeleton(&["/bin", "/etc/nested"], &unpacked.release, &mods)?;
    entries.push(Entry::File { path: "/etc/nested/modules".into(), mode: 0o644, data: list.into_bytes() });
    entries.push(Entry::File { path: "/etc/nested/command".into(), mode: 0o644, data: shell_command(command).into_bytes() });
    let busybox = std::fs::read("/bin/busybox").context("reading /bin/busybox (Debian package busybox-static)")?;
    entries.push(Entry::File { path: "/bin/busybox".into(), mode: 0o755, data: busybox });
    entries.push(Entry::File { path: "/init".into(), mode: 0o755, data: INIT.as_bytes().to_vec() });
    let image = L1Image { kernel: unpacked.bzimage.clone(), initramfs: dir.join("l1-initramfs.img") };
    initramfs::write(&entries, &image.initramfs)?;
    Ok(image)
}

/// `command` as one line of `sh`, each word single-quoted.
fn shell_command(command: &[String]) -> String {
    let words: Vec<String> = command.iter().map(|w| format!("'{}'", w.replace('\'', r"'\''"))).collect();
    format!("exec {}\n", words.join(" "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn commands_are_quoted_for_sh() {
        let c = super::shell_command(&["sh".into(), "-c".into(), "echo 'hi' $X".into()]);
        assert_eq!(c, "exec 'sh' '-c' 'echo '\\''hi'\\'' $X'\n");
    }
}
