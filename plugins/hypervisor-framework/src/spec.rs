//! Checks a [`HypervisorConfig`] up front and turns it into a [`VmSpec`] whose paths are
//! absolute (a daemonized VMM runs from `/`) and safe to put in option strings (QEMU's and the
//! `vmm`'s `key=value,key=value` options).

use plugin_api::hypervisor::{DiskConfig, HypervisorConfig};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// What a plugin's VMM can do: the ranges [`validate`] checks against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The plugin's name, for the message about `extra`.
    pub plugin: &'static str,
    /// The most vCPUs a VM may have.
    pub max_vcpus: u32,
    /// The least memory a VM may have, in MiB.
    pub min_memory_mib: u64,
    /// The most memory a VM may have, in MiB.
    pub max_memory_mib: u64,
}

/// Why a [`HypervisorConfig`] is refused. Each variant names the field and its value.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field is out of range or malformed.
    #[error("HypervisorConfig.{field} = {value}: {why}")]
    Invalid {
        /// The field.
        field: String,
        /// The value, as given.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A file the VM needs cannot be used.
    #[error("HypervisorConfig.{field} = {path:?}")]
    File {
        /// The field.
        field: String,
        /// The path.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: std::io::Error,
    },
}

/// A disk, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSpec {
    /// The virtio-blk serial number.
    pub name: String,
    /// The image (absolute).
    pub path: PathBuf,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

/// A checked [`HypervisorConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    /// The kernel (absolute).
    pub kernel: PathBuf,
    /// The initramfs (absolute).
    pub initrd: Option<PathBuf>,
    /// Extra kernel parameters, trimmed.
    pub kernel_params: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The console log file (absolute), owned by the host.
    pub console_log: Option<PathBuf>,
    /// Disks, in order.
    pub disks: Vec<DiskSpec>,
    /// The file to hold the guest's RAM, shared (absolute), for a VM to be saved as a template.
    pub memory_file: Option<PathBuf>,
}

fn invalid(field: impl Into<String>, value: impl std::fmt::Debug, why: impl Into<String>) -> SpecError {
    SpecError::Invalid { field: field.into(), value: format!("{value:?}"), why: why.into() }
}

/// An existing regular file, as an absolute canonical path safe for QEMU options.
fn existing_file(field: &str, path: &Path) -> Result<PathBuf, SpecError> {
    let file_error = |source| SpecError::File { field: field.into(), path: path.to_owned(), source };
    let canonical = std::fs::canonicalize(path).map_err(file_error)?;
    let meta = std::fs::metadata(&canonical).map_err(file_error)?;
    if !meta.is_file() {
        return Err(invalid(field, path, "is not a regular file"));
    }
    if !option_safe_path(&canonical) {
        return Err(invalid(field, &canonical, "must be UTF-8 without ',' or control characters"));
    }
    Ok(canonical)
}

/// Whether a path can go into a VMM option string as is: UTF-8, no ',' (the option
/// separator) and no control characters.
pub fn option_safe_path(path: &Path) -> bool {
    path.to_str().is_some_and(|s| !s.contains(',') && !s.chars().any(char::is_control))
}

