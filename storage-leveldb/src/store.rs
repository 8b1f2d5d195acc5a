//! Open-per-operation access to one RocksDB database, serialized across processes by `flock`.

use crate::value;
use plugin_api::storage::Storage;
use plugin_api::{ErrorKind, PluginError};
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to keep retrying when the database is locked by a process outside our locking
/// protocol (another tool holding RocksDB's own `LOCK`).
const FOREIGN_LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// A RocksDB store in one directory: `lock` and `db/`.
#[derive(Debug)]
pub struct LevelDbStorage {
    lock_path: PathBuf,
    db_path: PathBuf,
}

enum Access {
    Read,
    Write,
}

fn db_error(what: &str, path: &Path, e: rocksdb::Error) -> PluginError {
    let kind = match e.kind() {
        rocksdb::ErrorKind::Corruption => ErrorKind::CORRUPT,
        rocksdb::ErrorKind::Busy | rocksdb::ErrorKind::TimedOut | rocksdb::ErrorKind::TryAgain => {
            ErrorKind::BUSY
        }
        rocksdb::ErrorKind::IOError => ErrorKind::IO,
        _ => ErrorKind::OTHER,
    };
    PluginError::new(kind, format!("{what} {}: {e}", path.display()))
}

impl LevelDbStorage {
    /// Opens (creating the directory, mode 0700, and the database if missing) the store.
    pub fn open(root: &Path) -> Result<Self, PluginError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| PluginError::io(format!("creating store directory {}", root.display()), &e))?;
        let store = Self { lock_path: root.join("lock"), db_path: root.join("db") };
        // Create the database now, so a broken one is reported at open time.
        store.with_db(Access::Write, |_| Ok(()))?;
        Ok(store)
    }

    fn options(create: bool) -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.set_keep_log_file_num(2);
        opts.set_max_open_files(64);
        opts.set_log_level(rocksdb::LogLevel::Warn);
        opts
    }

    fn lock(&self, access: &Access) -> Result<File, PluginError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| PluginError::io(format!("opening {}", self.lock_path.display()), &e))?;
        let locked = match access {
            Access::Read => file.lock_shared(),
            Access::Write => file.lock(),
        };
        locked.map_err(|e| PluginError::io(format!("locking {}", self.lock_path.display()), &e))?;
        Ok(file)
    }

    /// Runs `f` on the database opened for `access`, holding the matching lock. `f` gets
    /// `None` for reads of a database that does not exist yet.
    fn with_db<T>(
        &self,
        access: Access,
        f: impl FnOnce(Option<&DB>) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        let lock = self.lock(&access)?;
        let deadline = Instant::now() + FOREIGN_LOCK_PATIENCE;
        let db = loop {
            let opened = match access {
                Access::Write => DB::open(&Self::options(true), &self.db_path),
                Access::Read if !self.db_path.join("CURRENT").exists() => break None,
                Access::Read => DB::open_for_read_only(&Self::options(false), &self.db_path, false),
            };
            match opened {
                Ok(db) => break Some(db),
                Err(e) if e.kind() == rocksdb::ErrorKind::IOError
                    && e.to_string().contains("lock")
                    && Instant::now() < deadline =>
                {
                    tracing::debug!(error = %e, "database locked outside our protocol; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(db_error("opening database", &self.db_path, e)),
            }
        };
        let result = f(db.as_ref());
        drop(db);
        let _ = lock.unlock();
        result
    }

    fn write(&self, batch: WriteBatch) -> Result<(), PluginError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.with_db(Access::Write, |db| {
            let db = db.ok_or_else(|| PluginError::other("database missing after open"))?;
            db.write_opt(batch, &opts).map_err(|e| db_error("writing to", &self.db_path, e))
        })
    }

    fn unframe(&self, key: &str, stored: &[u8]) -> Result<Vec<u8>, PluginError> {
        value::decode(stored).map(<[u8]>::to_vec).map_err(|e| {
            PluginError::corrupt(format!("value of key {key:?} in {} is corrupt: {e}", self.db_path.display()))
        })
    }
}

impl Storage for LevelDbStorage {
    fn save(&self, key: &str, value: &[u8]) -> Result<(), PluginError> {
        let mut batch = WriteBatch::default();
        batch.put(key.as_bytes(), value::encode(value));
        self.write(batch)
    }

    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        self.with_db(Access::Read, |db| {
            let Some(db) = db else { return Ok(None) };
            match db.get_pinned(key.as_bytes()) {
                Ok(Some(stored)) => self.unframe(key, &stored).map(Some),
                Ok(None) => Ok(None),
                Err(e) => Err(db_error("reading", &self.db_path, e)),
            }
        })
    }

    fn delete(&self, key: &str) -> Result<(), PluginError> {
        let mut batch = WriteBatch::default();
        batch.delete(key.as_bytes());
        self.write(batch)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, PluginError> {
        self.with_db(Access::Read, |db| {
            let Some(db) = db else { return Ok(Vec::new()) };
            let mut keys = Vec::new();
            for item in db.iterator(IteratorMode::From(prefix.as_bytes(), Direction::Forward)) {
                let (key, _) = item.map_err(|e| db_error("iterating", &self.db_path, e))?;
                if !key.starts_with(prefix.as_bytes()) {
                    break;
                }
                match String::from_utf8(key.into_vec()) {
                    Ok(key) => keys.push(key),
                    Err(e) => tracing::warn!(key = ?e.as_bytes(), "ignoring a key that is not UTF-8"),
                }
            }
            Ok(keys)
        })
    }

    /// Applies the whole batch atomically, in one synced write.
    fn save_batch(&self, ops: &[(&str, Option<&[u8]>)]) -> Result<(), PluginError> {
        let mut batch = WriteBatch::default();
        for (key, value) in ops {
            match value {
                Some(v) => batch.put(key.as_bytes(), value::encode(v)),
                None => batch.delete(key.as_bytes()),
            }
        }
        self.write(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_value_written_behind_our_back_is_corrupt_and_others_survive() {
        let dir = tempfile::tempdir().unwrap();
        let s = LevelDbStorage::open(dir.path()).unwrap();
        s.save("good", b"fine").unwrap();
        s.with_db(Access::Write, |db| {
            db.unwrap().put(b"bad", b"\x01garbage").unwrap();
            Ok(())
        })
        .unwrap();
        let err = s.load("bad").unwrap_err();
        assert_eq!(err.kind, ErrorKind::CORRUPT);
        assert!(err.message.contains("\"bad\""), "{err}");
        assert_eq!(s.load("good").unwrap().as_deref(), Some(&b"fine"[..]));
        assert_eq!(s.list("").unwrap(), vec!["bad".to_owned(), "good".to_owned()]);
    }

    #[test]
    fn a_garbage_current_file_is_reported_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = LevelDbStorage::open(dir.path()).unwrap();
        s.save("k", b"v").unwrap();
        std::fs::write(dir.path().join("db/CURRENT"), b"\x00\xffnot a manifest name\n").unwrap();
        let err = s.load("k").unwrap_err();
        assert!(err.message.contains("opening database"), "{err}");
        let err = s.save("k2", b"v").unwrap_err();
        assert!(err.message.contains("opening database"), "{err}");
    }
}
