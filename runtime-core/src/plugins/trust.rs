//! Refuses plugin files and directories that other users could have written: loading such a
//! file would run their code in the host.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use thiserror::Error;

/// Why a path is not trusted.
#[derive(Debug, Error)]
pub enum TrustError {
    /// `stat` failed.
    #[error("cannot stat {path}")]
    Stat {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writable by group or others.
    #[error("{path} is writable by other users (mode {mode:04o}); run chmod go-w on it")]
    Writable {
        /// The path.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by someone other than root or the current user.
    #[error("{path} is owned by uid {owner}, not by root or the current user (uid {me})")]
    Owner {
        /// The path.
        path: String,
        /// Its owner.
        owner: u32,
        /// The current effective uid.
        me: u32,
    },
}

/// Checks that `path` (a file or a directory, symlinks followed) can be written only by root
/// or the current user.
pub fn check_not_writable_by_others(path: &Path) -> Result<(), TrustError> {
    let shown = || path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| TrustError::Stat { path: shown(), source })?;
    let mode = meta.mode() & 0o7777;
    // A sticky directory (like /tmp) is still one others can add files to.
    if mode & 0o022 != 0 {
        return Err(TrustError::Writable { path: shown(), mode });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(TrustError::Owner { path: shown(), owner: meta.uid(), me });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_world_writable_is_refused_and_private_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.so");
        std::fs::write(&f, b"x").unwrap();
        for (mode, ok) in [(0o644, true), (0o600, true), (0o664, false), (0o646, false), (0o777, false)] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = check_not_writable_by_others(&f);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
        }
        let e = check_not_writable_by_others(&f).unwrap_err().to_string();
        assert!(e.contains("p.so") && e.contains("0777"), "{e}");
        assert!(check_not_writable_by_others(Path::new("/tmp")).is_err(), "/tmp is 1777");
    }
}
