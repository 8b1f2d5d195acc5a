//! The MetadataStorage conformance kit against both built-in plugins, linked statically and
//! loaded from their `.so`, against the out-of-tree vendor example, and against a plugin
//! built with plugin-api 1.0.

use integration_tests::{build_out_of_tree, fixture, workspace_plugin, workspace_root};
use plugin_api::conformance::storage::run;
use runtime_core::plugins::Registry;
use serde_json::json;

// Link the built-in plugins statically into this test binary.
use storage_fs as _;
use storage_leveldb as _;

fn check(registry: &Registry, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let storage = registry.open_storage(name, &json!({"path": dir.path().join("store")})).unwrap();
    let report = run(&storage);
    println!("{report}");
    assert!(report.passed(), "{name}: {report}");
    assert_eq!(report.checks.len(), 12);
}

fn statically_linked() -> Registry {
    let mut registry = Registry::new();
    registry.add_static();
    registry
}

fn dynamically_loaded(lib: &std::path::Path) -> Registry {
    let mut registry = Registry::new();
    registry.add_library(lib).unwrap();
    registry
}

#[test]
fn fs_linked_statically() {
    check(&statically_linked(), "fs");
}

#[test]
fn leveldb_linked_statically() {
    check(&statically_linked(), "leveldb");
}

#[test]
fn fs_loaded_from_its_so() {
    check(&dynamically_loaded(&workspace_plugin("storage_fs_plugin")), "fs");
}

#[test]
fn leveldb_loaded_from_its_so() {
    check(&dynamically_loaded(&workspace_plugin("storage_leveldb_plugin")), "leveldb");
}

#[test]
fn the_out_of_tree_vendor_example_found_in_a_plugin_directory() {
    let lib = build_out_of_tree(&workspace_root().join("examples/vendor-storage"), "vendor_storage");
    let dir = integration_tests::private_dir();
    integration_tests::install(&lib, dir.path(), "libvendor_storage.so");
    let registry = Registry::discover(&[dir.path().to_owned()], false).unwrap();
    assert!(registry.refused().is_empty(), "{:?}", registry.refused());
    let info = registry.plugins().next().expect("the vendor plugin is found");
    assert_eq!((info.name.as_str(), info.vendor.as_str()), ("jsonfile", "Example Vendor Ltd."));
    check(&registry, "jsonfile");
}

#[test]
fn a_plugin_built_against_plugin_api_1_0_loads_and_conforms() {
    let lib = build_out_of_tree(&fixture("compat-plugin"), "compat_plugin");
    let registry = dynamically_loaded(&lib);
    let info = registry.plugins().next().unwrap();
    assert_eq!(info.api_version, "1.0.0");
    assert_ne!(info.api_version, plugin_api::API_VERSION, "the fixture must be older than the core");
    // save_batch did not exist in 1.0: the host falls back to one call per entry.
    check(&registry, "compat-memory");
}
