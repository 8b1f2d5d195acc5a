//! The per-VM directory `<run_dir>/<sandbox_id>/` (mode 0700) that holds a VM's sockets and
//! pid file ([`VmDir`], its file names given by the plugin's [`Layout`]), and the checks on the
//! paths in it.

use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A file-system operation on a VM directory failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path:?}")]
pub struct DirError {
    /// What was being done.
    pub what: &'static str,
    /// On what.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The names of the files a plugin's VMM keeps in its VM directory.
pub trait Layout {
    /// The VMM's pid file (`qemu.pid`, `vmm.pid`).
    const PIDFILE: &'static str;
    /// The control channel's socket (QEMU's `qmp.sock`, the vmm's `api.sock`).
    const CONTROL_SOCKET: &'static str;
    /// The VMM's sockets besides the control channel's and the agent ports' (`vsock.sock`).
    const OTHER_SOCKETS: &'static [&'static str];
    /// The VMM's own log (its stderr), if it keeps one in the VM directory (`vmm.log`): when
    /// the VMM is found dead, its end is logged before the directory goes.
    const VMM_LOG: Option<&'static str> = None;
}

/// A VM's directory, its files named by the plugin's [`Layout`] `L`.
pub struct VmDir<L> {
    path: PathBuf,
    layout: PhantomData<fn() -> L>,
}

impl<L> VmDir<L> {
    /// The VM directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> VmDir<L> {
        VmDir { path: path.into(), layout: PhantomData }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file `name` in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The host socket of agent port `n` (`agent.<n>` in the guest).
    pub fn agent_socket(&self, n: u32) -> PathBuf {
        self.file(&format!("agent-{n}.sock"))
    }
}

impl<L: Layout> VmDir<L> {
    /// The VMM's pid file.
    pub fn pidfile(&self) -> PathBuf {
        self.file(L::PIDFILE)
    }

    /// The control channel's socket.
    pub fn control_socket(&self) -> PathBuf {
        self.file(L::CONTROL_SOCKET)
    }

    /// Every socket of a VM with `agent_ports` ports: the control channel's, the other ones,
    /// then the agent ports'.
    pub fn sockets(&self, agent_ports: u32) -> Vec<PathBuf> {
        let mut paths = vec![self.control_socket()];
        paths.extend(L::OTHER_SOCKETS.iter().map(|name| self.file(name)));
        paths.extend((0..agent_ports).map(|n| self.agent_socket(n)));
        paths
    }
}

impl<L> Clone for VmDir<L> {
    fn clone(&self) -> VmDir<L> {
        VmDir::new(self.path.clone())
    }
}

impl<L> PartialEq for VmDir<L> {
    fn eq(&self, other: &VmDir<L>) -> bool {
        self.path == other.path
    }
}

impl<L> Eq for VmDir<L> {}

impl<L> std::fmt::Debug for VmDir<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("VmDir").field(&self.path).finish()
    }
}

/// Wraps an I/O error of `what` on `path`.
pub(crate) fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DirError + 'a {
    move |source| DirError { what, path: path.to_owned(), source }
}

/// The first of `paths` too long for a Unix socket address, if any.
pub fn too_long_socket(paths: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    paths.into_iter().find(|p| p.as_os_str().len() > MAX_SOCKET_PATH)
}

/// Whether `dir` is an absolute, normal `<run_dir>/<sandbox_id>` path (what a state blob may
/// name as the directory that stopping deletes).
pub fn is_vm_dir(dir: &Path, sandbox_id: &str) -> bool {
    let normal = dir.is_absolute() && dir.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    normal && dir.file_name().and_then(|n| n.to_str()) == Some(sandbox_id)
}

/// Creates `dir` (and its parent, the run directory) if it does not exist, and sets its mode
/// to exactly 0700 (the umask may have taken bits off).
pub fn ensure_private(dir: &Path) -> Result<(), DirError> {
    if !dir.is_dir() {
        if let Some(run_dir) = dir.parent() {
            std::fs::create_dir_all(run_dir).map_err(io_error("creating the run directory", run_dir))?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(io_error("creating the VM directory", dir))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error("setting the mode of the VM directory", dir))
}

/// Makes `dir` fresh (removing whatever is there) and private. The caller has checked that no
/// live VMM uses it.
pub fn fresh_private(dir: &Path) -> Result<(), DirError> {
    if std::fs::symlink_metadata(dir).is_ok() {
        tracing::info!("removing the stale VM directory {dir:?}");
        remove(dir)?;
    }
    ensure_private(dir)
}

/// Removes `dir` and everything in it; a directory already gone is fine.
pub fn remove(dir: &Path) -> Result<(), DirError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("removing the VM directory", dir)(e)),
        _ => Ok(()),
    }
}

/// Removes files a previous run may have left (sockets, pid files); missing ones are fine.
pub fn remove_stale(paths: impl IntoIterator<Item = PathBuf>) -> Result<(), DirError> {
    for path in paths {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error("removing the stale", &path)(e)),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestLayout;

    impl Layout for TestLayout {
        const PIDFILE: &'static str = "t.pid";
        const CONTROL_SOCKET: &'static str = "ctl.sock";
        const OTHER_SOCKETS: &'static [&'static str] = &["v.sock"];
    }

    #[test]
    fn files_of_a_layout() {
        let dir = VmDir::<TestLayout>::new("/run/t/sb1");
        assert_eq!((dir.path(), dir.pidfile()), (Path::new("/run/t/sb1"), PathBuf::from("/run/t/sb1/t.pid")));
        let names: Vec<PathBuf> = ["ctl.sock", "v.sock", "agent-0.sock", "agent-1.sock"].iter().map(|n| dir.file(n)).collect();
        assert_eq!(dir.sockets(2), names);
        assert_eq!(VmDir::new("/run/t/sb1"), dir.clone());
        assert_eq!(format!("{dir:?}"), "VmDir(\"/run/t/sb1\")");
        let long = VmDir::<TestLayout>::new(format!("/{}", "d".repeat(100)));
        assert_eq!(too_long_socket(long.sockets(1)), Some(long.control_socket()), "the first one too long");
    }

    #[test]
    fn vm_dirs() {
        assert!(is_vm_dir(Path::new("/run/q/sb1"), "sb1"));
        for bad in ["relative/sb1", "/run/q/other", "/run/../sb1", "/"] {
            assert!(!is_vm_dir(Path::new(bad), "sb1"), "{bad}");
        }
        assert_eq!(too_long_socket([PathBuf::from("/run/q/sb1/x.sock")]), None);
        let long = PathBuf::from(format!("/{}", "d".repeat(107)));
        assert_eq!(too_long_socket([PathBuf::from("/a"), long.clone()]), Some(long));
    }

    #[test]
    fn fresh_private_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run/sb1");
        fresh_private(&dir).unwrap();
        std::fs::write(dir.join("old.pid"), "1").unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(dir.join("old.pid").exists(), "ensure_private keeps the contents");
        fresh_private(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::write(dir.join("a.sock"), "").unwrap();
        remove_stale([dir.join("a.sock"), dir.join("never-there")]).unwrap();
        assert!(!dir.join("a.sock").exists());
        remove(&dir).unwrap();
        remove(&dir).unwrap();
        assert!(!dir.exists());
        std::fs::write(tmp.path().join("file"), "").unwrap();
        let e = ensure_private(&tmp.path().join("file/sub")).unwrap_err().to_string();
        assert!(e.contains("creating the run directory") && e.contains("file\""), "{e}");
    }
}
