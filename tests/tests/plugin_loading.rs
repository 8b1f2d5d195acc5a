//! The loader refuses bad plugin files with one-line errors that name the file and the
//! reason, and a plugin's panics become errors while the host keeps running.

use integration_tests::{
    build_out_of_tree, fixture, install, is_root, private_dir, skip_unless, workspace_plugin,
};
use plugin_api::{ErrorKind, PluginKind};
use runtime_core::plugins::{error_chain, LoadError, Registry, RegistryError};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use storage_fs as _;

fn reasons(registry: &Registry) -> Vec<String> {
    registry.refused().iter().map(|r| r.reason.clone()).collect()
}

fn refused_for<'a>(reasons: &'a [String], file: &str) -> &'a str {
    reasons
        .iter()
        .find(|r| r.contains(file))
        .unwrap_or_else(|| panic!("no refusal naming {file} in {reasons:#?}"))
}

#[test]
fn a_directory_of_bad_files_is_refused_file_by_file() {
    let dir = private_dir();
    let d = dir.path();
    std::fs::write(d.join("libnotes.so"), "these are notes, not a library\n").unwrap();
    std::fs::write(d.join("libempty.so"), b"").unwrap();
    let fs_so = std::fs::read(workspace_plugin("storage_fs_plugin")).unwrap();
    std::fs::write(d.join("libtruncated.so"), &fs_so[..fs_so.len() / 2]).unwrap();
    let libz = ["/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libz.so.1 (zlib1g is essential on Debian)");
    install(Path::new(libz), d, "libz-not-a-plugin.so");
    install(Path::new("/bin/true"), d, "libtrue.so");
    std::fs::write(d.join("README.txt"), "ignored: not named like a library\n").unwrap();
    install(&workspace_plugin("panicky_plugin"), d, "libpanicky.so");

    let registry = Registry::discover(&[d.to_owned()], false).unwrap();
    let reasons = reasons(&registry);
    for r in &reasons {
        println!("{r}");
        assert!(!r.contains('\n'), "one line: {r}");
    }
    assert!(refused_for(&reasons, "libnotes.so").ends_with("it is not an ELF file"));
    assert!(refused_for(&reasons, "libempty.so").ends_with("it is empty"));
    assert!(refused_for(&reasons, "libtruncated.so").contains("it is truncated"));
    assert!(refused_for(&reasons, "libz-not-a-plugin.so").contains("exports no plugin root module"));
    assert!(refused_for(&reasons, "libtrue.so").contains("not a shared library"));
    assert_eq!(reasons.len(), 5, "README.txt is ignored, the rest refused: {reasons:#?}");
    let names: Vec<_> = registry.plugins().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["panicky"], "the good plugin still loads");
}

#[test]
fn every_panic_in_a_plugin_becomes_an_error_and_the_host_goes_on() {
    let registry = {
        let mut r = Registry::new();
        r.add_library(&workspace_plugin("panicky_plugin")).unwrap();
        r.add_static();
        r
    };
    let err = registry.open_storage("panicky", &json!({"panic_in": "new"})).unwrap_err();
    let line = error_chain(&err);
    assert!(line.contains("plugin panicked") && line.contains("panicky constructor"), "{line}");

    let s = registry.open_storage("panicky", &json!({})).unwrap();
    let errors = [
        s.save("k", b"v").unwrap_err(),
        s.load("k").unwrap_err(),
        s.delete("k").unwrap_err(),
        s.list("").unwrap_err(),
        s.save_batch(&[("k", None)]).unwrap_err(),
    ];
    for e in &errors {
        assert_eq!(e.kind, ErrorKind::PANICKED, "{e}");
    }
    assert!(errors[0].message.contains("panicky save of k"), "{}", errors[0]);

    // The host process is alive and other plugins work.
    let dir = tempfile::tempdir().unwrap();
    let fs = registry.open_storage("fs", &json!({"path": dir.path()})).unwrap();
    fs.save("still", b"alive").unwrap();
    assert_eq!(fs.load("still").unwrap().as_deref(), Some(&b"alive"[..]));
}

#[test]
fn a_plugin_built_with_panic_abort_is_refused() {
    let lib = build_out_of_tree(&fixture("abort-plugin"), "abort_plugin");
    let err = Registry::new().add_library(&lib).map(|_| ()).unwrap_err();
    assert!(matches!(err, RegistryError::Load(LoadError::PanicAbort { .. })), "{err}");
    let line = error_chain(&err);
    assert!(line.contains("libabort_plugin.so") && line.contains("panic=abort"), "{line}");
}

