//! Benchmarks: durable Save/Load/Delete of 1 KiB records through each storage plugin, linked
//! statically and loaded from its `.so`; and the cost of one call across the plugin ABI
//! against a direct call. Run with `cargo xtask bench`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use plugin_api::storage::{storage_into_ffi, Storage, StorageHandle};
use plugin_api::PluginError;
use runtime_core::plugins::Registry;
use serde_json::json;
use std::hint::black_box;

use storage_fs as _;
use storage_leveldb as _;

fn open(plugin: &str, dynamic: bool, dir: &std::path::Path) -> StorageHandle {
    let mut registry = Registry::new();
    if dynamic {
        let lib = integration_tests::workspace_plugin(&format!("storage_{plugin}_plugin"));
        registry.add_library(&lib).unwrap();
    } else {
        registry.add_static();
    }
    registry.open_storage(plugin, &json!({ "path": dir })).unwrap()
}

fn storage_ops(c: &mut Criterion) {
    let value = vec![0x5au8; 1024];
    for plugin in ["fs", "leveldb"] {
        for (linkage, dynamic) in [("static", false), ("dynamic", true)] {
            let dir = tempfile::tempdir().unwrap();
            let s = open(plugin, dynamic, dir.path());
            for i in 0..100 {
                s.save(&format!("sandbox/{i}/state"), &value).unwrap();
            }
            let mut group = c.benchmark_group(format!("{plugin}/{linkage}"));
            group.sample_size(30);
            let mut n = 0u64;
            group.bench_function("save_1KiB", |b| {
                b.iter(|| {
                    n += 1;
                    s.save(&format!("sandbox/{}/state", n % 100), black_box(&value)).unwrap()
                })
            });
            group.bench_function("load_1KiB", |b| {
                b.iter(|| {
                    n += 1;
                    black_box(s.load(&format!("sandbox/{}/state", n % 100)).unwrap())
                })
            });
            group.bench_function("delete_1KiB", |b| {
                b.iter_batched(
                    || s.save("doomed", &value).unwrap(),
                    |()| s.delete("doomed").unwrap(),
                    BatchSize::PerIteration,
                )
            });
            group.finish();
        }
    }
}

/// A storage that does nothing, so the benchmark measures only the call.
struct Null;

impl Storage for Null {
    fn save(&self, _: &str, _: &[u8]) -> Result<(), PluginError> {
        Ok(())
    }
    fn load(&self, key: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Ok((key.len() == 1000).then(Vec::new))
    }
    fn delete(&self, _: &str) -> Result<(), PluginError> {
        Ok(())
    }
    fn list(&self, _: &str) -> Result<Vec<String>, PluginError> {
        Ok(Vec::new())
    }
}

fn abi_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("abi_call");
    let direct: Box<dyn Storage> = Box::new(Null);
    group.bench_function("direct_dyn_call", |b| b.iter(|| black_box(direct.load(black_box("sandbox/1/state")))));
    let ffi = storage_into_ffi(Null);
    group.bench_function("ffi_trait_object", |b| {
        b.iter(|| black_box(ffi.load(black_box("sandbox/1/state").into())))
    });
    let handle = StorageHandle::new(storage_into_ffi(Null), "null");
    group.bench_function("host_handle", |b| b.iter(|| black_box(handle.load(black_box("sandbox/1/state")))));
    group.finish();
}

criterion_group!(benches, abi_call, storage_ops);
criterion_main!(benches);
