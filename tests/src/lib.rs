//! Helpers shared by the integration tests: finding the plugin libraries the workspace
//! builds, building the out-of-tree fixtures, and skipping tests a machine cannot run.

pub mod agent;
pub mod factories;
pub mod host_agent;
pub mod kvm;
pub mod oci;
pub mod qemu;
pub mod rules;
pub mod sandbox;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// The profile directory of this test binary (`<target>/debug`), from its own path:
/// test binaries live in `<target>/<profile>/deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("<target>/<profile>/deps/<exe>").to_owned()
}

/// A plugin library the workspace builds (`lib<name>.so` in the profile directory). The
/// test command (`cargo xtask test`) builds them before running the tests.
pub fn workspace_plugin(lib_name: &str) -> PathBuf {
    let path = profile_dir().join(format!("lib{lib_name}.so"));
    assert!(
        path.exists(),
        "{} is missing: build the plugin libraries first (`cargo xtask test` does, or \
         `cargo build -p storage-fs-plugin -p storage-leveldb-plugin -p hypervisor-qemu-plugin \
         -p hypervisor-kvm-plugin -p factory-new-plugin -p factory-cache-plugin -p factory-template-plugin -p panicky-plugin`)",
        path.display()
    );
    path
}

static BUILD: Mutex<()> = Mutex::new(());

/// Builds an out-of-tree Cargo project (a fixture or an example) into `<target>/fixtures` and
/// returns its `lib<lib_name>.so`. Cargo's own lock serializes concurrent test processes.
pub fn build_out_of_tree(manifest_dir: &Path, lib_name: &str) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let target = profile_dir().parent().expect("target dir").join("fixtures");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("running cargo");
    assert!(
        output.status.success(),
        "building {} failed:\n{}",
        manifest_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let lib = target.join("debug").join(format!("lib{lib_name}.so"));
    assert!(lib.exists(), "{} was not produced", lib.display());
    lib
}

/// A fixture project under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures").join(name)
}

/// A private (0700) temporary directory, suitable as a plugin directory.
pub fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    dir
}

/// Copies `lib` into `dir` as `name` with mode 0644 and returns the new path.
pub fn install(lib: &Path, dir: &Path, name: &str) -> PathBuf {
    let dest = dir.join(name);
    std::fs::copy(lib, &dest).expect("copy plugin");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    dest
}

/// Whether tests that need something this machine may lack must run anyway: `.ci/run` sets
/// `SANDBOX_TESTS_STRICT=1` on machines that can run every tier it enables.
pub fn strict() -> bool {
    std::env::var("SANDBOX_TESTS_STRICT").is_ok_and(|v| v == "1")
}

/// Skips (returns `true` after printing one line saying why) unless `available`; under
/// [`strict`] a missing requirement fails the test instead.
pub fn skip_unless(available: bool, why: &str) -> bool {
    if available {
        return false;
    }
    assert!(!strict(), "required in strict mode but unavailable: {why}");
    eprintln!("SKIP: {why}");
    true
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The permission bits of `path` (`0o600`), which must exist.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Sends the runtime's and the plugins' warnings and errors (`tracing`) to the test's output,
/// shown when a test fails: a VMM that died, a pooled VM that was discarded. Once per process;
/// `TEST_LOG=debug` (or any `tracing` level) shows more.
pub fn log_warnings() {
    let level = std::env::var("TEST_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(tracing::Level::WARN);
    let _ = tracing_subscriber::fmt().with_max_level(level).with_test_writer().try_init();
}
