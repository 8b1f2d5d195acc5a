//! What a caller asks for: the seed's `SandboxConfig` and `ContainerConfig`, validated before
//! anything is created.

use plugin_api::hypervisor::DiskConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Most vCPUs a sandbox may ask for.
pub const MAX_VCPUS: u32 = 64;
/// Why a memory size of 0 is refused: the core's only memory check (the floor and ceiling are
/// the hypervisor plugin's, which `create_vm` names).
pub(crate) const ZERO_MEMORY: &str = "is 0; it must be at least 1 MiB (the hypervisor plugin sets its own floor)";
/// Longest sandbox, container or process id.
pub const MAX_ID_LEN: usize = plugin_api::ids::MAX_ID_LEN;

/// A sandbox: one VM, its disks and its containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// The sandbox id: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
    pub id: String,
    /// vCPUs; the configured default when absent.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory in MiB; the configured default when absent.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Disk images attached to the VM at boot; containers name them as their rootfs.
    #[serde(default, deserialize_with = "strict_disks")]
    pub disks: Vec<DiskConfig>,
    /// The containers.
    #[serde(default)]
    pub containers: Vec<ContainerConfig>,
    /// Free-form annotations, kept with the sandbox.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The container id, unique in its sandbox (same rules as sandbox ids).
    pub id: String,
    /// Its root filesystem.
    pub rootfs: RootfsConfig,
    /// Its first process. Ignored when `oci_spec` is given.
    #[serde(default)]
    pub process: Option<ProcessConfig>,
    /// The hostname; the container id when absent.
    #[serde(default)]
    pub hostname: Option<String>,
    /// OCI `linux.resources` (cgroup limits), as JSON.
    #[serde(default)]
    pub resources: Option<serde_json::Value>,
    /// A whole OCI runtime spec (`config.json`) to use instead of the generated one;
    /// `root.path` is ignored.
    #[serde(default)]
    pub oci_spec: Option<serde_json::Value>,
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsConfig {
    /// The name of one of the sandbox's disks.
    pub disk: String,
    /// Its filesystem type.
    #[serde(default = "ext4")]
    pub fstype: String,
    /// Whether the container may write to its root: it then gets a private writable layer
    /// over the (shared, read-only) disk. Otherwise its root is read-only.
    #[serde(default = "writable")]
    pub writable: bool,
}

fn ext4() -> String {
    "ext4".into()
}

fn writable() -> bool {
    true
}

impl RootfsConfig {
    /// A writable ext4 root on disk `disk`.
    pub fn disk(disk: impl Into<String>) -> Self {
        Self { disk: disk.into(), fstype: ext4(), writable: true }
    }
}

/// A process to run: a container's first process, or one entered into a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `NAME=value` pairs; a default `PATH` is added if absent.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory.
    #[serde(default = "root_dir")]
    pub cwd: String,
    /// Whether it gets a terminal (stdout and stderr merged).
    #[serde(default)]
    pub terminal: bool,
    /// User id.
    #[serde(default)]
    pub uid: u32,
    /// Group id.
    #[serde(default)]
    pub gid: u32,
}

fn root_dir() -> String {
    "/".into()
}

impl ProcessConfig {
    /// A process running `args` as root in `/`.
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        Self { args: args.into_iter().map(Into::into).collect(), env: Vec::new(), cwd: root_dir(), terminal: false, uid: 0, gid: 0 }
    }
}

/// A config the runtime refuses, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ConfigError {
    /// The field, dotted (`containers[1].rootfs.disk`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Checks OCI `linux.resources` given as `field`; the error names the key at fault.
pub fn resources_field(field: &str, resources: &serde_json::Value) -> Result<(), ConfigError> {
    super::resources::check(resources).map_err(|e| {
        let at = if e.path.is_empty() { field.to_owned() } else { format!("{field}.{}", e.path) };
        invalid(at, e.reason)
    })
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), reason: reason.into() }
}

/// Checks an id (sandbox, container or process).
pub fn validate_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if plugin_api::ids::is_valid_id(id) {
        Ok(())
    } else {
        Err(invalid(field, format!("{id:?} must be {}", plugin_api::ids::ID_RULE)))
    }
}

