//! The per-sandbox lock that serializes API calls on one sandbox across processes: an
//! exclusive `flock` on `<state_dir>/locks/<id>.lock`. The file is removed when the sandbox is
//! deleted; a process that then gets the lock on the removed file notices (the path no longer
//! names its file) and tries again, so nobody works under a stale lock.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct SandboxLock {
    file: File,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("cannot lock {path}")]
pub struct LockError {
    /// The lock file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor this `File` owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The lock file of sandbox `id`.
pub fn lock_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("locks").join(format!("{id}.lock"))
}

impl SandboxLock {
    /// Takes sandbox `id`'s lock, waiting for other holders. Blocking: call it off the async
    /// threads.
    pub fn acquire(state_dir: &Path, id: &str) -> Result<SandboxLock, LockError> {
        let path = lock_path(state_dir, id);
        let fail = |source| LockError { path: path.clone(), source };
        loop {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(fail)?;
            }
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(fail)?;
            if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_err() {
                tracing::info!(sandbox = id, "waiting for another process's lock on the sandbox");
                flock(&file, libc::LOCK_EX).map_err(fail)?;
            }
            let held = file.metadata().map_err(fail)?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(SandboxLock { file, path }),
                _ => continue, // deleted or replaced while we waited
            }
        }
    }

    /// Removes the lock file (the sandbox is gone); the lock stays held until drop.
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SandboxLock {
    fn drop(&mut self) {
        let _ = flock(&self.file, libc::LOCK_UN);
    }
}

/// Takes the first free lock of `paths` without waiting; `None` if all are held.
pub fn try_claim(paths: &[PathBuf]) -> std::io::Result<Option<(usize, File)>> {
    for (i, path) in paths.iter().enumerate() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB).is_ok() {
            return Ok(Some((i, file)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn second_holder_waits_and_a_removed_file_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = SandboxLock::acquire(dir.path(), "s1").expect("first");
        let (tx, rx) = mpsc::channel();
        let state = dir.path().to_owned();
        let waiter = std::thread::spawn(move || {
            let lock = SandboxLock::acquire(&state, "s1").expect("second");
            tx.send(()).expect("send");
            lock
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "the second process got a held lock");
        first.remove_file();
        drop(first);
        rx.recv_timeout(Duration::from_secs(5)).expect("the waiter gets the lock once it is released");
        let second = waiter.join().expect("join");
        assert!(lock_path(dir.path(), "s1").exists(), "the waiter made a fresh lock file");
        drop(second);
    }

    #[test]
    fn claims_take_the_first_free_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("agent-{i}.lock"))).collect();
        let (a, _fa) = try_claim(&paths).expect("io").expect("free");
        let (b, _fb) = try_claim(&paths).expect("io").expect("free");
        assert_eq!((a, b), (0, 1));
        assert!(try_claim(&paths).expect("io").is_none());
    }
}