#[test]
fn files_and_directories_others_can_write_are_refused() {
    let dir = private_dir();
    let lib = install(&workspace_plugin("storage_fs_plugin"), dir.path(), "libfs.so");
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = Registry::new().add_library(&lib).map(|_| ()).unwrap_err();
    let line = error_chain(&err);
    assert!(line.contains("libfs.so") && line.contains("writable by other users"), "{line}");

    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Registry::discover(&[dir.path().to_owned()], false).map(|_| ()).unwrap_err();
    let line = error_chain(&err);
    assert!(line.starts_with("refused plugin directory") && line.contains("0777"), "{line}");
}

#[test]
fn a_plugin_owned_by_another_user_is_refused() {
    if skip_unless(is_root(), "needs root to chown a file to another user") {
        return;
    }
    let dir = private_dir();
    let lib = install(&workspace_plugin("storage_fs_plugin"), dir.path(), "libfs-nobody.so");
    std::os::unix::fs::chown(&lib, Some(65534), Some(65534)).unwrap();
    let line = error_chain(&Registry::new().add_library(&lib).map(|_| ()).unwrap_err());
    assert!(line.contains("owned by uid 65534"), "{line}");
}

#[test]
fn two_plugins_with_one_kind_and_name_are_refused_and_one_library_loads_once() {
    let dir = private_dir();
    let so = workspace_plugin("storage_fs_plugin");
    install(&so, dir.path(), "liba-fs.so");
    install(&so, dir.path(), "libb-fs.so");
    std::os::unix::fs::symlink(dir.path().join("liba-fs.so"), dir.path().join("libc-link.so")).unwrap();
    let registry = Registry::discover(&[dir.path().to_owned()], true).unwrap();
    let reasons = reasons(&registry);
    // Static fs comes first; both copies are duplicates of it; the symlink resolves to liba.
    assert_eq!(reasons.len(), 3, "{reasons:#?}");
    assert!(refused_for(&reasons, "liba-fs.so").contains("storage plugin \"fs\", which statically linked already provides"));

    let mut registry = Registry::new();
    registry.add_library(&dir.path().join("liba-fs.so")).unwrap();
    registry.add_library(&dir.path().join("libc-link.so")).unwrap(); // same canonical file
    let err = registry.add_library(&dir.path().join("libb-fs.so")).map(|_| ()).unwrap_err();
    assert!(matches!(err, RegistryError::Duplicate { .. }), "{err}");
    assert_eq!(registry.plugins().count(), 1);
}

#[test]
fn the_hypervisor_plugins_load_from_their_libraries() {
    let dir = private_dir();
    install(&workspace_plugin("hypervisor_qemu_plugin"), dir.path(), "libhypervisor_qemu_plugin.so");
    install(&workspace_plugin("hypervisor_kvm_plugin"), dir.path(), "libhypervisor_kvm_plugin.so");
    let registry = Registry::discover(&[dir.path().to_owned()], false).unwrap();
    assert!(registry.refused().is_empty(), "{:#?}", reasons(&registry));
    let mut names: Vec<_> = registry.plugins().map(|p| (p.name.as_str(), p.kind)).collect();
    names.sort_by_key(|(name, _)| *name);
    assert_eq!(names, [("kvm", PluginKind::HYPERVISOR), ("qemu", PluginKind::HYPERVISOR)]);

    // The kvm plugin's config errors name the key; a VM is created, reported and stopped
    // through the library without booting (`true` stands in for the vmm).
    let err = registry.open_hypervisor("kvm", &json!({"agent_ports": 0})).map(|_| ()).unwrap_err();
    assert!(error_chain(&err).contains("agent_ports = 0"), "{}", error_chain(&err));
    let work = tempfile::tempdir().unwrap();
    let kvm = registry.open_hypervisor("kvm", &json!({"vmm": "true", "run_dir": work.path().join("run"), "agent_ports": 1})).unwrap();
    let kernel = work.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF, enough for the check").unwrap();
    let config = hypervisor_framework::testing::hypervisor_config(kernel);
    let blob = kvm.create_vm("sb1", &config).unwrap();
    assert_eq!(kvm.vm_status(&blob).unwrap(), "created");
    let vm_dir = work.path().join("run/sb1");
    let endpoint = kvm.agent_endpoint(&blob).unwrap();
    assert_eq!(endpoint, format!("hvsock:{0}/vsock.sock:1024,serial:{0}/agent-0.sock", vm_dir.display()));
    let stopped = kvm.stop_vm(&blob).unwrap();
    assert_eq!(kvm.vm_status(&stopped).unwrap(), "stopped");
    assert!(!vm_dir.exists());
    let err = kvm.vm_status(b"{}").unwrap_err();
    assert_eq!(err.kind, ErrorKind::INVALID_INPUT);
}