/// Checks everything the VMM would otherwise complain about late (or not at all).
///
/// `extra` must be `null` or an empty object: the plugins take their settings from their
/// plugin config, and silently ignoring a setting meant for them would hide a mistake.
pub fn validate(config: &HypervisorConfig, limits: &Limits) -> Result<VmSpec, SpecError> {
    if config.vcpus == 0 || config.vcpus > limits.max_vcpus {
        return Err(invalid("vcpus", config.vcpus, format!("must be 1 to {}", limits.max_vcpus)));
    }
    if !(limits.min_memory_mib..=limits.max_memory_mib).contains(&config.memory_mib) {
        let why = if limits.max_memory_mib == u64::MAX {
            format!("must be at least {}", limits.min_memory_mib)
        } else {
            format!("must be {} to {}", limits.min_memory_mib, limits.max_memory_mib)
        };
        return Err(invalid("memory_mib", config.memory_mib, why));
    }
    let extra_ok = config.extra.is_null() || config.extra.as_object().is_some_and(|o| o.is_empty());
    if !extra_ok {
        let why = format!("the {} plugin takes no per-VM extra settings (set them in the plugin config)", limits.plugin);
        return Err(SpecError::Invalid { field: "extra".into(), value: config.extra.to_string(), why });
    }
    let kernel_params = config.kernel_params.trim().to_owned();
    if kernel_params.chars().any(char::is_control) {
        return Err(invalid("kernel_params", &config.kernel_params, "must not contain control characters"));
    }
    let kernel = existing_file("kernel", &config.kernel)?;
    let initrd = config.initrd.as_deref().map(|p| existing_file("initrd", p)).transpose()?;
    let console_log = config.console_log.as_deref().map(|p| file_to_create("console_log", p)).transpose()?;
    let memory_file = config.memory_file.as_deref().map(|p| file_to_create("memory_file", p)).transpose()?;
    let mut names = HashSet::new();
    let mut disks = Vec::with_capacity(config.disks.len());
    for (i, disk) in config.disks.iter().enumerate() {
        DiskConfig::validate_name(&disk.name)
            .map_err(|e| invalid(format!("disks[{i}].name"), &disk.name, e.message.to_string()))?;
        if !names.insert(disk.name.as_str()) {
            return Err(invalid(format!("disks[{i}].name"), &disk.name, "is used by an earlier disk"));
        }
        let path = existing_file(&format!("disks[{i}].path"), &disk.path)?;
        disks.push(DiskSpec { name: disk.name.clone(), path, read_only: disk.read_only });
    }
    Ok(VmSpec {
        kernel,
        initrd,
        kernel_params,
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        console_log,
        disks,
        memory_file,
    })
}