impl SandboxConfig {
    /// Checks the whole config; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_id("id", &self.id)?;
        if let Some(v) = self.vcpus {
            if !(1..=MAX_VCPUS).contains(&v) {
                return Err(invalid("vcpus", format!("is {v}; it must be 1 to {MAX_VCPUS}")));
            }
        }
        if let Some(m) = self.memory_mib {
            // The floor and ceiling are the hypervisor plugin's (create_vm names them).
            if m == 0 {
                return Err(invalid("memory_mib", ZERO_MEMORY));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            DiskConfig::validate_name(&d.name).map_err(|e| invalid(format!("disks[{i}].name"), e.message.to_string()))?;
            if self.disks[..i].iter().any(|o| o.name == d.name) {
                return Err(invalid(format!("disks[{i}].name"), format!("{:?} is used by another disk", d.name)));
            }
            if !d.path.is_file() {
                return Err(invalid(format!("disks[{i}].path"), format!("{} is not a file", d.path.display())));
            }
        }
        for (i, c) in self.containers.iter().enumerate() {
            c.validate(&format!("containers[{i}]"), &self.disks)?;
            if self.containers[..i].iter().any(|o| o.id == c.id) {
                return Err(invalid(format!("containers[{i}].id"), format!("{:?} is used by another container", c.id)));
            }
        }
        Ok(())
    }

    /// The disk paths, absolute (relative ones are taken from `base`).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for d in &mut self.disks {
            if d.path.is_relative() {
                d.path = base.join(&d.path);
            }
        }
    }
}

impl ContainerConfig {
    /// Checks the container against the sandbox's disks; `field` prefixes error fields.
    pub fn validate(&self, field: &str, disks: &[DiskConfig]) -> Result<(), ConfigError> {
        validate_id(&format!("{field}.id"), &self.id)?;
        if !disks.iter().any(|d| d.name == self.rootfs.disk) {
            let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
            return Err(invalid(
                format!("{field}.rootfs.disk"),
                format!("{:?} is not a disk of the sandbox (disks: {})", self.rootfs.disk, if names.is_empty() { "none".into() } else { names.join(", ") }),
            ));
        }
        match (&self.process, &self.oci_spec) {
            (_, Some(spec)) => {
                let args = spec.pointer("/process/args").and_then(|a| a.as_array()).map_or(0, Vec::len);
                if args == 0 {
                    return Err(invalid(format!("{field}.oci_spec"), "has no process.args"));
                }
            }
            (Some(p), None) => p.validate(&format!("{field}.process"))?,
            (None, None) => return Err(invalid(format!("{field}.process"), "is missing (give process or oci_spec)")),
        }
        if let Some(r) = &self.resources {
            resources_field(&format!("{field}.resources"), r)?;
        }
        Ok(())
    }
}

impl ProcessConfig {
    /// Checks the process; `field` prefixes error fields.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(invalid(format!("{field}.args"), "is empty; give the command to run"));
        }
        if let Some(bad) = self.env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
            return Err(invalid(format!("{field}.env"), format!("{bad:?} is not NAME=value")));
        }
        if !self.cwd.starts_with('/') {
            return Err(invalid(format!("{field}.cwd"), format!("{:?} is not an absolute path", self.cwd)));
        }
        Ok(())
    }
}

/// Reads a sandbox config from a JSON or TOML file (by extension), paths relative to it.
pub fn load_sandbox_config(path: &std::path::Path) -> Result<SandboxConfig, ConfigError> {
    let field = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| invalid(&field, format!("cannot be read: {e}")))?;
    let mut config: SandboxConfig = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| invalid(&field, crate::parse_error::json(&e)))?
    } else {
        toml::from_str(&text).map_err(|e| invalid(&field, crate::parse_error::toml(&text, &e)))?
    };
    // Against the file's directory made absolute: the record keeps these paths, and status
    // prints them wherever it runs.
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    config.resolve_paths(absolute.parent().unwrap_or(std::path::Path::new("/")));
    Ok(config)
}

/// A disk as a config file writes it: [`DiskConfig`]'s keys and no other (the ABI type itself
/// ignores unknown keys, for payloads from newer writers).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StrictDisk {
    name: String,
    path: PathBuf,
    #[serde(default = "read_only_default")]
    read_only: bool,
}

fn read_only_default() -> bool {
    true
}

