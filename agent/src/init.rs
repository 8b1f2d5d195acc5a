//! PID 1 duties at boot: the pseudo-filesystems, the kernel modules listed in the initramfs,
//! the cgroup v2 controllers and the loopback interface.

use nix::mount::{mount, MsFlags};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;
use tracing::{info, warn};

/// The list of modules, in load order, written by the guest image build.
pub const MODULES_LIST: &str = "/etc/agent/modules";

/// Why boot failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("mounting {fstype} on {target}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Filesystem error.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

const MOUNTS: &[(&str, &str, &str, MsFlags, &str)] = &[
    ("proc", "/proc", "proc", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC), ""),
    ("sysfs", "/sys", "sysfs", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC), ""),
    ("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC), "ptmxmode=0666,mode=0620"),
    ("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), "mode=1777"),
    ("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV), "mode=1777"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC), ""),
];

/// Does what a PID 1 must before serving: mounts, modules, cgroups, loopback.
pub fn boot() -> Result<(), InitError> {
    for &(source, target, fstype, flags, data) in MOUNTS {
        std::fs::create_dir_all(target).map_err(|e| InitError::Io { what: format!("creating {target}"), source: e })?;
        let data = (!data.is_empty()).then_some(data);
        mount(Some(source), target, Some(fstype), flags, data)
            .map_err(|source| InitError::Mount { fstype, target, source })?;
    }
    load_modules(Path::new(MODULES_LIST));
    enable_controllers();
    if let Err(e) = loopback_up() {
        warn!("bringing up lo: {e}");
    }
    Ok(())
}

/// Loads each module of the list; a module that fails is logged and the others still load.
fn load_modules(list: &Path) {
    let Ok(text) = std::fs::read_to_string(list) else {
        warn!("no module list at {}: loading no modules", list.display());
        return;
    };
    let mut loaded = 0;
    for path in text.lines().filter(|l| !l.trim().is_empty()) {
        match load_module(Path::new(path)) {
            Ok(()) => loaded += 1,
            Err(e) => warn!("loading module {path}: {e}"),
        }
    }
    info!(loaded, "kernel modules loaded");
}

fn load_module(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    let params = CString::default();
    match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Delegates the controllers containers need to child cgroups.
fn enable_controllers() {
    let root = Path::new("/sys/fs/cgroup");
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let wanted: Vec<String> = available
        .split_whitespace()
        .filter(|c| ["cpu", "cpuset", "memory", "pids", "io"].contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if let Err(e) = std::fs::write(root.join("cgroup.subtree_control"), wanted.join(" ")) {
        warn!("enabling cgroup controllers {wanted:?}: {e}");
    }
}

/// Sets IFF_UP on `lo` with the classic ioctls.
fn loopback_up() -> std::io::Result<()> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads into the ifreq we own; the socket fd is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the flags member is the active one after SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
