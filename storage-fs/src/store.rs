//! The store: crash-safe record files in one directory, usable by several processes at once.
//!
//! Readers take no lock: a record file is only ever replaced whole, by `rename`. Writers hold
//! a shared `flock` on `.lock` while their temporary file exists; opening the store takes the
//! exclusive lock without waiting and, if it gets it (no writer is active anywhere), removes
//! temporary files left by writers that crashed.

use crate::{keyname, record};
use plugin_api::storage::Storage;
use plugin_api::{ErrorKind, PluginError};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind as IoKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const LOCK_FILE: &str = ".lock";
const TMP_PREFIX: &str = ".tmp-";

/// A filesystem store rooted at one directory.
#[derive(Debug)]
pub struct FsStorage {
    root: PathBuf,
    lock_path: PathBuf,
}

/// Numbers temporary files, process-wide (several stores may share a directory).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FsStorage {
    /// Opens (creating it, mode 0700, if missing) the store at `root`.
    pub fn open(root: &Path) -> Result<Self, PluginError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| PluginError::io(format!("creating store directory {}", root.display()), &e))?;
        if !root.is_dir() {
            return Err(PluginError::invalid_input(format!("{} is not a directory", root.display())));
        }
        let store =
            Self { root: root.to_owned(), lock_path: root.join(LOCK_FILE) };
        store.sweep_temporaries(&store.open_lock()?);
        Ok(store)
    }

    /// Opens the lock file. Each lock holder opens its own file description: `flock` state
    /// belongs to the description, so sharing one between threads would let one thread's
    /// unlock release another's lock.
    fn open_lock(&self) -> Result<File, PluginError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| PluginError::io(format!("opening {}", self.lock_path.display()), &e))
    }

    fn sweep_temporaries(&self, lock: &File) {
        if lock.try_lock().is_err() {
            return; // a writer is active somewhere; the next opener will sweep
        }
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    tracing::info!(file = %entry.path().display(), "removing a temporary file left by a crashed writer");
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        let _ = lock.unlock();
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(keyname::encode(key))
    }

    fn sync_dir(&self) -> Result<(), PluginError> {
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(|e| PluginError::io(format!("fsync of directory {}", self.root.display()), &e))
    }

    /// Runs `f` under the shared writer lock.
    fn with_writer_lock<T>(&self, f: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
        let lock = self.open_lock()?;
        lock.lock_shared()
            .map_err(|e| PluginError::io(format!("locking {}", self.lock_path.display()), &e))?;
        let result = f();
        let _ = lock.unlock();
        result
    }

    fn write_record(&self, key: &str, value: &[u8]) -> Result<(), PluginError> {
        let target = self.path_of(key);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            file.write_all(&record::encode(key, value))?;
            file.sync_all()?;
            fs::rename(&tmp, &target)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(PluginError::io(format!("writing record {}", target.display()), &e));
        }
        self.sync_dir()
    }

    fn read_record(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        let path = self.path_of(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
            Err(e) => return Err(PluginError::io(format!("reading record {}", path.display()), &e)),
        };
        let (stored_key, value) = record::decode(&bytes).map_err(|e| {
            PluginError::corrupt(format!("record for key {key:?} ({}) is corrupt: {e}", path.display()))
        })?;
        if stored_key != key {
            return Err(PluginError::corrupt(format!(
                "record {} holds key {stored_key:?}, not {key:?}",
                path.display()
            )));
        }
        Ok(Some(value.to_vec()))
    }
}

impl Storage for FsStorage {
    fn save(&self, key: &str, value: &[u8]) -> Result<(), PluginError> {
        self.with_writer_lock(|| self.write_record(key, value))
    }

    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        self.read_record(key)
    }

    fn delete(&self, key: &str) -> Result<(), PluginError> {
        let path = self.path_of(key);
        self.with_writer_lock(|| match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(PluginError::io(format!("deleting record {}", path.display()), &e)),
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, PluginError> {
        let entries = fs::read_dir(&self.root)
            .map_err(|e| PluginError::io(format!("listing {}", self.root.display()), &e))?;
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| PluginError::io(format!("listing {}", self.root.display()), &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let key = if keyname::is_hashed(name) {
                match fs::read(entry.path()) {
                    Ok(bytes) => record::key_of(&bytes).map_err(|e| {
                        PluginError::new(
                            ErrorKind::CORRUPT,
                            format!("record {} is corrupt: {e}", entry.path().display()),
                        )
                    })?,
                    Err(e) if e.kind() == IoKind::NotFound => continue, // deleted meanwhile
                    Err(e) => return Err(PluginError::io(format!("reading {}", entry.path().display()), &e)),
                }
            } else if let Some(key) = keyname::decode(name) {
                key
            } else {
                tracing::warn!(file = %entry.path().display(), "ignoring a file that is not a record");
                continue;
            };
            if key.starts_with(prefix) {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FsStorage) {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(&dir.path().join("meta")).unwrap();
        (dir, s)
    }

    #[test]
    fn keys_never_escape_the_directory() {
        let (dir, s) = store();
        for key in ["../escape", "/etc/x", "..", "a/../../b"] {
            s.save(key, b"v").unwrap();
            assert_eq!(s.load(key).unwrap().as_deref(), Some(&b"v"[..]));
        }
        let outside: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(outside, vec![std::ffi::OsString::from("meta")]);
    }

    #[test]
    fn a_truncated_record_is_a_clear_error_and_others_survive() {
        let (_dir, s) = store();
        s.save("good", b"fine").unwrap();
        s.save("bad", &[7u8; 100]).unwrap();
        let path = s.path_of("bad");
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 10).unwrap();
        let err = s.load("bad").unwrap_err();
        assert_eq!(err.kind, ErrorKind::CORRUPT);
        assert!(err.message.contains("\"bad\"") && err.message.contains("truncated"), "{err}");
        assert_eq!(s.load("good").unwrap().as_deref(), Some(&b"fine"[..]));
        s.save("bad", b"rewritten").unwrap();
        assert_eq!(s.load("bad").unwrap().as_deref(), Some(&b"rewritten"[..]));
    }

    #[test]
    fn a_record_renamed_under_another_key_is_refused() {
        let (_dir, s) = store();
        s.save("a", b"1").unwrap();
        fs::rename(s.path_of("a"), s.path_of("b")).unwrap();
        assert!(s.load("b").unwrap_err().message.contains("holds key \"a\""));
    }

    #[test]
    fn stale_temporaries_are_swept_and_foreign_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("m");
        let s = FsStorage::open(&root).unwrap();
        s.save("k", b"v").unwrap();
        fs::write(root.join(".tmp-999999-0"), b"half a record").unwrap();
        fs::write(root.join("%zz-not-a-record"), b"x").unwrap();
        drop(s);
        let s = FsStorage::open(&root).unwrap();
        assert!(!root.join(".tmp-999999-0").exists());
        assert_eq!(s.list("").unwrap(), vec!["k".to_owned()]);
    }
}