/// Deserializes a list of disks, refusing unknown keys (`disks`, `[factory] disks`).
pub(crate) fn strict_disks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DiskConfig>, D::Error> {
    let disks: Vec<StrictDisk> = Deserialize::deserialize(d)?;
    Ok(disks.into_iter().map(|s| DiskConfig { name: s.name, path: s.path, read_only: s.read_only }).collect())
}

/// Where the disks of a default sandbox come from, for callers that build configs in code.
pub fn disk(name: &str, path: impl Into<PathBuf>) -> DiskConfig {
    DiskConfig { name: name.into(), path: path.into(), read_only: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(dir: &std::path::Path) -> SandboxConfig {
        let image = dir.join("rootfs.ext4");
        std::fs::write(&image, b"").expect("image");
        SandboxConfig {
            id: "s1".into(),
            vcpus: None,
            memory_mib: None,
            disks: vec![disk("rootfs", image)],
            containers: vec![ContainerConfig {
                id: "c1".into(),
                rootfs: RootfsConfig::disk("rootfs"),
                process: Some(ProcessConfig::new(["echo", "hi"])),
                hostname: None,
                resources: None,
                oci_spec: None,
            }],
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = sandbox(dir.path());
        assert_eq!(good.validate(), Ok(()));
        let check = |f: &dyn Fn(&mut SandboxConfig), field: &str, words: &str| {
            let mut c = good.clone();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(words), "{e}");
        };
        check(&|c| c.id = "../x".into(), "id", "A-Z");
        check(&|c| c.vcpus = Some(0), "vcpus", "is 0");
        check(&|c| c.memory_mib = Some(0), "memory_mib", "at least 1 MiB");
        check(&|c| c.disks[0].name = "no spaces".into(), "disks[0].name", "A-Z");
        check(&|c| c.disks.push(c.disks[0].clone()), "disks[1].name", "used by another disk");
        check(&|c| c.disks[0].path = "/nonexistent".into(), "disks[0].path", "not a file");
        check(&|c| c.containers[0].rootfs.disk = "data".into(), "containers[0].rootfs.disk", "disks: rootfs");
        check(&|c| c.containers.push(c.containers[0].clone()), "containers[1].id", "used by another");
        check(&|c| c.containers[0].process = None, "containers[0].process", "missing");
        check(&|c| c.containers[0].process.as_mut().expect("p").args.clear(), "containers[0].process.args", "empty");
        check(&|c| c.containers[0].process.as_mut().expect("p").env.push("NOEQUALS".into()), "containers[0].process.env", "NAME=value");
        check(&|c| c.containers[0].process.as_mut().expect("p").cwd = "tmp".into(), "containers[0].process.cwd", "absolute");
        check(&|c| c.containers[0].oci_spec = Some(serde_json::json!({"process": {}})), "containers[0].oci_spec", "process.args");
        check(&|c| c.containers[0].resources = Some(serde_json::json!(3)), "containers[0].resources", "object");
    }

    #[test]
    fn toml_files_resolve_relative_disks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sandbox.toml");
        std::fs::write(&path, "id = 'demo'\n[[disks]]\nname = 'rootfs'\npath = 'rootfs.ext4'\n[[containers]]\nid = 'c1'\nrootfs = { disk = 'rootfs' }\nprocess = { args = ['echo', 'hi'] }\n").expect("write");
        let c = load_sandbox_config(&path).expect("parse");
        assert_eq!(c.disks[0].path, dir.path().join("rootfs.ext4"));
        assert!(c.disks[0].read_only);
        assert_eq!(c.containers[0].process.as_ref().expect("process").cwd, "/");
        std::fs::write(&path, "id = 'demo'\nvcpu = 2\n").expect("write");
        let e = load_sandbox_config(&path).unwrap_err();
        assert!(e.to_string().contains("vcpu"), "{e}");
        // A disk's keys are as strict as the rest (the ABI type itself ignores unknown ones).
        std::fs::write(&path, "id = 'demo'\n[[disks]]\nname = 'rootfs'\npath = 'r.img'\nreadonly = false\n").expect("write");
        let e = load_sandbox_config(&path).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains("unknown field `readonly`"), "{e}");
        let json = dir.path().join("sandbox.json");
        std::fs::write(&json, r#"{"id": "demo", "disks": [{"name": "rootfs", "path": "r.img", "size": 1}]}"#).expect("write");
        let e = load_sandbox_config(&json).unwrap_err().to_string();
        assert!(e.contains("unknown field `size`"), "{e}");
    }
}
