//! What the plugins share in VM templates (a `template` VM factory's saved VM and its clones):
//! why saving or cloning fails ([`TemplateError`]), the check that a clone asks for the VM its
//! template was made from, the identity of the VMM binary a template was made by, the marker
//! that keeps a saved VM from running again, and the template directory's checks.

use crate::blob::BlobError;
use plugin_api::hypervisor::HypervisorConfig;
use plugin_api::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The file in a VM directory that marks a VM saved as a template.
pub const SAVED_MARKER: &str = "saved-as-template";

/// Why saving a template or cloning one failed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The plugin has no templates.
    #[error("{program} VMs cannot be saved as templates or cloned from them by this plugin")]
    Unsupported {
        /// The VMM (`QEMU`, `the vmm`).
        program: &'static str,
    },
    /// The VM was not created with a RAM file.
    #[error("VM {sandbox_id} has no memory_file: only a VM created with HypervisorConfig.memory_file can be saved as a template")]
    NoMemoryFile {
        /// The sandbox.
        sandbox_id: String,
    },
    /// The descriptor is not one this plugin reads.
    #[error(transparent)]
    Descriptor(#[from] BlobError),
    /// The clone asks for another VM than the template's.
    #[error("the template was made for HypervisorConfig.{key} = {template}; the clone asks for {wanted}")]
    Mismatch {
        /// The key.
        key: &'static str,
        /// The template's value.
        template: String,
        /// The clone's.
        wanted: String,
    },
    /// The clone names a RAM file of its own.
    #[error("a clone's HypervisorConfig.memory_file must be unset (it maps the template's), not {0:?}")]
    CloneMemoryFile(PathBuf),
    /// One of the template's files is gone.
    #[error("the template's {what} {path:?} is gone: make the template again")]
    FileGone {
        /// Which file (`RAM file`, `device state`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// One of the template's files has the wrong size (truncated, or replaced).
    #[error("the template's {what} {path:?} is {len} bytes, {expected}: make the template again")]
    WrongSize {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// What it should be (`expected 536870912`, `expected more than 0`).
        expected: String,
    },
    /// A file's content is not what was saved.
    #[error("the template's {what} {path:?} is not what was saved (its SHA-256 differs): make the template again")]
    Corrupt {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// The VMM binary changed since the template was made.
    #[error("the template was made by {made_by}, but this plugin runs {now}: a VMM restores only its own state; make the template again")]
    VmmChanged {
        /// The binary's identity when the template was made.
        made_by: String,
        /// Its identity now.
        now: String,
    },
    /// The template directory cannot be used.
    #[error("template directory {dir:?}: {why}")]
    BadDir {
        /// The directory.
        dir: PathBuf,
        /// Why not.
        why: &'static str,
    },
    /// A file-system call failed.
    #[error("{what} {path:?}")]
    Io {
        /// What was done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The VM was saved as a template: it must not run again.
    #[error("VM {sandbox_id} was saved as a template: it must never run again (its RAM file is the template's, which the clones map); stop it")]
    Saved {
        /// The sandbox.
        sandbox_id: String,
    },
    /// Saving or restoring the device state failed in the VMM.
    #[error("{program} could not {what}: {why}")]
    Vmm {
        /// The VMM.
        program: &'static str,
        /// `save the device state`, `restore the device state`.
        what: &'static str,
        /// What it said.
        why: String,
    },
}

impl TemplateError {
    /// The [`ErrorKind`] the host sees.
    pub fn kind(&self) -> ErrorKind {
        match self {
            TemplateError::Unsupported { .. } => ErrorKind::UNSUPPORTED,
            TemplateError::Io { .. } => ErrorKind::IO,
            TemplateError::Vmm { .. } => ErrorKind::OTHER,
            _ => ErrorKind::INVALID_INPUT,
        }
    }
}

/// A template's saved files, as its descriptor names them.
#[derive(Debug, Clone, Copy)]
pub struct SavedFiles<'a> {
    /// The VM the template was saved from; its `memory_file` is the template's RAM.
    pub config: &'a HypervisorConfig,
    /// What the plugin calls its saved state ("device state", "vmm state").
    pub state_what: &'static str,
    /// That state's file.
    pub state: &'a Path,
    /// Its SHA-256 when saved.
    pub state_sha256: &'a str,
    /// The VMM binary that saved it and its identity then.
    pub binary: &'a Path,
    /// [`binary_identity`] of it when saved.
    pub binary_identity: &'a str,
}

/// Every check a plugin makes before it clones a template for `wanted`: the clone asks for the
/// template's VM, the RAM file has the VM's size, the saved state is there and unchanged, the
/// VMM binary is the one that saved it. Returns the RAM file.
pub fn check_clone(saved: &SavedFiles<'_>, wanted: &HypervisorConfig) -> Result<PathBuf, TemplateError> {
    check_clone_config(saved.config, wanted)?;
    let memory = saved.config.memory_file.clone().ok_or_else(|| TemplateError::FileGone { what: "RAM file", path: PathBuf::new() })?;
    check_files(&[("RAM file", &memory, Some(saved.config.memory_mib << 20)), (saved.state_what, saved.state, None)])?;
    check_digest(saved.state_what, saved.state, saved.state_sha256)?;
    check_binary(saved.binary_identity, saved.binary)?;
    Ok(memory)
}

/// Starts a clone's console log with a line saying whose clone it is (the guest booted in the
/// template, so its boot messages are in the template's console log, not here).
pub fn note_clone(log: &Path, kind: &str, template_dir: &Path) -> Result<(), TemplateError> {
    let note = format!("[sandbox-runtime: this VM is a clone of the {kind} VM template in {}: it resumed the template's running guest, so its boot messages are not repeated here]\n", template_dir.display());
    std::fs::write(log, note).map_err(|source| TemplateError::Io { what: "writing the console log", path: log.to_owned(), source })
}

/// Checks that a clone's `wanted` config asks for the VM its template was made from
/// (everything but the console log), and names no RAM file of its own.
pub fn check_clone_config(template: &HypervisorConfig, wanted: &HypervisorConfig) -> Result<(), TemplateError> {
    if let Some(file) = &wanted.memory_file {
        return Err(TemplateError::CloneMemoryFile(file.clone()));
    }
    match plugin_api::factory::config_mismatch(template, wanted) {
        Some((key, template, wanted)) => Err(TemplateError::Mismatch { key, template, wanted }),
        None => Ok(()),
    }
}

/// What tells a VMM binary apart from another build: its path, size and modification time
/// (a restore needs the very VMM that saved the state).
pub fn binary_identity(path: &Path) -> Result<String, TemplateError> {
    let meta = std::fs::metadata(path).map_err(|source| TemplateError::Io { what: "reading the metadata of", path: path.to_owned(), source })?;
    Ok(format!("{} ({} bytes, modified at {}.{:09})", path.display(), meta.len(), meta.mtime(), meta.mtime_nsec()))
}

/// Checks that `made_by` (a [`binary_identity`]) is still what `path` is.
pub fn check_binary(made_by: &str, path: &Path) -> Result<(), TemplateError> {
    let now = binary_identity(path)?;
    if now == made_by {
        Ok(())
    } else {
        Err(TemplateError::VmmChanged { made_by: made_by.to_owned(), now })
    }
}

/// Checks a template directory given to `save_template`: absolute, an existing directory
/// that only its owner may enter, its path safe in a VMM's option strings and shell words.
pub fn check_dir(dir: &str) -> Result<PathBuf, TemplateError> {
    let path = PathBuf::from(dir);
    let bad = |why| TemplateError::BadDir { dir: path.clone(), why };
    if !path.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    if !dir.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b)) {
        return Err(bad("must hold only ASCII letters, digits and / . _ - +"));
    }
    let meta = std::fs::metadata(&path).map_err(|source| TemplateError::Io { what: "reading the metadata of", path: path.clone(), source })?;
    if !meta.is_dir() {
        return Err(bad("is not a directory"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad("must be private to its owner (mode 0700)"));
    }
    Ok(path)
}

/// Makes each of `files` readable and writable by its owner only (0600), checking it is there
/// and not empty ([`check_files`]).
pub fn make_private(files: &[(&'static str, &Path)]) -> Result<(), TemplateError> {
    for (what, path) in files {
        check_files(&[(what, path, None)])?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| TemplateError::Io { what: "setting the mode of", path: path.to_path_buf(), source })?;
    }
    Ok(())
}

/// Checks that each of `files` is still there, a regular file of the size it should have
/// (`Some(n)`: exactly `n` bytes; `None`: not empty). A clone must never map a RAM file
/// shorter than its RAM (the VMM would extend the template's file, or the guest would fault).
pub fn check_files(files: &[(&'static str, &Path, Option<u64>)]) -> Result<(), TemplateError> {
    for (what, path, size) in files {
        let meta = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            _ => return Err(TemplateError::FileGone { what, path: path.to_path_buf() }),
        };
        let wrong = |expected: String| Err(TemplateError::WrongSize { what, path: path.to_path_buf(), len: meta.len(), expected });
        match size {
            Some(n) if meta.len() != *n => return wrong(format!("expected {n}")),
            None if meta.len() == 0 => return wrong("expected more than 0".into()),
            _ => {}
        }
    }
    Ok(())
}

/// The SHA-256 of `path`'s content, in hex: what a descriptor records of a saved state file,
/// so that a clone never restores a state that changed since (a state file is input: a bit
/// flipped in it could restore a guest that hangs).
pub fn file_digest(what: &'static str, path: &Path) -> Result<String, TemplateError> {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => TemplateError::FileGone { what, path: path.to_owned() },
        _ => TemplateError::Io { what: "reading", path: path.to_owned(), source: e },
    })?;
    Ok(Sha256::digest(&bytes).iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Checks that `path` still has the content whose [`file_digest`] is `expected`.
pub fn check_digest(what: &'static str, path: &Path, expected: &str) -> Result<(), TemplateError> {
    if file_digest(what, path)? == expected {
        Ok(())
    } else {
        Err(TemplateError::Corrupt { what, path: path.to_owned() })
    }
}

/// Marks the VM of directory `vm_dir` saved as a template, so that it is never resumed.
pub fn mark_saved(vm_dir: &Path) -> Result<(), TemplateError> {
    let path = vm_dir.join(SAVED_MARKER);
    std::fs::write(&path, b"").map_err(|source| TemplateError::Io { what: "writing", path, source })
}

/// Whether the VM of directory `vm_dir` was saved as a template.
pub fn is_saved(vm_dir: &Path) -> bool {
    vm_dir.join(SAVED_MARKER).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HypervisorConfig {
        HypervisorConfig {
            schema: 1,
            kernel: "/k".into(),
            initrd: None,
            kernel_params: String::new(),
            vcpus: 1,
            memory_mib: 256,
            extra: serde_json::Value::Null,
            console_log: None,
            disks: vec![],
            memory_file: Some("/dev/shm/t/memory".into()),
        }
    }

    #[test]
    fn a_clone_must_ask_for_the_templates_vm() {
        let template = config();
        let clone = HypervisorConfig { memory_file: None, console_log: Some("/logs/c.log".into()), ..config() };
        check_clone_config(&template, &clone).unwrap();
        let e = check_clone_config(&template, &HypervisorConfig { memory_mib: 512, ..clone.clone() }).unwrap_err();
        assert_eq!(e.to_string(), "the template was made for HypervisorConfig.memory_mib = 256; the clone asks for 512");
        assert_eq!(e.kind(), ErrorKind::INVALID_INPUT);
        let e = check_clone_config(&template, &config()).unwrap_err();
        assert!(e.to_string().contains("memory_file must be unset"), "{e}");
    }

    #[test]
    fn dirs_binaries_files_and_the_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = dir.to_str().unwrap();
        assert!(check_dir(s).unwrap_err().to_string().contains("mode 0700"));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check_dir(s).unwrap(), dir);
        assert!(check_dir("relative/t").unwrap_err().to_string().contains("absolute"));
        assert!(check_dir("/tmp/a b").unwrap_err().to_string().contains("only ASCII"));
        assert!(matches!(check_dir("/no/such/dir").unwrap_err(), TemplateError::Io { .. }));
        let file = dir.join("memory");
        assert!(make_private(&[("RAM file", &file)]).unwrap_err().to_string().contains("RAM file"));
        std::fs::write(&file, b"x").unwrap();
        make_private(&[("RAM file", &file)]).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        check_files(&[("RAM file", &file, Some(1)), ("device state", &file, None)]).unwrap();
        let e = check_files(&[("RAM file", &file, Some(4096))]).unwrap_err();
        assert!(e.to_string().contains("RAM file") && e.to_string().contains("is 1 bytes, expected 4096"), "{e}");
        assert!(check_files(&[("device state", &dir.join("gone"), None)]).unwrap_err().to_string().contains("is gone"));
        let id = binary_identity(&file).unwrap();
        check_binary(&id, &file).unwrap();
        std::fs::write(&file, b"xy").unwrap();
        assert!(check_binary(&id, &file).unwrap_err().to_string().contains("make the template again"));
        let digest = file_digest("device state", &file).unwrap();
        assert_eq!(digest.len(), 64);
        check_digest("device state", &file, &digest).unwrap();
        std::fs::write(&file, b"xz").unwrap();
        assert!(check_digest("device state", &file, &digest).unwrap_err().to_string().contains("SHA-256 differs"));
        assert!(!is_saved(&dir));
        mark_saved(&dir).unwrap();
        assert!(is_saved(&dir));
    }
}