#[test]
fn the_factory_plugins_load_from_their_libraries() {
    let dir = private_dir();
    install(&workspace_plugin("factory_new_plugin"), dir.path(), "libfactory_new_plugin.so");
    install(&workspace_plugin("factory_cache_plugin"), dir.path(), "libfactory_cache_plugin.so");
    install(&workspace_plugin("factory_template_plugin"), dir.path(), "libfactory_template_plugin.so");
    let registry = Registry::discover(&[dir.path().to_owned()], false).unwrap();
    assert!(registry.refused().is_empty(), "{:#?}", reasons(&registry));
    let mut names: Vec<_> = registry.plugins().map(|p| (p.name.as_str(), p.kind)).collect();
    names.sort_by_key(|(name, _)| *name);
    assert_eq!(names, [("cache", PluginKind::VM_FACTORY), ("new", PluginKind::VM_FACTORY), ("template", PluginKind::VM_FACTORY)]);
    // Their settings are checked through the library, errors naming the key.
    let err = registry.open_vm_factory("cache", &json!({"size": 0})).map(|_| ()).unwrap_err();
    assert!(error_chain(&err).contains("size = 0: must be 1 to 64"), "{}", error_chain(&err));
    let err = registry.open_vm_factory("new", &json!({"size": 2})).map(|_| ()).unwrap_err();
    assert!(error_chain(&err).contains("unknown field `size`"), "{}", error_chain(&err));
    let new = registry.open_vm_factory("new", &json!({})).unwrap();
    assert_eq!(new.status().unwrap().factory, "new");
    let cache = registry.open_vm_factory("cache", &json!({"size": 2})).unwrap();
    let err = cache.status().unwrap_err();
    assert!(err.message.contains("not initialized"), "{err}");
    let err = registry.open_vm_factory("template", &json!({"path": "relative"})).map(|_| ()).unwrap_err();
    assert!(error_chain(&err).contains("path = \"relative\": must be an absolute path"), "{}", error_chain(&err));
    // destroy may come without init: it removes the template directory the settings name.
    let path = dir.path().join("template");
    std::fs::create_dir(&path).unwrap();
    let template = registry.open_vm_factory("template", &json!({"path": path})).unwrap();
    assert_eq!(template.status().unwrap().template, None, "no template before init");
    template.destroy().unwrap();
    assert!(!path.exists());
}

#[test]
fn an_unknown_plugin_name_lists_the_names_available() {
    let mut registry = Registry::new();
    registry.add_static();
    let err = registry.open_storage("lvldb", &json!({})).map(|_| ()).unwrap_err();
    assert_eq!(err.to_string(), "no storage plugin named \"lvldb\"; available: fs");
}

/// Makes a copy of the plugin-api 1.0 fixture with `edit` applied to one file, and builds the
/// compat plugin against it.
fn build_against_edited_api(tag: &str, file: &str, from: &str, to: &str) -> std::path::PathBuf {
    let work = integration_tests::profile_dir().parent().unwrap().join("fixtures/src").join(tag);
    let _ = std::fs::remove_dir_all(&work);
    copy_tree(&fixture("plugin-api-1.0"), &work.join("plugin-api-1.0"));
    copy_tree(&fixture("compat-plugin"), &work.join("compat-plugin"));
    let path = work.join("plugin-api-1.0").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} no longer contains {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    build_out_of_tree(&work.join("compat-plugin"), "compat_plugin")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[test]
fn a_plugin_of_another_major_plugin_api_is_refused_in_one_line() {
    let lib = build_against_edited_api("major2", "Cargo.toml", "version = \"1.0.0\"", "version = \"2.0.0\"");
    let err = Registry::new().add_library(&lib).map(|_| ()).unwrap_err();
    let line = error_chain(&err);
    println!("{line}");
    assert!(line.contains("built against plugin-api 2.0.0, incompatible with this core's 1."), "{line}");
    assert!(!line.contains('\n'));
}

#[test]
fn a_plugin_whose_types_changed_layout_is_refused_in_one_line() {
    let lib = build_against_edited_api(
        "layout",
        "src/manifest.rs",
        "pub struct PanicStrategy(pub u8);",
        "pub struct PanicStrategy(pub u16);",
    );
    let err = Registry::new().add_library(&lib).map(|_| ()).unwrap_err();
    let line = error_chain(&err);
    println!("{line}");
    assert!(line.contains("built against plugin-api 1.0.0, incompatible with this core's"), "{line}");
    assert!(!line.contains('\n') && line.len() < 600, "{line}");
}
