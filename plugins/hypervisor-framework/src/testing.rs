//! Fixtures for the plugins' tests (the `test-util` feature).

use crate::state::{VmFields, VmState};
use plugin_api::hypervisor::{DiskConfig, HypervisorConfig};
use std::path::{Path, PathBuf};

/// The smallest VM: `kernel`, 1 vCPU, 128 MiB, no initrd, parameters, console log or disks.
pub fn hypervisor_config(kernel: impl Into<PathBuf>) -> HypervisorConfig {
    HypervisorConfig {
        schema: 1,
        kernel: kernel.into(),
        initrd: None,
        kernel_params: String::new(),
        vcpus: 1,
        memory_mib: 128,
        extra: serde_json::Value::Null,
        console_log: None,
        disks: vec![],
        memory_file: None,
    }
}

/// A VM with 256 MiB and a read-only `rootfs` disk, `<dir>/root.img` (written here).
///
/// # Panics
/// When `<dir>/root.img` cannot be written.
pub fn config_with_rootfs(dir: &Path, kernel: PathBuf) -> HypervisorConfig {
    let image = dir.join("root.img");
    std::fs::write(&image, b"r").expect("writing root.img");
    HypervisorConfig {
        memory_mib: 256,
        disks: vec![DiskConfig { name: "rootfs".into(), path: image, read_only: true }],
        ..hypervisor_config(kernel)
    }
}

/// Why `blob` is refused as a `VmState<F>`: the error and its causes.
///
/// # Panics
/// When the blob is accepted.
pub fn decode_error<F: VmFields>(blob: &serde_json::Value) -> String {
    match VmState::<F>::decode(blob.to_string().as_bytes()) {
        Ok(_) => panic!("the blob {blob} was accepted"),
        Err(e) => error_report::chain(&e),
    }
}

/// Why the blob of `state` with `key` set to `value` is refused (see [`decode_error`]).
///
/// # Panics
/// When `state` does not serialize, or the changed blob is accepted.
pub fn error_with<F: VmFields>(state: &VmState<F>, key: &str, value: serde_json::Value) -> String {
    let mut blob = serde_json::to_value(state).expect("serializing the state");
    blob[key] = value;
    decode_error::<F>(&blob)
}
