//! Several processes use one store at once: each built-in plugin, with worker processes that
//! write their own keys, overwrite a shared key and read each other's keys concurrently. No
//! worker may see an error (a lock error least of all) and every write must land.

use runtime_core::plugins::Registry;
use serde_json::json;
use std::path::Path;
use std::process::Command;

use storage_fs as _;
use storage_leveldb as _;

const WORKERS: usize = 4;
const KEYS_PER_WORKER: usize = 30;
const WORKER_ENV: &str = "STORAGE_MULTIPROCESS_WORKER";

/// The worker's body, run in a child process (this same test binary, re-executed).
fn work(plugin: &str, path: &Path, id: usize) {
    let mut registry = Registry::new();
    registry.add_static();
    let s = registry.open_storage(plugin, &json!({ "path": path })).unwrap();
    for i in 0..KEYS_PER_WORKER {
        s.save(&format!("w{id}/k{i:03}"), format!("{id}:{i}").as_bytes()).unwrap();
        s.save("shared/last-writer", format!("{id}:{i}").as_bytes()).unwrap();
        // Read what another worker may be writing right now.
        let other = (id + 1) % WORKERS;
        if let Some(v) = s.load(&format!("w{other}/k{i:03}")).unwrap() {
            assert_eq!(v, format!("{other}:{i}").as_bytes());
        }
        let listed = s.list(&format!("w{id}/")).unwrap();
        assert_eq!(listed.len(), i + 1, "worker {id} sees its own writes");
        if i % 10 == 9 {
            s.delete(&format!("w{id}/k{:03}", i - 9)).unwrap();
            s.save(&format!("w{id}/k{:03}", i - 9), format!("{id}:{}", i - 9).as_bytes()).unwrap();
        }
    }
}

fn run(plugin: &str, test_name: &str) {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        let (id, path) = spec.split_once(':').unwrap();
        work(plugin, Path::new(path), id.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WORKERS)
        .map(|id| {
            Command::new(&exe)
                .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
                .env(WORKER_ENV, format!("{id}:{}", store.display()))
                .output_async()
        })
        .collect();
    for (id, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker {id} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut registry = Registry::new();
    registry.add_static();
    let s = registry.open_storage(plugin, &json!({ "path": store })).unwrap();
    for id in 0..WORKERS {
        for i in 0..KEYS_PER_WORKER {
            let v = s.load(&format!("w{id}/k{i:03}")).unwrap();
            assert_eq!(v, Some(format!("{id}:{i}").into_bytes()), "w{id}/k{i:03}");
        }
    }
    assert_eq!(s.list("").unwrap().len(), WORKERS * KEYS_PER_WORKER + 1);
    let last = String::from_utf8(s.load("shared/last-writer").unwrap().unwrap()).unwrap();
    assert!(last.ends_with(&format!(":{}", KEYS_PER_WORKER - 1)), "{last}");
}

trait SpawnExt {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnExt for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    }
}

#[test]
fn fs_store_shared_by_several_processes() {
    run("fs", "fs_store_shared_by_several_processes");
}

#[test]
fn leveldb_store_shared_by_several_processes() {
    run("leveldb", "leveldb_store_shared_by_several_processes");
}
