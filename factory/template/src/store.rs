//! The template on disk: `<path>/` (mode 0700) holds the hypervisor plugin's files (the RAM
//! file `memory`, the device state), the plugin's descriptor (`descriptor`), the template VM's
//! console log (`console.log`) and, written last, `template.json` ([`Record`]): a directory
//! without it is a template whose making did not finish. `<path>.lock` serializes making,
//! loading and removing it across processes.

use plugin_api::hypervisor::HypervisorConfig;
use plugin_api::PluginError;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The record's schema.
const SCHEMA: &str = "template-factory/1";
/// The record's file name.
pub const RECORD: &str = "template.json";
/// The descriptor's file name.
pub const DESCRIPTOR: &str = "descriptor";
/// The RAM file's name.
pub const MEMORY: &str = "memory";
/// The template VM's console log, kept beside it.
pub const CONSOLE: &str = "console.log";

/// What `template.json` says of the template.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// `template-factory/1`.
    pub schema: String,
    /// The hypervisor plugin that made it.
    pub hypervisor: String,
    /// The VM it was made from (no console log, no RAM file).
    pub config: HypervisorConfig,
    /// When it was saved, in seconds since the Unix epoch.
    pub created_unix_s: u64,
    /// How long making it took, in milliseconds.
    pub made_in_ms: u64,
}

impl Record {
    /// A record of a template made now.
    pub fn new(hypervisor: String, config: HypervisorConfig, made_in_ms: u64) -> Record {
        let created_unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Record { schema: SCHEMA.into(), hypervisor, config, created_unix_s, made_in_ms }
    }
}

/// A saved template: its record and the hypervisor plugin's descriptor.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its directory.
    pub path: PathBuf,
    /// Its record.
    pub record: Record,
    /// The hypervisor plugin's descriptor.
    pub descriptor: Vec<u8>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> PluginError {
    PluginError::io(format_args!("template factory: {what} {}", path.display()), &e)
}

/// An exclusive lock on `<path>.lock`, held until dropped.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock, making the directory that holds it (0700) if need be. Blocks while
    /// another process makes or removes the template.
    pub fn take(lock: &Path) -> Result<Lock, PluginError> {
        if let Some(parent) = lock.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(|e| io("making", parent, e))?;
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(lock).map_err(|e| io("opening", lock, e))?;
        loop {
            // SAFETY: flock on a descriptor `file` owns and keeps open; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Lock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(io("locking", lock, e));
            }
        }
    }
}

/// The template in `path`, if one was made there and finished: `Ok(None)` when there is none.
/// A record or descriptor that cannot be read is an error naming the file.
pub fn load(path: &Path) -> Result<Option<Template>, PluginError> {
    let record_path = path.join(RECORD);
    let bytes = match std::fs::read(&record_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", &record_path, e)),
    };
    let record: Record = serde_json::from_slice(&bytes)
        .map_err(|e| PluginError::invalid_input(format!("template factory: {} is not a template record: {e}", record_path.display())))?;
    if record.schema != SCHEMA {
        return Err(PluginError::invalid_input(format!("template factory: {} has schema {:?}, this plugin reads {SCHEMA:?}", record_path.display(), record.schema)));
    }
    let descriptor_path = path.join(DESCRIPTOR);
    let descriptor = std::fs::read(&descriptor_path).map_err(|e| io("reading", &descriptor_path, e))?;
    Ok(Some(Template { path: path.to_owned(), record, descriptor }))
}

/// Makes the empty, private directory a template is made in; what an unfinished making left
/// there is removed first.
pub fn make_dir(path: &Path) -> Result<(), PluginError> {
    remove(path)?;
    std::fs::DirBuilder::new().mode(0o700).create(path).map_err(|e| io("making", path, e))
}

/// Writes the descriptor, then the record (the template is complete once the record is in
/// place), each 0600.
pub fn commit(path: &Path, record: &Record, descriptor: &[u8]) -> Result<(), PluginError> {
    write_private(&path.join(DESCRIPTOR), descriptor)?;
    let json = serde_json::to_vec_pretty(record).unwrap_or_default();
    let tmp = path.join(format!("{RECORD}.tmp"));
    write_private(&tmp, &json)?;
    let target = path.join(RECORD);
    std::fs::rename(&tmp, &target).map_err(|e| io("renaming into place", &target, e))
}

fn write_private(file: &Path, bytes: &[u8]) -> Result<(), PluginError> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(file).map_err(|e| io("creating", file, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| io("writing", file, e))
}

/// Removes the template's directory, if there is one.
pub fn remove(path: &Path) -> Result<(), PluginError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path, e)),
    }
}

/// The bytes the files in `path` take on their file system (allocated blocks: a RAM file on
/// a tmpfs counts only the pages its guest touched).
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
            memory_file: None,
        }
    }

    #[test]
    fn made_committed_loaded_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t");
        assert!(load(&path).unwrap().is_none());
        make_dir(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(load(&path).unwrap().is_none(), "no record: not finished");
        std::fs::write(path.join(MEMORY), vec![1u8; 8192]).unwrap();
        let record = Record::new("qemu".into(), config(), 1234);
        commit(&path, &record, b"{\"schema\": \"x/1\"}").unwrap();
        for f in [RECORD, DESCRIPTOR] {
            assert_eq!(std::fs::metadata(path.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
        }
        let t = load(&path).unwrap().expect("a template");
        assert_eq!((t.record, t.descriptor.as_slice()), (record, &b"{\"schema\": \"x/1\"}"[..]));
        assert!(disk_bytes(&path) >= 8192);
        // A second making starts from an empty directory.
        make_dir(&path).unwrap();
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
        std::fs::write(path.join(RECORD), b"{\"schema\": \"template-factory/9\"}").unwrap();
        assert!(load(&path).unwrap_err().message.contains("not a template record"));
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
        let _lock = Lock::take(&tmp.path().join("sub/t.lock")).unwrap();
        assert!(tmp.path().join("sub/t.lock").exists());
    }
}
