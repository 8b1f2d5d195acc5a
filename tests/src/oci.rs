//! OCI runtime specs for the busybox test containers: the ones the runtime generates
//! (`runtime_core::sandbox::oci`), with the hostname `busybox`.

use runtime_core::sandbox::{oci, ContainerConfig, ProcessConfig, RootfsConfig};
use serde_json::Value;

fn process_config(args: &[&str], terminal: bool) -> ProcessConfig {
    let mut p = ProcessConfig::new(args.iter().copied());
    p.terminal = terminal;
    p
}

/// The `process` object: `args` as root in `/`, with a minimal capability set, an rlimit and
/// no_new_privileges.
pub fn process(args: &[&str], terminal: bool) -> Value {
    oci::process(&process_config(args, terminal))
}

/// A whole spec: pid, ipc, uts and mount namespaces (the network is the guest's, as in Kata),
/// the usual pseudo-filesystems, masked and read-only paths.
pub fn spec(args: &[&str], terminal: bool) -> Value {
    oci::spec(&ContainerConfig {
        id: "busybox".into(),
        rootfs: RootfsConfig { writable: false, ..RootfsConfig::disk("rootfs") },
        process: Some(process_config(args, terminal)),
        hostname: None,
        resources: None,
        oci_spec: None,
    })
}