/// A file the VMM creates or writes (the console log, the memory file): absolute, in an
/// existing directory, not a directory itself.
fn file_to_create(field: &str, path: &Path) -> Result<PathBuf, SpecError> {
    let file_name = path.file_name().ok_or_else(|| invalid(field, path, "must name a file"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = std::fs::canonicalize(parent).map_err(|source| SpecError::File {
        field: field.into(),
        path: path.to_owned(),
        source,
    })?;
    let absolute = parent.join(file_name);
    if absolute.is_dir() {
        return Err(invalid(field, path, "is a directory"));
    }
    if !option_safe_path(&absolute) {
        return Err(invalid(field, &absolute, "must be UTF-8 without ',' or control characters"));
    }
    Ok(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            for f in ["vmlinuz", "initrd", "a.img", "b.img"] {
                std::fs::write(dir.path().join(f), b"x").unwrap();
            }
            Files { dir }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        fn config(&self) -> HypervisorConfig {
            HypervisorConfig {
                schema: 1,
                kernel: self.path("vmlinuz"),
                initrd: Some(self.path("initrd")),
                kernel_params: " agent.log=debug ".into(),
                vcpus: 2,
                memory_mib: 512,
                extra: serde_json::Value::Null,
                console_log: Some(self.path("console.log")),
                disks: vec![
                    DiskConfig { name: "rootfs".into(), path: self.path("a.img"), read_only: true },
                    DiskConfig { name: "data".into(), path: self.path("b.img"), read_only: false },
                ],
                memory_file: None,
            }
        }
    }

    const LIMITS: Limits = Limits { plugin: "test", max_vcpus: 64, min_memory_mib: 128, max_memory_mib: u64::MAX };

    fn error(config: &HypervisorConfig) -> String {
        validate(config, &LIMITS).unwrap_err().to_string()
    }

    #[test]
    fn a_good_config() {
        let f = Files::new();
        let spec = validate(&f.config(), &LIMITS).unwrap();
        assert_eq!(spec.kernel_params, "agent.log=debug");
        assert_eq!(spec.disks.len(), 2);
        assert!(spec.kernel.is_absolute() && spec.console_log.as_ref().unwrap().is_absolute());
        assert!(!spec.disks[1].read_only);
        let mut c = f.config();
        c.extra = serde_json::json!({});
        c.initrd = None;
        c.console_log = None;
        validate(&c, &LIMITS).unwrap();
    }

    #[test]
    fn missing_files_are_named() {
        let f = Files::new();
        let mut c = f.config();
        c.kernel = f.path("nope");
        let e = error(&c);
        assert!(e.contains("kernel") && e.contains("nope"), "{e}");
        let mut c = f.config();
        c.initrd = Some(f.path("missing-initrd"));
        assert!(error(&c).contains("initrd"));
        let mut c = f.config();
        c.disks[1].path = f.path("gone.img");
        let e = error(&c);
        assert!(e.contains("disks[1].path") && e.contains("gone.img"), "{e}");
        let mut c = f.config();
        c.kernel = f.dir.path().to_owned();
        assert!(error(&c).contains("not a regular file"));
        let mut c = f.config();
        c.console_log = Some(f.path("no-such-dir/console.log"));
        assert!(error(&c).contains("console_log"));
        c.console_log = None;
        c.memory_file = Some(f.path("no-such-dir/memory"));
        assert!(error(&c).contains("memory_file"));
        c.memory_file = Some(f.path("a,b"));
        assert!(error(&c).contains("memory_file"), "a ',' cannot go into QEMU's options");
    }

    #[test]
    fn bad_and_duplicate_disk_names() {
        let f = Files::new();
        let mut c = f.config();
        c.disks[0].name = "root fs".into();
        let e = error(&c);
        assert!(e.contains("disks[0].name") && e.contains("root fs"), "{e}");
        let mut c = f.config();
        c.disks[1].name = "rootfs".into();
        let e = error(&c);
        assert!(e.contains("disks[1].name") && e.contains("earlier disk"), "{e}");
        let mut c = f.config();
        c.disks[0].name = "x".repeat(21);
        assert!(error(&c).contains("disks[0].name"));
    }

    #[test]
    fn sizes() {
        let f = Files::new();
        let mut c = f.config();
        c.vcpus = 0;
        let e = error(&c);
        assert!(e.contains("vcpus = 0") && e.contains("1 to 64"), "{e}");
        c.vcpus = 65;
        assert!(error(&c).contains("vcpus = 65"));
        let mut c = f.config();
        c.memory_mib = 64;
        let e = error(&c);
        assert!(e.contains("memory_mib = 64") && e.contains("at least 128"), "{e}");
        let small = Limits { plugin: "small", max_vcpus: 32, min_memory_mib: 32, max_memory_mib: 3072 };
        c.memory_mib = 4096;
        let e = validate(&c, &small).unwrap_err().to_string();
        assert!(e.contains("memory_mib = 4096") && e.contains("32 to 3072"), "{e}");
        c.memory_mib = 512;
        c.vcpus = 33;
        assert!(validate(&c, &small).unwrap_err().to_string().contains("1 to 32"));
    }

    #[test]
    fn extra_params_and_unsafe_paths() {
        let f = Files::new();
        let mut c = f.config();
        c.extra = serde_json::json!({"cpu": "host"});
        let e = error(&c);
        assert!(e.contains("extra") && e.contains("cpu") && e.contains("the test plugin"), "{e}");
        let mut c = f.config();
        c.kernel_params = "a\nb".into();
        assert!(error(&c).contains("kernel_params"));
        std::fs::write(f.path("a,b.img"), b"x").unwrap();
        let mut c = f.config();
        c.disks[0].path = f.path("a,b.img");
        let e = error(&c);
        assert!(e.contains("disks[0].path") && e.contains("','"), "{e}");
    }
}
