//! Leaving the initramfs. The kernel's initial root (rootfs) cannot be pivoted away from, and
//! every container's mount namespace starts as a copy of ours, so pivot_root (which
//! libcontainer uses to enter a container's root) would fail inside the guest. As busybox's
//! switch_root does, PID 1 copies the initramfs into a tmpfs, frees the initramfs, moves the
//! tmpfs over `/`, chroots into it and re-executes itself from there.

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Set in the environment of the re-executed agent.
const SWITCHED: &str = "AGENT_ROOT_SWITCHED";
const NEW_ROOT: &str = "/newroot";

/// Why leaving the initramfs failed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchRootError {
    /// A step failed.
    #[error("switching root: {step}")]
    Step {
        /// What was being done.
        step: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn step(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> SwitchRootError {
    let step = step.into();
    move |source| SwitchRootError::Step { step, source }
}

/// Whether this agent already runs from the tmpfs root.
pub fn switched() -> bool {
    std::env::var_os(SWITCHED).is_some()
}

/// Copies the initramfs into a tmpfs, frees it, makes the tmpfs the root and re-executes
/// `/init`. Returns only on failure.
pub fn switch_root() -> SwitchRootError {
    match copy_and_move() {
        Ok(()) => {}
        Err(e) => return e,
    }
    let init = CString::new("/init").expect("no NUL");
    let env: Vec<CString> = std::env::vars()
        .chain([(SWITCHED.to_owned(), "1".to_owned())])
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let args = [init.clone()];
    let err = nix::unistd::execve(&init, &args, &env).unwrap_err();
    SwitchRootError::Step { step: "re-executing /init".into(), source: err.into() }
}

fn copy_and_move() -> Result<(), SwitchRootError> {
    std::fs::create_dir_all(NEW_ROOT).map_err(step("creating /newroot"))?;
    mount(Some("tmpfs"), NEW_ROOT, Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .map_err(|e| SwitchRootError::Step { step: "mounting tmpfs on /newroot".into(), source: e.into() })?;
    let root_dev = std::fs::metadata("/").map_err(step("stat /"))?.dev();
    for entry in std::fs::read_dir("/").map_err(step("reading /"))? {
        let entry = entry.map_err(step("reading /"))?;
        let path = entry.path();
        if path == Path::new(NEW_ROOT) {
            continue;
        }
        copy_tree(&path, &Path::new(NEW_ROOT).join(entry.file_name()), root_dev)?;
        // Free the initramfs's memory as we go.
        remove_tree(&path, root_dev);
    }
    std::env::set_current_dir(NEW_ROOT).map_err(step("chdir /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| SwitchRootError::Step { step: "moving /newroot to /".into(), source: e.into() })?;
    nix::unistd::chroot(".").map_err(|e| SwitchRootError::Step { step: "chroot".into(), source: e.into() })?;
    std::env::set_current_dir("/").map_err(step("chdir /"))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, dev: u64) -> Result<(), SwitchRootError> {
    let meta = std::fs::symlink_metadata(from).map_err(step(format!("stat {}", from.display())))?;
    if meta.dev() != dev {
        return Ok(());
    }
    let what = || format!("copying {}", from.display());
    let kind = meta.file_type();
    if kind.is_dir() {
        std::fs::create_dir_all(to).map_err(step(what()))?;
        for entry in std::fs::read_dir(from).map_err(step(what()))? {
            let entry = entry.map_err(step(what()))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()), dev)?;
        }
    } else if kind.is_file() {
        std::fs::copy(from, to).map_err(step(what()))?;
    } else if kind.is_symlink() {
        let target = std::fs::read_link(from).map_err(step(what()))?;
        std::os::unix::fs::symlink(target, to).map_err(step(what()))?;
    } else if kind.is_char_device() || kind.is_block_device() {
        let sflag = if kind.is_char_device() { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
        mknod(to, sflag, Mode::from_bits_truncate(meta.mode()), meta.rdev())
            .map_err(|e| SwitchRootError::Step { step: what(), source: e.into() })?;
        return Ok(());
    } else {
        return Ok(());
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(step(what()))
}

fn remove_tree(path: &Path, dev: u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if meta.dev() != dev {
        return;
    }
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                remove_tree(&entry.path(), dev);
            }
        }
        let _ = std::fs::remove_dir(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}
